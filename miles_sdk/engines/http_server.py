"""Serve SGLang's HTTP API over any :class:`~miles_sdk.engines.base.InferenceEngine`.

Miles users' custom generate functions POST to ``http://{sglang_router_ip}:{sglang_router_port}/generate``.
:func:`start_server` puts that API in front of the embedded engine (or a ``ScriptedEngine`` in a
test), so such functions run unchanged::

    handle = await start_server(engine, tokenizer)            # port 0: a free port
    args = attrs.evolve(args, sglang_router_ip="127.0.0.1", sglang_router_port=handle.port)
    ...
    await handle.close()

Endpoints (SGLang's names and shapes): ``POST /generate`` (``input_ids`` or ``text``, one request
or a batch of lists), ``POST /abort_request`` (abort all), ``GET /health``, ``GET /health_generate``,
``GET /get_model_info``, ``GET /get_server_info``, ``GET /get_weight_version``,
``GET|POST /get_weights_by_name``, ``/flush_cache``, ``POST /update_weight_version``,
``POST /update_weights_from_disk``, ``POST /init_weights_update_group``,
``/update_weights_from_distributed``, ``/destroy_weights_update_group`` (weights broadcast from
the trainer through a torch.distributed group: miles_sdk.engines.weight_group),
``POST /update_weights_from_tensor`` (handles to the trainer's memory on the same device:
miles_sdk.engines.weight_tensor), ``POST /release_memory_occupation`` and
``/resume_memory_occupation`` (``{"tags"}``: Miles's ``--offload-rollout``;
miles_sdk.engines.memory; ``/get_server_info`` reports what is released). The engine
interface can only abort everything, so an abort naming one ``rid`` is refused rather than
silently widened.

Safety (docs/reliability.md, "The served HTTP API"): control endpoints (aborts, weight updates,
cache flushes) need ``Authorization: Bearer <token>`` (a random per-run token unless ``api_key``
is given; in-process clients add it by themselves); a non-loopback bind needs a user-set token.
Bodies are parsed and prompts tokenised off the event loop; body size, requests and bytes in
flight are bounded (:class:`ServerLimits`); a prompt over ``max_context_len`` tokens is refused
with 400 before it is tokenised whole; bad sampling parameters answer 400 with the field named.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Self

import attrs
import torch
from aiohttp import web

from miles_sdk.engines._serving_guard import (
    ApiError,
    GenerationGate,
    InFlight,
    ServerLimits,
    check_bind,
    is_authorized,
    new_token,
    register_token,
    unregister_token,
)
from miles_sdk.engines._validate import check_input_ids, parse_sampling_params
from miles_sdk.engines.base import EngineOutput, FinishReason, InferenceEngine
from miles_sdk.engines.memory import MEMORY_TAGS, MemoryReleasingEngine, WeightsBackup, parse_tags
from miles_sdk.engines.weight_group import DEFAULT_GROUP, WeightGroupReceiver
from miles_sdk.engines.weight_tensor import TensorHandleError, load_serialized_tensors
from miles_sdk.rollout.context import TokenizerLike

__all__ = [
    "ApiError",
    "EngineService",
    "GenerationGate",
    "ServerHandle",
    "ServerLimits",
    "build_app",
    "engine_output_to_reply",
    "json_endpoint",
    "read_json_object",
    "split_batch",
    "start_server",
]

logger = logging.getLogger(__name__)

WeightLoader = Callable[[str], Awaitable[None] | None]
"""Loads weights from a path for ``/update_weights_from_disk`` (sync or async)."""

_CHARS_PER_TOKEN_PROBE = 16
"""A text prompt over the context is refused after tokenising at most this many characters per
context token (a token of ordinary text covers 3-5 characters)."""


def split_batch(payload: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """A batched /generate body (``input_ids`` as a list of lists, or ``text`` as a list) split into
    single requests; None when the body is a single request. Per-request lists (sampling_params,
    return_logprob, rid) are zipped, scalars are shared."""
    ids, text = payload.get("input_ids"), payload.get("text")
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        prompts: list[tuple[str, Any]] = [("input_ids", p) for p in ids]
    elif isinstance(text, list):
        prompts = [("text", t) for t in text]
    else:
        return None
    out: list[dict[str, Any]] = []
    for i, (key, prompt) in enumerate(prompts):
        single: dict[str, Any] = {}
        for k, v in payload.items():
            if k in ("input_ids", "text"):
                continue
            if isinstance(v, list) and k in ("sampling_params", "return_logprob", "rid"):
                if len(v) != len(prompts):
                    raise ApiError(400, f"batch of {len(prompts)} prompts but {k} has {len(v)} entries")
                v = v[i]
            single[k] = v
        single[key] = prompt
        out.append(single)
    return out


def engine_output_to_reply(
    out: EngineOutput, *, prompt_tokens: int, return_logprob: bool, stop: Sequence[str] = ()
) -> dict[str, Any]:
    """An EngineOutput as SGLang's /generate reply (``text``, ``output_ids``, ``meta_info``)."""
    text = out.text if out.text is not None else ""
    finish: dict[str, Any] = {"type": out.finish_reason.value}
    if out.finish_reason is FinishReason.STOP:
        matched: int | str | None = next((s for s in stop if text.endswith(s)), None)
        finish["matched"] = matched if matched is not None else (out.token_ids[-1] if out.token_ids else None)
    elif out.finish_reason is FinishReason.LENGTH:
        finish["length"] = len(out.token_ids)
    else:
        finish["message"] = "Abort request"
    meta: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "finish_reason": finish,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(out.token_ids),
        "cached_tokens": 0,
        "weight_version": str(out.weight_version),
    }
    if return_logprob:
        meta["output_token_logprobs"] = [
            [lp, t, None] for lp, t in zip(out.log_probs, out.token_ids, strict=True)
        ]
    return {"text": text, "output_ids": list(out.token_ids), "meta_info": meta}


@attrs.define
class EngineService:
    """SGLang's API as plain async methods over one engine; the HTTP app and the router's
    in-process workers both call these.

    ``max_context_len`` refuses longer prompts with 400; ``vocab_size`` (default: the tokenizer's
    length) bounds token ids. An engine with ``load_weights_from_disk(path)`` /
    ``get_weights_by_name(name, truncate_size)`` methods (the embedded engine) backs those
    endpoints unless ``load_weights_from_disk`` is given.
    """

    engine: InferenceEngine
    tokenizer: TokenizerLike | None = None
    model_path: str | None = None
    load_weights_from_disk: WeightLoader | None = None
    max_context_len: int | None = None
    vocab_size: int | None = None
    weight_groups: WeightGroupReceiver = attrs.field(factory=WeightGroupReceiver)
    """The weight-update groups this server joined (``/init_weights_update_group``)."""
    weights_module: torch.nn.Module | None = None
    """The module the engine samples from, when this server owns it (an engine replica): the
    ``weights`` tag of ``/release_memory_occupation`` moves its parameters to host memory. None:
    the weights are never released (an in-process engine reads the trainer's own module)."""
    running_requests: int = attrs.field(default=0, init=False)
    """/generate requests in the engine now (``/get_server_info``)."""
    memory: MemoryState = attrs.field(init=False)
    """What ``/release_memory_occupation`` released and how often (``/get_server_info``)."""

    @memory.default
    def _memory_default(self) -> MemoryState:
        backup = WeightsBackup(self.weights_module) if self.weights_module is not None else None
        return MemoryState(backup=backup)

    def __attrs_post_init__(self) -> None:
        if self.vocab_size is None and self.tokenizer is not None:
            try:
                self.vocab_size = len(self.tokenizer)  # type: ignore[arg-type]
            except TypeError:
                pass

    async def generate(self, payload: Mapping[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """``/generate``: one request, or a batch answered as a list in order."""
        batch = split_batch(payload)
        if batch is None:
            return await self.generate_one(payload)
        return list(await asyncio.gather(*(self.generate_one(p) for p in batch)))

    async def generate_one(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """One /generate request -> its reply."""
        if payload.get("stream"):
            raise ApiError(400, "stream=true is not supported by this server")
        if self.memory.released:  # a request after a release without a resume takes it all back
            await self._take_back(self.memory.released, explicit=False)
        params = parse_sampling_params(payload.get("sampling_params"), vocab_size=self.vocab_size)
        ids = payload.get("input_ids")
        if ids is None:
            ids = await self._tokenize(payload.get("text"))
        ids = check_input_ids(ids, vocab_size=self.vocab_size)
        self._check_context(len(ids))
        self.running_requests += 1
        try:
            out = await self.engine.generate(ids, params)
        except (ValueError, TypeError) as e:
            # The engine's own request parsing (e.g. a budget past its cache): the request's fault.
            raise ApiError(400, f"the engine refused the request: {e}") from e
        finally:
            self.running_requests -= 1
        if out.text is None and self.tokenizer is not None:
            # SGLang's default is to skip special tokens in the returned text.
            text = self.tokenizer.decode(
                out.token_ids, skip_special_tokens=params.get("skip_special_tokens", True)
            )
            out = attrs.evolve(out, text=text if isinstance(text, str) else "".join(text))
        return engine_output_to_reply(
            out,
            prompt_tokens=len(ids),
            return_logprob=bool(payload.get("return_logprob", False)),
            stop=params.get("stop", []),
        )

    async def _tokenize(self, text: object) -> list[int]:
        if not isinstance(text, str):
            raise ApiError(400, "request needs 'input_ids' (list of ints) or 'text' (string)")
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ApiError(400, "'text' input needs a server started with a tokenizer; send input_ids")
        limit = self.max_context_len
        if limit is not None and len(text) > _CHARS_PER_TOKEN_PROBE * limit:
            # Tokenise a prefix first: a prompt that is over the context already there is refused
            # without paying for the rest (off the loop either way).
            head = await asyncio.to_thread(tokenizer.encode, text[: _CHARS_PER_TOKEN_PROBE * limit])
            self._check_context(len(head) - 1)  # the cut may split one token in two
        return list(await asyncio.to_thread(tokenizer.encode, text))

    def _check_context(self, prompt_tokens: int) -> None:
        if self.max_context_len is not None and prompt_tokens >= self.max_context_len:
            raise ApiError(
                400,
                f"the prompt has {prompt_tokens}+ tokens, over the context of {self.max_context_len} "
                "(rollout_max_context_len) with room for at least one new token",
            )

    async def abort(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/abort_request``: abort every in-flight request."""
        if payload.get("rid") and not payload.get("abort_all", False):
            raise ApiError(400, 'aborting one rid is not supported; send {"abort_all": true}')
        await self.engine.abort_all()
        return {"success": True}

    def model_info(self) -> dict[str, Any]:
        """``/get_model_info``."""
        return {
            "model_path": self.model_path or type(self.engine).__name__,
            "tokenizer_path": self.model_path,
            "is_generation": True,
            "weight_version": str(self.engine.weight_version),
        }

    def server_info(self) -> dict[str, Any]:
        """``/get_server_info``: the model info, ``tp_size`` (1), ``running_requests`` and ``memory_occupation``
        (what is released now, how many releases and resumes this server took, the weights'
        device and their bytes there)."""
        backup = self.memory.backup
        return self.model_info() | {
            "tp_size": 1,  # one rank in a weight update group (SGLang reports its tensor parallel size)
            "running_requests": self.running_requests,
            "memory_occupation": {
                "released": [t for t in MEMORY_TAGS if t in self.memory.released],
                "release_count": self.memory.releases,
                "resume_count": self.memory.resumes,
                "weights_device": None if backup is None else str(backup.device),
                "weights_device_bytes": None if backup is None else backup.device_bytes(),
            }
        }

    async def release_memory_occupation(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/release_memory_occupation {"tags"?}`` (SGLang's; Miles's ``--offload-rollout``):
        free the memory of ``tags`` (null: all) until the resume or the next request. Refused
        (``success: false``) while requests run. ``kept`` says which tags this server holds on to
        and why (weights in host memory already, or a module it does not own). An engine over
        other servers (engine replicas, an HttpEngine) is asked to release on each of them."""
        try:
            tags = parse_tags(payload.get("tags"), where="release_memory_occupation")
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        kept: dict[str, str] = {}
        async with self.memory.lock:
            release = getattr(self.engine, "release_memory_occupation", None)
            if isinstance(self.engine, MemoryReleasingEngine):
                try:  # its own default set when the request names none
                    await self.engine.release_memory_occupation(None if payload.get("tags") is None else tags)
                except RuntimeError as e:
                    return {"success": False, "message": f"release_memory_occupation: {e}"}
            elif not callable(release):
                kept |= dict.fromkeys(tags, f"{type(self.engine).__name__} cannot release its memory")
            else:
                try:
                    release()  # on the loop: it checks the engine's queue, which the loop owns
                except RuntimeError as e:
                    return {"success": False, "message": f"release_memory_occupation: {e}"}
                backup = self.memory.backup
                if "weights" in tags and backup is None:
                    kept["weights"] = "this server does not own the module its engine samples from"
                elif "weights" in tags and backup is not None and not backup.releasable():
                    kept["weights"] = "already in host memory"
                elif "weights" in tags and backup is not None:
                    await asyncio.to_thread(backup.release)
            released = [t for t in tags if t not in kept]
            self.memory.released.update(released)
            self.memory.releases += 1
        return {"success": True, "message": f"released {released or 'nothing'}", "released": released, "kept": kept}

    async def resume_memory_occupation(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/resume_memory_occupation {"tags"?}``: take back what ``tags`` (null: all) released.
        The weights are copied back now; the KV cache and CUDA graphs are rebuilt at the next
        request, from the weights of that moment."""
        try:
            tags = parse_tags(payload.get("tags"), where="resume_memory_occupation")
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        resumed = await self._take_back(set(tags), explicit=True)
        return {"success": True, "message": f"resumed {resumed or 'nothing'}", "resumed": resumed}

    async def _take_back(self, tags: set[str], *, explicit: bool) -> list[str]:
        async with self.memory.lock:
            resumed = [t for t in MEMORY_TAGS if t in tags and t in self.memory.released]
            if resumed and isinstance(self.engine, MemoryReleasingEngine):
                await self.engine.resume_memory_occupation(resumed)
            if "weights" in resumed and self.memory.backup is not None:
                await asyncio.to_thread(self.memory.backup.resume)
            self.memory.released.difference_update(resumed)
            if explicit:
                self.memory.resumes += 1
            return resumed

    async def flush_cache(self) -> dict[str, Any]:
        """``/flush_cache``: the engine interface keeps no prefix cache, so there is nothing to drop."""
        return {"success": True}

    def update_weight_version(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/update_weight_version {"new_version"}``: ``engine.update_weights(version)``."""
        raw = payload.get("new_version")
        try:
            version = None if raw is None else int(raw)
        except (TypeError, ValueError):
            raise ApiError(400, f"new_version must be an integer, got {raw!r}") from None
        try:
            self.engine.update_weights(version)
        except ValueError as e:
            raise ApiError(400, f"update_weight_version: {e}") from e
        return {"success": True, "message": f"weight version {self.engine.weight_version}"}

    async def update_weights_from_disk(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/update_weights_from_disk {"model_path", "weight_version"?}``: load the directory into
        the engine (``load_weights_from_disk``, else the engine's own loader), then publish it as
        the new weight version."""
        path = payload.get("model_path")
        if not isinstance(path, str):
            raise ApiError(400, "update_weights_from_disk needs 'model_path'")
        loader = self.load_weights_from_disk or getattr(self.engine, "load_weights_from_disk", None)
        if loader is None:
            raise ApiError(
                400,
                f"this server's engine ({type(self.engine).__name__}) cannot load weights; pass "
                "load_weights_from_disk= to start_server",
            )
        await self._weights_back()
        try:
            if asyncio.iscoroutinefunction(loader):
                await loader(path)
            else:
                result = await asyncio.to_thread(loader, path)
                if isinstance(result, Awaitable):
                    await result
        except (FileNotFoundError, KeyError) as e:
            return {"success": False, "message": f"loading {path} failed: {e}", "num_paused_requests": 0}
        self.update_weight_version({"new_version": payload.get("weight_version")})
        return {"success": True, "message": f"loaded {path}", "num_paused_requests": 0}

    async def init_weights_update_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/init_weights_update_group {"master_address", "master_port", "rank_offset",
        "world_size", "group_name"?, "backend"?}``: join the trainer's weight-update group (the
        reply comes once every rank joined)."""
        try:
            device = getattr(self.engine, "weights_device", None)
            await asyncio.to_thread(self.weight_groups.init, payload, device)
        except Exception as e:  # noqa: BLE001 - a rendezvous failure is reported, the server lives on
            return {"success": False, "message": f"init_weights_update_group failed: {type(e).__name__}: {e}"}
        return {"success": True, "message": f"joined {payload.get('group_name', DEFAULT_GROUP)!r}"}

    async def destroy_weights_update_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/destroy_weights_update_group {"group_name"?}``: leave the group."""
        left = self.weight_groups.destroy(payload)
        return {"success": left, "message": "left the group" if left else "not in that group"}

    async def update_weights_from_distributed(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/update_weights_from_distributed {"names", "dtypes", "shapes", "group_name"?,
        "flush_cache"?, "weight_version"?}``: receive the listed tensors from the group's rank 0,
        load them into the engine by name, publish ``weight_version`` when given."""
        loader = getattr(self.engine, "load_named_weights", None)
        if loader is None:
            raise ApiError(400, f"this server's engine ({type(self.engine).__name__}) cannot load weights by name")
        await self._weights_back()
        try:
            tensors = await asyncio.to_thread(self.weight_groups.receive, payload)
            await asyncio.to_thread(loader, tensors)
        except (LookupError, ValueError, RuntimeError) as e:
            return {"success": False, "message": f"update_weights_from_distributed failed: {e}"}
        if payload.get("weight_version") is not None:
            self.update_weight_version({"new_version": payload.get("weight_version")})
        return {"success": True, "message": f"loaded {len(tensors)} tensors"}

    async def update_weights_from_tensor(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/update_weights_from_tensor {"serialized_named_tensors", "load_format"?, "flush_cache"?,
        "weight_version"?}``: open the handles to the trainer's memory (one entry: this engine has
        no tensor parallelism), copy the tensors into the engine by name, drop the handles, then
        publish ``weight_version`` when given."""
        loader = getattr(self.engine, "load_named_weights", None)
        if loader is None:
            raise ApiError(400, f"this server's engine ({type(self.engine).__name__}) cannot load weights by name")
        entries = payload.get("serialized_named_tensors")
        if not (isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], str)):
            raise ApiError(
                400,
                "update_weights_from_tensor needs 'serialized_named_tensors': a list of one string "
                "(one per tensor-parallel rank; this engine has one)",
            )
        load_format = payload.get("load_format")
        if load_format not in (None, "direct"):
            raise ApiError(400, f"update_weights_from_tensor: load_format {load_format!r} is not supported (null or 'direct')")
        await self._weights_back()
        try:
            count = await asyncio.to_thread(load_serialized_tensors, entries[0], loader)
        except (TensorHandleError, KeyError, ValueError, RuntimeError, OSError) as e:
            return {"success": False, "message": f"update_weights_from_tensor failed: {e}"}
        if payload.get("weight_version") is not None:
            self.update_weight_version({"new_version": payload.get("weight_version")})
        return {"success": True, "message": f"loaded {count} tensors"}

    async def _weights_back(self) -> None:
        """Before a weight update: released weights come back to their device first, so the
        update writes there (SGLang's order: resume the weights, then update them)."""
        if "weights" in self.memory.released:
            await self._take_back({"weights"}, explicit=False)

    async def get_weights_by_name(self, payload: Mapping[str, Any]) -> list[Any]:
        """``/get_weights_by_name {"name", "truncate_size"?}``: the first rows of a parameter as
        the engine holds it (SGLang's debugging endpoint; the trainer's sync check reads it)."""
        name, size = payload.get("name"), payload.get("truncate_size", 100)
        if not isinstance(name, str) or not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ApiError(400, "get_weights_by_name needs 'name' (string) and 'truncate_size' (int >= 1)")
        reader = getattr(self.engine, "get_weights_by_name", None)
        if reader is None:
            raise ApiError(400, f"this server's engine ({type(self.engine).__name__}) cannot report weights")
        try:
            return list(reader(name, size))
        except KeyError as e:
            raise ApiError(400, f"get_weights_by_name: {e}") from e


@attrs.define
class MemoryState:
    """A server's ``/release_memory_occupation`` state."""

    backup: WeightsBackup | None = None
    """Moves the weights to host memory and back (None: the server does not own them)."""
    released: set[str] = attrs.field(factory=set)
    """Tags released and not taken back yet."""
    releases: int = 0
    resumes: int = 0
    """Explicit ``/resume_memory_occupation`` calls (a request or weight update after a release
    also takes the memory back, without counting here)."""
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)


Endpoint = Callable[[web.Request, Mapping[str, Any]], Awaitable[object]]
"""An endpoint: (request, JSON body) -> a JSON-able reply or a ready web response."""
ErrorMapper = Callable[[Exception], web.Response | None]


def json_endpoint(
    fn: Endpoint,
    inflight: InFlight,
    *,
    token: str | None = None,
    on_error: ErrorMapper | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler around ``fn``: the token check (when ``token`` is set), the in-flight
    limits, the JSON body parsed off the loop, and errors as ``{"error": {"message"}}``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            if token is not None and not is_authorized(request.headers, token):
                raise ApiError(
                    401,
                    f"{request.path} is a control endpoint: send 'Authorization: Bearer <token>' "
                    "(the run's token; in-process hooks get it from miles.utils.http_utils)",
                )
            async with inflight.admit(request.content_length):
                body = await read_json_object(request)
                reply = await fn(request, body)
            return reply if isinstance(reply, web.StreamResponse) else web.json_response(reply)
        except ApiError as e:
            return _error(e.status, e.message)
        except web.HTTPException:
            raise
        except Exception as e:
            mapped = on_error(e) if on_error is not None else None
            if mapped is not None:
                return mapped
            # The client gets the cause, not aiohttp's bare "500 Internal Server Error".
            logger.exception("%s %s failed", request.method, request.path)
            return _error(500, f"{request.path}: {type(e).__name__}: {e}")

    return handler


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def _parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError(400, "body nests too deeply to parse (deeply nested JSON arrays/objects)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not JSON: {e}") from None


async def read_json_object(request: web.Request) -> Mapping[str, Any]:
    """The request's JSON-object body (``{}`` when it has none), parsed in a worker thread so a
    large body never stalls the event loop. Raises ApiError (400/413) saying what is wrong."""
    if not request.can_read_body:
        return {}
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise ApiError(413, f"request body is over the server's limit: {e.text}") from None
    body = await asyncio.to_thread(_parse_json, raw) if len(raw) > 65536 else _parse_json(raw)
    if not isinstance(body, Mapping):
        raise ApiError(400, f"body must be a JSON object, got {type(body).__name__}")
    return body


def build_app(
    service: EngineService,
    *,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    gate: GenerationGate | None = None,
) -> web.Application:
    """The aiohttp application serving ``service``. Control endpoints need ``api_key`` when set
    (:func:`start_server` always sets one); ``gate`` holds /generate while a train step runs."""
    limits = limits or ServerLimits.for_context(service.max_context_len)
    inflight = InFlight(limits)

    def route(fn: Endpoint, *, control: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        return json_endpoint(fn, inflight, token=api_key if control else None)

    async def generate(_: web.Request, body: Mapping[str, Any]) -> object:
        if gate is None:
            return await service.generate(body)
        async with gate.generating():
            return await service.generate(body)

    async def abort(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.abort(body)

    async def ok(_: web.Request, __: Mapping[str, Any]) -> object:
        return "ok"

    async def info(_: web.Request, __: Mapping[str, Any]) -> object:
        return service.model_info()

    async def server_info(_: web.Request, __: Mapping[str, Any]) -> object:
        return service.server_info()

    async def release(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.release_memory_occupation(body)

    async def resume(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.resume_memory_occupation(body)

    async def version(_: web.Request, __: Mapping[str, Any]) -> object:
        return {"weight_version": str(service.engine.weight_version)}

    async def flush(_: web.Request, __: Mapping[str, Any]) -> object:
        return await service.flush_cache()

    async def set_version(_: web.Request, body: Mapping[str, Any]) -> object:
        return service.update_weight_version(body)

    async def from_disk(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.update_weights_from_disk(body)

    async def weights(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.get_weights_by_name(body)

    async def init_group(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.init_weights_update_group(body)

    async def destroy_group(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.destroy_weights_update_group(body)

    async def from_group(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.update_weights_from_distributed(body)

    async def from_tensor(_: web.Request, body: Mapping[str, Any]) -> object:
        return await service.update_weights_from_tensor(body)

    app = web.Application(client_max_size=limits.max_body_bytes)
    app.router.add_post("/generate", route(generate))
    app.router.add_post("/abort_request", route(abort, control=True))
    # /health_generate is the same liveness answer: the engine runs in this process, so a
    # server that answers can generate.
    for path in ("/health", "/health_generate"):
        app.router.add_get(path, route(ok))
    app.router.add_get("/get_model_info", route(info))
    app.router.add_get("/get_server_info", route(server_info))
    app.router.add_get("/get_weight_version", route(version))
    app.router.add_route("*", "/get_weights_by_name", route(weights))
    app.router.add_route("*", "/flush_cache", route(flush, control=True))
    app.router.add_post("/update_weight_version", route(set_version, control=True))
    app.router.add_post("/update_weights_from_disk", route(from_disk, control=True))
    app.router.add_post("/init_weights_update_group", route(init_group, control=True))
    app.router.add_post("/destroy_weights_update_group", route(destroy_group, control=True))
    app.router.add_post("/update_weights_from_distributed", route(from_group, control=True))
    app.router.add_post("/update_weights_from_tensor", route(from_tensor, control=True))
    app.router.add_route("*", "/release_memory_occupation", route(release, control=True))
    app.router.add_route("*", "/resume_memory_occupation", route(resume, control=True))
    return app


@attrs.define
class ServerHandle:
    """A running server: ``url`` (``http://host:port``), ``port``, ``api_key`` (the control
    token); ``await close()`` stops it."""

    host: str
    port: int
    _runner: web.AppRunner
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        """The header control endpoints need."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def close(self) -> None:
        """Stop accepting requests and shut the server down."""
        unregister_token(self.host, self.port)
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_app(app: web.Application, host: str, port: int, *, api_key: str | None = None) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0: a free port) in the running event loop; ``api_key`` is
    registered so in-process clients of this address send it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # With port 0 the OS picked one; the runner knows which.
    bound = int(runner.addresses[0][1]) if port == 0 else port
    if api_key:
        register_token(host, bound, api_key)
    return ServerHandle(host=host, port=bound, runner=runner, api_key=api_key)


async def start_server(
    engine: InferenceEngine,
    tokenizer: TokenizerLike | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_path: str | None = None,
    load_weights_from_disk: WeightLoader | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    gate: GenerationGate | None = None,
    max_context_len: int | None = None,
    vocab_size: int | None = None,
    weights_module: torch.nn.Module | None = None,
) -> ServerHandle:
    """Serve SGLang's HTTP API over ``engine`` in the running event loop.

    ``tokenizer`` enables ``text`` prompts and decodes replies when the engine returns no text.
    ``load_weights_from_disk(path)`` backs ``/update_weights_from_disk`` (default: the engine's
    own ``load_weights_from_disk``). ``api_key`` guards the control endpoints (default: a random
    token, in ``handle.api_key``; required to bind a non-loopback ``host``). ``weights_module``:
    the module ``engine`` samples from, when the server owns it; ``/release_memory_occupation``
    then moves its weights to host memory (``weights`` tag).
    """
    check_bind(host, api_key, what="start_server")
    service = EngineService(
        engine, tokenizer, model_path, load_weights_from_disk, max_context_len, vocab_size,
        weights_module=weights_module,
    )  # fmt: skip
    token = api_key or new_token()
    app = build_app(service, api_key=token, limits=limits, gate=gate)
    return await serve_app(app, host, port, api_key=token)
