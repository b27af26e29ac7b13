"""`Router`: spread generate requests over engine replicas, through a middleware chain.

Miles's router semantics: each request goes to the healthy engine with the fewest requests in
flight; ``/health`` is polled every ``health_check_interval`` seconds; after
``failure_threshold`` consecutive failures (failed checks or refused connections) an engine leaves
the rotation. Unlike Miles, an engine whose ``/health`` answers again comes back (Miles keeps it
out for fear of stale weights; here the pending weight version is re-sent first — moving the
weights themselves stays the trainer's job). An engine that leaves the rotation (failed checks,
refused connections, or :meth:`Router.mark_down`) has its in-flight /generate requests cancelled on
the router side and re-sent to other engines; each request's reply is delivered once.

The router is itself an :class:`~miles_sdk.engines.base.InferenceEngine`, so the Trainer can use it
directly; :func:`miles_sdk.router.server.start_router_server` serves it over SGLang's HTTP API.

Middlewares (``RouterMiddleware``: ``(request, call_next) -> reply``) run in list order: the
first sees the request first and the reply last. A middleware may transform either, answer from a
cache without calling ``call_next``, or pick the engine by setting ``request[ROUTE_TO]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, Self, runtime_checkable

import aiohttp
import attrs

from miles_sdk.engines.base import (
    EngineOutput,
    InferenceEngine,
    RemoteWeightsEngine,
    ReplicaWeights,
    SamplingParams,
    WeightReporter,
)
from miles_sdk.engines.http_client import (
    generate_payload,
    normalize_url,
    parse_generate_response,
    parse_weight_version,
)
from miles_sdk.engines.weight_sync import flatten_values
from miles_sdk.hooks import RouterMiddleware, RouterRequest, RouterResponse
from miles_sdk.rollout.context import TokenizerLike
from miles_sdk.router._workers import EngineWorker, UpstreamError, UrlWorker, Worker, WorkerDown

__all__ = [
    "ROUTE_TO",
    "NoHealthyWorkerError",
    "Router",
    "RouterError",
    "SupportsInvalidate",
    "UpstreamError",
    "WorkerStatus",
]

logger = logging.getLogger(__name__)

ROUTE_TO = "miles_router_engine"
"""A middleware that sets ``request[ROUTE_TO]`` (an engine's name/URL or its index) picks the engine;
the router removes the key before forwarding. An engine out of rotation is skipped (least-active
choice instead), so a pinned request never fails just because its engine died."""


class RouterError(RuntimeError):
    """The router could not serve a request."""


class NoHealthyWorkerError(RouterError):
    """Every engine is out of rotation (or failed this request)."""


@runtime_checkable
class SupportsInvalidate(Protocol):
    """A middleware with cached state tied to the weights; the router calls ``invalidate()`` on
    weight updates and ``/flush_cache``."""

    def invalidate(self) -> None: ...


@attrs.frozen
class WorkerStatus:
    """A snapshot of one engine as the router sees it."""

    name: str
    healthy: bool
    active: int
    requests: int
    failures: int
    last_error: str | None


class Router:
    """Least-active routing with health checks and a middleware chain.

    Args:
        engines: engine URLs (``http://host:port``) and/or in-process ``InferenceEngine`` objects.
        middlewares: ``RouterMiddleware`` callables, outermost first.
        tokenizer: lets in-process engines accept ``text`` prompts.
        failure_threshold: consecutive failures that take an engine out of rotation.
        health_check_interval: seconds between ``/health`` rounds once :meth:`start` ran
            (None: only when :meth:`check_health` is called).
        health_check_timeout: seconds a ``/health`` call may take.
        request_timeout: seconds a forwarded request may take (None: no limit).
        max_connections: connection-pool size towards URL engines.
        api_key: sent as ``Authorization: Bearer`` to URL engines (default: the token of a server
            in this process at that address, if any).
    """

    def __init__(
        self,
        engines: Sequence[str | InferenceEngine],
        *,
        middlewares: Sequence[RouterMiddleware] = (),
        tokenizer: TokenizerLike | None = None,
        failure_threshold: int = 3,
        health_check_interval: float | None = 10.0,
        health_check_timeout: float = 5.0,
        request_timeout: float | None = None,
        max_connections: int = 512,
        api_key: str | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"Router: failure_threshold must be >= 1, got {failure_threshold}")
        self.middlewares = list(middlewares)
        self.tokenizer = tokenizer
        self.failure_threshold = failure_threshold
        self.health_check_interval = health_check_interval
        self._health_timeout = health_check_timeout
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._workers: list[Worker] = []
        for engine in engines:
            self.add_worker(engine)
        local = [w.engine.weight_version for w in self._workers if isinstance(w, EngineWorker)]
        self._weight_version = max(local, default=0)
        self._pending_version: int | None = None

    # -- workers -----------------------------------------------------------------------------------

    def add_worker(self, engine: str | InferenceEngine) -> str:
        """Add an engine (a URL or an InferenceEngine); returns its name. Adding a URL twice is a no-op."""
        if isinstance(engine, str):
            worker: Worker = UrlWorker(
                engine, self._get_session, self._health_timeout, self._request_timeout, self._api_key
            )
        elif isinstance(engine, InferenceEngine):
            worker = EngineWorker(
                f"engine-{len(self._workers)}:{type(engine).__name__}", engine, self.tokenizer
            )
        else:
            raise TypeError(f"Router: engine {engine!r} is neither a URL string nor an InferenceEngine")
        for existing in self._workers:
            if existing.name == worker.name:
                return existing.name
        self._workers.append(worker)
        return worker.name

    def remove_worker(self, name: str) -> bool:
        """Take an engine (by URL or name) out of the router for good; False when none matches."""
        for w in self._workers:
            if w.name == name or (isinstance(w, UrlWorker) and "://" in name and w.name == normalize_url(name)):
                self._workers.remove(w)
                return True
        return False

    @property
    def workers(self) -> list[WorkerStatus]:
        """Every engine, in the order added."""
        return [
            WorkerStatus(w.name, w.healthy, w.active, w.requests, w.failures, w.last_error)
            for w in self._workers
        ]

    # -- routing -----------------------------------------------------------------------------------

    async def route(self, request: RouterRequest) -> RouterResponse:
        """Run one single /generate request through the middlewares to an engine."""
        await self._push_pending_version()
        call: Callable[[RouterRequest], Awaitable[RouterResponse]] = self._dispatch
        for middleware in reversed(self.middlewares):
            call = _bind(middleware, call)
        return await call(request)

    async def forward(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, object]:
        """Send a non-generate request to the least-busy healthy engine."""
        tried: set[Worker] = set()
        while True:
            worker = self._pick(tried)
            try:
                return await worker.call(method, path, body)
            except WorkerDown as e:
                self._record_failure(worker, str(e))
                tried.add(worker)

    async def broadcast(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, object]:
        """Send a request to every healthy engine; name -> (status, body) or the error text."""

        async def one(w: Worker) -> object:
            try:
                return await w.call(method, path, body)
            except WorkerDown as e:
                self._record_failure(w, str(e))
                return str(e)

        healthy = [w for w in self._workers if w.healthy]
        results = await asyncio.gather(*(one(w) for w in healthy))
        return {w.name: r for w, r in zip(healthy, results, strict=True)}

    async def _dispatch(self, request: RouterRequest) -> RouterResponse:
        tried: set[Worker] = set()
        preferred: Worker | None = None
        if ROUTE_TO in request:
            target = request[ROUTE_TO]
            request = {k: v for k, v in request.items() if k != ROUTE_TO}
            preferred = self._find(target)
        while True:
            if preferred is not None and preferred.healthy and preferred not in tried:
                worker = preferred
            else:
                worker = self._pick(tried)
            worker.active += 1
            worker.requests += 1
            # A task of its own, so that a worker taken out of rotation mid-request (dead process,
            # failed health checks) can hand its in-flight requests back for re-sending.
            call = asyncio.ensure_future(worker.generate(request))
            worker.in_flight.add(call)
            try:
                reply = await call
            except WorkerDown as e:
                self._record_failure(worker, str(e))
                tried.add(worker)
                continue
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if call not in worker.evicted or (current is not None and current.cancelling()):
                    raise  # our caller was cancelled, not (only) the worker
                tried.add(worker)  # re-sent below; the evicted call's reply is never delivered
                continue
            finally:
                worker.active -= 1
                worker.in_flight.discard(call)
                worker.evicted.discard(call)
            worker.failures = 0
            return reply

    def _find(self, target: object) -> Worker:
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(self._workers):
            return self._workers[target]
        if isinstance(target, str):
            for w in self._workers:
                if w.name == target or (isinstance(w, UrlWorker) and w.name == normalize_url(target)):
                    return w
        names = [w.name for w in self._workers]
        raise RouterError(f"Router: request[{ROUTE_TO!r}] = {target!r} names no engine; engines: {names}")

    def _pick(self, exclude: set[Worker]) -> Worker:
        candidates = [w for w in self._workers if w.healthy and w not in exclude]
        if not candidates:
            detail = "; ".join(
                f"{w.name}: {'tried' if w in exclude else 'out of rotation'} ({w.last_error})"
                for w in self._workers
            )
            raise NoHealthyWorkerError(
                f"Router: no healthy engine for this request [{detail or 'no engines'}]"
            )
        # min() keeps the first on ties, so an idle router fills engines in the order given.
        return min(candidates, key=lambda w: w.active)

    def _record_failure(self, worker: Worker, error: str) -> None:
        worker.failures += 1
        worker.last_error = error
        if worker.healthy and worker.failures >= self.failure_threshold:
            worker.healthy = False
            resent = worker.evict_in_flight()
            logger.warning(
                "Router: %s failed %d times in a row; out of rotation (%s); %d in-flight requests re-sent "
                "to other engines",
                worker.name,
                worker.failures,
                error,
                resent,
            )

    def mark_down(self, name: str, reason: str) -> int:
        """Take engine ``name`` out of rotation now (e.g. its process is gone) and re-send its
        in-flight requests to other engines; returns how many were re-sent. It comes back when
        its ``/health`` answers again (or is replaced by :meth:`remove_worker`/:meth:`add_worker`)."""
        worker = self._find(name)
        worker.failures = max(worker.failures, self.failure_threshold)
        worker.last_error = reason
        if not worker.healthy:
            return 0
        worker.healthy = False
        resent = worker.evict_in_flight()
        logger.warning("Router: %s is down (%s); %d in-flight requests re-sent to other engines", name, reason, resent)
        return resent

    # -- health ------------------------------------------------------------------------------------

    async def check_health(self) -> dict[str, bool]:
        """One ``/health`` round over every engine (out-of-rotation ones too); name -> healthy."""
        results = await asyncio.gather(*(w.health() for w in self._workers))
        for worker, ok in zip(self._workers, results, strict=True):
            if not ok:
                self._record_failure(worker, worker.last_error or "/health failed")
                continue
            worker.failures = 0
            if not worker.healthy:
                worker.healthy = True
                self._pending_version = (
                    self._weight_version if self._pending_version is None else self._pending_version
                )
                logger.warning("Router: %s is healthy again; back in rotation", worker.name)
        return {w.name: w.healthy for w in self._workers}

    async def start(self) -> None:
        """Start the background health loop (when ``health_check_interval`` is set)."""
        if self.health_check_interval is not None and self._health_task is None:
            self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        """Stop the health loop and close connections."""
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _health_loop(self) -> None:
        assert self.health_check_interval is not None
        while True:
            await asyncio.sleep(self.health_check_interval)
            try:
                await self.check_health()
            except Exception:  # a bug in one round must not end health checking for good
                logger.exception("Router: health check round failed")

    # -- InferenceEngine ---------------------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        return self._weight_version

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        reply = await self.route(generate_payload(input_ids, sampling_params))
        return parse_generate_response(reply, default_version=self._weight_version, source="router /generate")

    async def abort_all(self) -> None:
        """Abort in-flight requests on every engine."""
        await self.broadcast("POST", "/abort_request", {"rid": "", "abort_all": True})

    def update_weights(self, version: int | None = None) -> None:
        """New weights: in-process engines update now, URL engines get ``/update_weight_version``
        before the next request, and middleware caches are invalidated."""
        self._weight_version = self._weight_version + 1 if version is None else version
        for w in self._workers:
            if isinstance(w, EngineWorker):
                w.engine.update_weights(self._weight_version)
        if any(isinstance(w, UrlWorker) for w in self._workers):
            self._pending_version = self._weight_version
        self.invalidate_caches()

    @property
    def remote_weights(self) -> bool:
        """True when some engine holds its own weights (a URL, or an engine that says so)."""
        return any(
            isinstance(w, UrlWorker)
            or (isinstance(w, EngineWorker) and isinstance(w.engine, RemoteWeightsEngine) and w.engine.remote_weights)
            for w in self._workers
        )

    async def load_weights_from_disk(self, model_path: str, version: int) -> None:
        """The Trainer's sync: URL engines load ``model_path`` (``/update_weights_from_disk``),
        in-process engines take ``version`` (or load too, when they hold remote weights)."""
        body = {"model_path": model_path, "weight_version": str(version), "abort_all_requests": False}
        failed: list[str] = []
        for w in self._workers:
            if isinstance(w, EngineWorker):
                engine = w.engine
                if isinstance(engine, RemoteWeightsEngine) and engine.remote_weights:
                    await engine.load_weights_from_disk(model_path, version)
                else:
                    engine.update_weights(version)
                continue
            try:
                status, reply = await w.call("POST", "/update_weights_from_disk", body)
            except WorkerDown as e:
                self._record_failure(w, str(e))
                failed.append(f"{w.name}: {e}")
                continue
            ok = status == 200 and not (isinstance(reply, Mapping) and reply.get("success") is False)
            if not ok:
                failed.append(f"{w.name}: HTTP {status}: {str(reply)[:300]}")
        if failed:
            raise RouterError(f"Router: update_weights_from_disk({model_path}) failed on {failed}")
        self._weight_version = version
        self._pending_version = version if any(isinstance(w, UrlWorker) for w in self._workers) else None
        self.invalidate_caches()

    async def report_weights(self, names: Sequence[str], truncate_size: int) -> list[ReplicaWeights]:
        """Every engine's version and first rows of ``names`` (for the Trainer's sync check)."""
        out: list[ReplicaWeights] = []
        for w in self._workers:
            if isinstance(w, EngineWorker):
                engine = w.engine
                if isinstance(engine, WeightReporter):
                    out.extend(await engine.report_weights(names, truncate_size))
                    continue
                reader = getattr(engine, "get_weights_by_name", None)
                if reader is None:
                    continue  # an engine without weights (a scripted one) has nothing to check
                values = {n: flatten_values(reader(n, truncate_size)) for n in names}
                out.append(ReplicaWeights(w.name, engine.weight_version, values))
                continue
            _, version_reply = await w.call("GET", "/get_weight_version")
            raw = version_reply.get("weight_version") if isinstance(version_reply, Mapping) else None
            values = {}
            for n in names:
                status, rows = await w.call("POST", "/get_weights_by_name", {"name": n, "truncate_size": truncate_size})
                if status != 200:
                    raise RouterError(f"Router: {w.name}/get_weights_by_name({n!r}): HTTP {status}: {str(rows)[:300]}")
                values[n] = flatten_values(rows)
            out.append(ReplicaWeights(w.name, parse_weight_version(raw, -1), values))
        return out

    def note_weight_version(self, version: int) -> None:
        """Record a version the engines were given behind the router (e.g. via its HTTP API)."""
        self._weight_version = version
        self.invalidate_caches()

    def invalidate_caches(self) -> None:
        """Call ``invalidate()`` on every middleware that has it."""
        for middleware in self.middlewares:
            if isinstance(middleware, SupportsInvalidate):
                middleware.invalidate()

    # -- internals ---------------------------------------------------------------------------------

    async def _push_pending_version(self) -> None:
        if self._pending_version is None:
            return
        version, self._pending_version = self._pending_version, None
        body = {"new_version": str(version), "abort_all_requests": False}
        for w in self._workers:
            if isinstance(w, UrlWorker) and w.healthy:
                try:
                    status, reply = await w.call("POST", "/update_weight_version", body)
                except WorkerDown as e:
                    self._record_failure(w, str(e))
                    continue
                if status != 200:
                    logger.warning("Router: %s refused weight version %d: %s", w.name, version, reply)

    def _get_session(self) -> aiohttp.ClientSession:
        # Sessions are bound to their event loop; a new loop (tests, notebooks) gets a new one.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._max_connections))
            self._session_loop = loop
        return self._session


def _bind(
    middleware: RouterMiddleware, call_next: Callable[[RouterRequest], Awaitable[RouterResponse]]
) -> Callable[[RouterRequest], Awaitable[RouterResponse]]:
    async def call(request: RouterRequest) -> RouterResponse:
        return await middleware(request, call_next)

    return call
