"""`HttpEngine`: an :class:`~miles_sdk.engines.base.InferenceEngine` that talks to SGLang's HTTP API.

It POSTs ``{"input_ids", "sampling_params", "return_logprob": true}`` to ``{url}/generate`` (an
SGLang server, the Miles router, or :func:`miles_sdk.engines.http_server.start_server`) and reads
the new tokens and their log-probs from ``meta_info.output_token_logprobs``, exactly as Miles's
default generate function does. The wire-format helpers here (:func:`generate_payload`,
:func:`parse_generate_response`) are shared with the router and the offline SGLang adapter.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp

from miles_sdk.engines._serving_guard import auth_headers
from miles_sdk.engines.base import EngineOutput, FinishReason, ReplicaWeights, SamplingParams
from miles_sdk.engines.memory import MEMORY_TAGS, parse_tags
from miles_sdk.engines.weight_group import GroupJoinError
from miles_sdk.engines.weight_sync import flatten_values

__all__ = [
    "HttpEngine",
    "HttpEngineError",
    "generate_payload",
    "normalize_url",
    "parse_finish_reason",
    "parse_generate_response",
    "parse_weight_version",
]

logger = logging.getLogger(__name__)

# Gateway-style statuses mean "this server is not ready / overloaded", so retrying is safe; a 4xx
# or 500 means the request itself is bad and retrying would repeat the failure.
_RETRY_STATUSES = frozenset({502, 503, 504})


class HttpEngineError(RuntimeError):
    """A server answered with an error, an unreadable reply, or could not be reached."""


def normalize_url(url: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port`` (no trailing slash)."""
    url = url.strip().rstrip("/")
    if not url:
        raise ValueError("empty engine URL")
    if "://" not in url:
        url = "http://" + url
    return url


def generate_payload(
    input_ids: Sequence[int],
    sampling_params: SamplingParams | Mapping[str, Any],
    *,
    return_logprob: bool = True,
) -> dict[str, Any]:
    """The SGLang /generate body Miles sends for one token-level request."""
    return {
        "input_ids": [int(t) for t in input_ids],
        "sampling_params": dict(sampling_params),
        "return_logprob": return_logprob,
    }


def parse_finish_reason(value: object, *, source: str = "reply") -> FinishReason:
    """SGLang's ``meta_info.finish_reason`` (``{"type": "stop", ...}`` or a bare string) -> enum."""
    kind = value.get("type") if isinstance(value, Mapping) else value
    try:
        return FinishReason(kind)
    except ValueError:
        raise HttpEngineError(
            f"{source}: meta_info.finish_reason {value!r} is not one of stop/length/abort"
        ) from None


def parse_weight_version(value: object, default: int) -> int:
    """SGLang reports ``weight_version`` as a string ("default" until set); ints parse, others fall back."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def parse_generate_response(
    reply: object, *, default_version: int = 0, source: str = "reply"
) -> EngineOutput:
    """One SGLang /generate reply (``{"text", "output_ids"?, "meta_info": {...}}``) -> EngineOutput.

    Tokens and log-probs come from ``meta_info.output_token_logprobs`` (``[[logprob, token_id,
    text|None], ...]``), so the request must have had ``return_logprob: true``. ``source`` names
    the server in error messages.
    """
    if not isinstance(reply, Mapping):
        raise HttpEngineError(
            f"{source}: expected a JSON object, got {type(reply).__name__}: {str(reply)[:200]}"
        )
    meta = reply.get("meta_info")
    if not isinstance(meta, Mapping):
        raise HttpEngineError(f"{source}: reply has no 'meta_info' object (keys: {sorted(reply)})")
    if "finish_reason" not in meta:
        raise HttpEngineError(f"{source}: meta_info has no 'finish_reason' (keys: {sorted(meta)})")
    finish = parse_finish_reason(meta["finish_reason"], source=source)
    entries = meta.get("output_token_logprobs")
    if entries is None:
        raise HttpEngineError(
            f"{source}: meta_info has no 'output_token_logprobs'; send return_logprob=true (keys: {sorted(meta)})"
        )
    token_ids: list[int] = []
    log_probs: list[float] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Sequence) or len(entry) < 2 or entry[0] is None:
            raise HttpEngineError(
                f"{source}: output_token_logprobs[{i}] = {entry!r}, expected [logprob, token_id, ...]"
            )
        log_probs.append(float(entry[0]))
        token_ids.append(int(entry[1]))
    output_ids = reply.get("output_ids")
    if output_ids is not None and [int(t) for t in output_ids] != token_ids:
        raise HttpEngineError(
            f"{source}: output_ids ({len(output_ids)} tokens) disagree with output_token_logprobs "
            f"({len(token_ids)} tokens)"
        )
    text = reply.get("text")
    return EngineOutput(
        token_ids=token_ids,
        log_probs=log_probs,
        finish_reason=finish,
        weight_version=parse_weight_version(meta.get("weight_version"), default_version),
        text=text if isinstance(text, str) else None,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def read_json(response: aiohttp.ClientResponse) -> object:
    """The body as JSON when it parses, else the text (SGLang answers some errors in plain text)."""
    text = await response.text()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _worker_names(body: object) -> list[object] | None:
    """The workers in a router's ``/list_workers`` (``{"urls": [...]}``) or ``/workers``
    (``{"workers": [{"url": ...}]}``) reply; None when the reply is neither."""
    if not isinstance(body, Mapping):
        return None
    urls = body.get("urls")
    if isinstance(urls, list):
        return list(urls)
    workers = body.get("workers")
    if isinstance(workers, list) and all(isinstance(w, Mapping) for w in workers):
        return [w.get("url", w.get("name")) for w in workers]
    return None


def _worker_urls(names: Sequence[object], *, router: str) -> list[str]:
    out: list[str] = []
    for name in names:
        text = str(name)
        base, at, rank = text.rpartition("@")
        if at and rank.isdigit():  # dp-aware routing names each data-parallel rank url@rank
            text = base
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GroupJoinError(
                f"{router} lists worker {name!r}, which is not an HTTP server's address, so it cannot join a "
                "weight update group through the router; pass the servers' own addresses instead "
                "(--rollout-external-engine-addrs host:port ..., or HttpEngine([...]) over their URLs)"
            )
        url = normalize_url(text)
        if url not in out:
            out.append(url)
    if not out:
        raise GroupJoinError(f"{router}: the router has no workers to join a weight update group")
    return out


class HttpEngine:
    """An InferenceEngine over one or more SGLang-compatible HTTP servers.

    Args:
        urls: one URL or several (``http://host:port`` or ``host:port``). Each request goes to the
            server with the fewest requests in flight from this client.
        tokenizer: unused for generation (ids go over the wire); kept so callers can hand the
            engine and its tokenizer around together.
        timeout: seconds for one request (None: no limit, as Miles's client).
        max_connections: the connection-pool size shared by all servers.
        max_retries: extra attempts after a connection error or a 502/503/504, each on the
            next-least-busy server, with exponential backoff from ``retry_backoff`` seconds.
        weight_version: the starting version, used when a reply carries no integer version.
        api_key: sent as ``Authorization: Bearer`` (SGLang's ``--api-key``; our server's control
            token). Default: the token of a server in this process at that address, if any.

    Weight sync: the servers hold their own weights, so the Trainer writes the trained weights to
    a directory and calls :meth:`load_weights_from_disk` (SGLang's ``/update_weights_from_disk``),
    or, with ``weight_sync_method="distributed"``, opens a weight update group with the servers
    and broadcasts them (:meth:`group_members`, :meth:`member_ranks`, :meth:`post_each`: a
    :class:`~miles_sdk.engines.weight_group.ServerGroupTarget`). A URL that is a router (it
    answers ``/list_workers`` or ``/workers``) joins through its workers: the trainer must reach
    them at the addresses the router lists.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        tokenizer: object | None = None,
        timeout: float | None = None,
        max_connections: int = 512,
        max_retries: int = 5,
        retry_backoff: float = 0.2,
        weight_version: int = 0,
        api_key: str | None = None,
    ) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise ValueError("HttpEngine: urls is empty")
        if max_connections < 1 or max_retries < 0:
            raise ValueError(
                f"HttpEngine: max_connections={max_connections}, max_retries={max_retries} out of range"
            )
        self.urls = [normalize_url(u) for u in url_list]
        self.tokenizer = tokenizer
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        self._weight_version = weight_version
        self._api_key = api_key
        self._pending_version: int | None = None
        self._active = dict.fromkeys(self.urls, 0)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._released_tags: list[str] = []
        """Memory tags released on the servers and not resumed yet."""
        self._group_ranks: dict[str, int] = {}
        """Ranks each server joins a weight update group with (its tp_size), read by group_members."""
        self._members: list[str] = []
        """The servers that hold weights, as group_members last named them (a router's workers
        in place of the router)."""
        self._routers: dict[str, list[str]] = {}
        """Each URL that is a router, with the servers behind it."""
        self._servers: set[str] = set()
        """URLs known to be servers (no worker list), not asked again."""

    # -- InferenceEngine ---------------------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        return self._weight_version

    def update_weights(self, version: int | None = None) -> None:
        """Record the new version; it is sent to every server (``/update_weight_version``) before
        the next request. This moves no weights: the Trainer's sync uses
        :meth:`load_weights_from_disk` (a RemoteWeightsEngine) for that."""
        self._weight_version = self._weight_version + 1 if version is None else version
        self._pending_version = self._weight_version

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        await self._push_pending_version()
        payload = generate_payload(input_ids, sampling_params)
        url, reply = await self._post_with_retries("/generate", payload)
        return parse_generate_response(reply, default_version=self._weight_version, source=f"{url}/generate")

    async def abort_all(self) -> None:
        """POST ``/abort_request {"abort_all": true}`` to every server; unreachable ones are logged."""
        session = self._get_session()
        for url in self.urls:
            try:
                async with session.post(
                    f"{url}/abort_request", json={"rid": "", "abort_all": True}, headers=self._headers(url)
                ) as resp:
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError) as e:
                logger.warning("HttpEngine: abort_request to %s failed: %s", url, e)

    # -- extras ------------------------------------------------------------------------------------

    async def push_weight_version(self, version: int | None = None) -> None:
        """Send ``/update_weight_version`` now (``version`` defaults to the current one)."""
        if version is not None:
            self._weight_version = version
        self._pending_version = None
        body = {"new_version": str(self._weight_version), "abort_all_requests": False}
        for url in self.urls:
            await self._post_with_retries("/update_weight_version", body, only=url)

    async def update_weights_from_disk(self, model_path: str, *, version: int | None = None) -> None:
        """Ask every server to load ``model_path`` (SGLang's ``/update_weights_from_disk``; a
        router's workers each, then the version goes through the router)."""
        new_version = self._weight_version + 1 if version is None else version
        body = {"model_path": model_path, "weight_version": str(new_version), "abort_all_requests": False}
        for url in await self._weight_holders(strict=False):
            _, reply = await self._post_with_retries("/update_weights_from_disk", body, only=url)
            if isinstance(reply, Mapping) and reply.get("success") is False:
                raise HttpEngineError(f"{url}/update_weights_from_disk: {reply.get('message')}")
        # SGLang builds that ignore weight_version in this request still get the version.
        self._weight_version = new_version
        self._pending_version = None
        try:
            await self.push_weight_version(new_version)
        except HttpEngineError as e:
            logger.warning("HttpEngine: could not send weight version %d: %s", new_version, e)

    async def release_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Every server frees the memory of ``tags`` (SGLang's ``/release_memory_occupation``;
        Miles's ``--offload-rollout``) until :meth:`resume_memory_occupation`. Default
        ``["kv_cache", "cuda_graph"]``: an SGLang server started without
        ``--enable-weights-cpu-backup`` loses released weights until the next weight update
        fills them, and a step may sample before one (``update_weights_interval``); name
        ``"weights"`` only when a full update follows. A server that answers with an error fails
        the call, named."""
        chosen = ["kv_cache", "cuda_graph"] if tags is None else parse_tags(list(tags), where="HttpEngine")
        # Recorded first: after a partial failure the servers that released are resumed too.
        self._released_tags = [*self._released_tags, *(t for t in chosen if t not in self._released_tags)]
        await self._post_each("/release_memory_occupation", {"tags": list(chosen)})

    async def resume_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Every server takes back what :meth:`release_memory_occupation` released (of ``tags``,
        when given); nothing is sent when nothing was released."""
        named = MEMORY_TAGS if tags is None else parse_tags(list(tags), where="HttpEngine")
        chosen = [t for t in named if t in self._released_tags]
        if not chosen:
            return
        await self._post_each("/resume_memory_occupation", {"tags": chosen})
        self._released_tags = [t for t in self._released_tags if t not in chosen]

    async def _post_each(self, path: str, body: Mapping[str, Any]) -> None:
        failed: list[str] = []
        for url in await self._weight_holders(strict=False):
            try:
                _, reply = await self._post_with_retries(path, body, only=url)
            except HttpEngineError as e:
                failed.append(str(e))
                continue
            if isinstance(reply, Mapping) and reply.get("success") is False:
                failed.append(f"{url}{path}: {reply.get('message')}")
        if failed:
            raise HttpEngineError("; ".join(failed))

    # -- ServerGroupTarget (weight_sync_method="distributed") -------------------------------------

    async def group_members(self) -> list[str]:
        """Every server, in order (a router's workers in place of the router), after reading how
        many ranks each joins a weight update group with (``/get_server_info``: ``tp_size``). A
        server that does not answer fails the sync (:class:`HttpEngineError`, named); one that
        cannot join raises :class:`~miles_sdk.engines.weight_group.GroupJoinError` naming it and
        why."""
        members = await self._weight_holders()
        ranks: dict[str, int] = {}
        for url in members:
            ranks[url] = await self._group_ranks_of(url)
        self._group_ranks, self._members = ranks, members
        return list(members)

    async def router_workers(self, url: str) -> list[str] | None:
        """The servers behind ``url`` when it is a router, else None. Miles's router and ours
        answer ``GET /list_workers`` with ``{"urls": [...]}``, SGLang's router (model gateway)
        ``GET /workers`` with ``{"workers": [{"url": ...}, ...]}``; an ``@<dp rank>`` suffix
        (data-parallel-aware routing) is dropped. A router whose workers are not HTTP servers
        (ours over in-process engines) or that has none raises
        :class:`~miles_sdk.engines.weight_group.GroupJoinError` saying what to pass instead."""
        if url in self._servers:
            return None
        session = self._get_session()
        for path in ("/list_workers", "/workers"):
            try:
                async with session.get(url + path, headers=self._headers(url)) as resp:
                    body = await read_json(resp)
            except (TimeoutError, aiohttp.ClientError) as e:
                raise HttpEngineError(f"{url}{path}: {type(e).__name__}: {e}") from e
            names = _worker_names(body) if resp.status == 200 else None
            if names is not None:
                return _worker_urls(names, router=f"{url}{path}")
        self._servers.add(url)
        return None

    async def _weight_holders(self, *, strict: bool = True) -> list[str]:
        """The servers that hold weights: each URL, a router's workers in its place (each once).
        Not ``strict``: a router whose workers have no address stays itself (it relays the call)."""
        holders: list[str] = []
        routers: dict[str, list[str]] = {}
        for url in self.urls:
            try:
                workers = await self.router_workers(url)
            except GroupJoinError:
                if strict:
                    raise
                workers = None
            if workers is not None:
                routers[url] = workers
            holders.extend(w for w in (workers or [url]) if w not in holders)
        self._routers = routers
        return holders

    async def member_ranks(self, members: Sequence[str]) -> list[int]:
        """Each server's ``tp_size``, as :meth:`group_members` read it."""
        return [self._group_ranks[m] for m in members]

    def group_address(self) -> str:
        """The address the servers reach this process at: loopback when every server is local,
        else the local address of the route to the first remote one. (The Trainer tells them
        ``weight_sync_master_address`` or ``MILES_HOST_IP`` instead when set:
        :class:`~miles_sdk.engines.weight_group.WeightGroupSender`'s ``server_address``.)"""
        remote = [u for u in self._members or self.urls if not _is_loopback(urlsplit(u).hostname or "")]
        if not remote:
            return "127.0.0.1"
        parts = urlsplit(remote[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parts.hostname or "", parts.port or 80))  # UDP: picks the route, sends nothing
            return str(s.getsockname()[0])

    async def post_each(self, path: str, bodies: Sequence[Mapping[str, Any]]) -> None:
        """POST ``bodies[i]`` to member i (as :meth:`group_members` named them), all at once and
        without retries (a collective: every server takes part once); raise naming each server
        that failed (an HTTP error or ``success: false``), as soon as one does: the others may
        wait on a peer that is gone."""
        members = self._members or self.urls
        if len(bodies) != len(members):
            raise HttpEngineError(f"HttpEngine: {len(bodies)} requests for {len(members)} servers")
        session = self._get_session()

        async def one(url: str, body: Mapping[str, Any]) -> str | None:
            try:
                async with session.post(url + path, json=dict(body), headers=self._headers(url)) as resp:
                    reply = await read_json(resp)
            except (TimeoutError, aiohttp.ClientError) as e:
                return f"{url}{path}: {type(e).__name__}: {e}"
            message = reply.get("message") if isinstance(reply, Mapping) else reply
            if resp.status != 200:
                return f"{url}{path}: HTTP {resp.status}: {str(message)[:300]}"
            if isinstance(reply, Mapping) and reply.get("success") is False:
                return f"{url}{path} refused: {str(message)[:300]}"
            return None

        pending: set[asyncio.Future[str | None]] = {
            asyncio.ensure_future(one(u, b)) for u, b in zip(members, bodies, strict=True)
        }
        failed: list[str] = []
        try:
            while pending and not failed:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed.extend(f for t in done if (f := t.result()) is not None)
        finally:
            for t in pending:
                t.cancel()
        if failed:
            raise HttpEngineError("; ".join(sorted(failed)))

    def note_weight_version(self, version: int) -> None:
        """Record ``version``, which the servers already took with their weights (a group sync
        sends it in ``/update_weights_from_distributed``). A router the update went around is
        sent it before the next request (``/update_weight_version``: it records the version and
        drops what it cached from the old weights)."""
        self._weight_version = version
        self._pending_version = version if self._routers else None

    async def _group_ranks_of(self, url: str) -> int:
        session = self._get_session()
        try:
            async with session.get(f"{url}/get_server_info", headers=self._headers(url)) as resp:
                info = await read_json(resp)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise HttpEngineError(f"{url}/get_server_info: {type(e).__name__}: {e}") from e
        where = f"{url}/get_server_info"
        if resp.status != 200 or not isinstance(info, Mapping):
            raise GroupJoinError(f"{where}: HTTP {resp.status}: {str(info)[:200]}; its tp_size is unknown")
        tp = info.get("tp_size")
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise GroupJoinError(
                f"{where} reports no tp_size ({tp!r}), so the ranks it would join a weight update group "
                "with are unknown (an SGLang server or miles_sdk's own server reports it)"
            )
        for key in ("pp_size", "dp_size"):
            size = info.get(key, 1)
            if isinstance(size, int) and size > 1 and not (key == "dp_size" and info.get("enable_dp_attention")):
                raise GroupJoinError(
                    f"{where} reports {key}={size}: SGLang joins a weight update group as rank_offset + tp_rank, "
                    f"so its {key} ranks would take the same ranks"
                )
        return tp

    # -- RemoteWeightsEngine, WeightReporter -----------------------------------------------------

    @property
    def remote_weights(self) -> bool:
        """Always: the servers hold their own weights."""
        return True

    async def load_weights_from_disk(self, model_path: str, version: int) -> None:
        """The Trainer's sync: every server loads ``model_path`` and takes ``version``."""
        await self.update_weights_from_disk(model_path, version=version)

    async def report_weights(self, names: Sequence[str], truncate_size: int) -> list[ReplicaWeights]:
        """Each server's ``/get_weight_version`` and ``/get_weights_by_name`` for ``names`` (each
        worker of a router: through the router only one of them would answer)."""
        session = self._get_session()
        out: list[ReplicaWeights] = []
        for url in await self._weight_holders(strict=False):
            async with session.get(f"{url}/get_weight_version", headers=self._headers(url)) as resp:
                reply = await read_json(resp)
            if resp.status != 200 or not isinstance(reply, Mapping):
                raise HttpEngineError(f"{url}/get_weight_version: HTTP {resp.status}: {str(reply)[:300]}")
            version = parse_weight_version(reply.get("weight_version"), -1)
            values: dict[str, list[float]] = {}
            for name in names:
                _, rows = await self._post_with_retries(
                    "/get_weights_by_name", {"name": name, "truncate_size": truncate_size}, only=url
                )
                values[name] = flatten_values(rows)
            out.append(ReplicaWeights(replica=url, weight_version=version, values=values))
        return out

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ---------------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        # An aiohttp session is bound to the loop it was made on; tests and notebooks may run
        # several loops over the engine's life, so a new loop gets a new session.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._max_connections)
            )
            self._session_loop = loop
        return self._session

    @property
    def api_key(self) -> str | None:
        """The key sent as ``Authorization: Bearer`` (SGLang's ``--api-key``); None: no key."""
        return self._api_key

    def _headers(self, url: str) -> dict[str, str]:
        return auth_headers(url, self._api_key)

    async def _push_pending_version(self) -> None:
        if self._pending_version is None:
            return
        version = self._pending_version
        self._pending_version = None
        try:
            await self.push_weight_version(version)
        except HttpEngineError as e:
            # A plain SGLang build without the endpoint still serves; versions then come from us.
            logger.warning("HttpEngine: could not send weight version %d: %s", version, e)

    async def _post_with_retries(
        self, path: str, body: Mapping[str, Any], *, only: str | None = None
    ) -> tuple[str, object]:
        session = self._get_session()
        last_error = "no attempt"
        failed: set[str] = set()
        for attempt in range(self._max_retries + 1):
            if only is not None:
                url = only
                self._active.setdefault(url, 0)  # a router's worker, asked directly
            else:
                # Fail over: servers that already failed this request go last.
                candidates = [u for u in self.urls if u not in failed] or self.urls
                url = min(candidates, key=lambda u: self._active[u])
            self._active[url] += 1
            try:
                async with session.post(url + path, json=body, headers=self._headers(url)) as resp:
                    reply = await read_json(resp)
                    if resp.status == 200:
                        return url, reply
                    last_error = f"HTTP {resp.status}: {str(reply)[:300]}"
                    if resp.status not in _RETRY_STATUSES:
                        raise HttpEngineError(f"{url}{path}: {last_error}")
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                last_error = f"{type(e).__name__}: {e}"
            finally:
                self._active[url] -= 1
            failed.add(url)
            if attempt < self._max_retries:
                logger.info(
                    "HttpEngine: %s%s failed (%s); retry %d/%d",
                    url,
                    path,
                    last_error,
                    attempt + 1,
                    self._max_retries,
                )
                # Another server can be tried at once; once all have failed, back off.
                if only is not None or len(failed) >= len(self.urls):
                    failed.clear()
                    await asyncio.sleep(self._retry_backoff * (2**attempt))
        targets = only if only is not None else ", ".join(self.urls)
        raise HttpEngineError(
            f"POST {path} to {targets} failed after {self._max_retries + 1} attempts: {last_error}"
        )
