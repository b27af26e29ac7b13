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
``GET /get_model_info``, ``GET /get_server_info``, ``GET /get_weight_version``, ``/flush_cache``,
``POST /update_weight_version``, ``POST /update_weights_from_disk``. The engine interface can only
abort everything, so an abort naming one ``rid`` is refused rather than silently widened.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Self, cast

import attrs
from aiohttp import web

from miles_sdk.engines.base import EngineOutput, FinishReason, InferenceEngine, SamplingParams
from miles_sdk.rollout.context import TokenizerLike

__all__ = [
    "ApiError",
    "EngineService",
    "ServerHandle",
    "build_app",
    "engine_output_to_reply",
    "read_json_object",
    "split_batch",
    "start_server",
]

logger = logging.getLogger(__name__)

_SAMPLING_KEYS = frozenset(SamplingParams.__annotations__)
# SGLang keys the engine interface has no slot for: accepted when they ask for SGLang's default
# behaviour (so Miles's usual dicts pass), refused otherwise (silently dropping a penalty would
# change what is sampled).
_NEUTRAL: dict[str, object] = {
    "n": 1,
    "min_new_tokens": 0,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
}
_ANY_VALUE = frozenset({"spaces_between_special_tokens", "logit_bias", "custom_params"})

WeightLoader = Callable[[str], Awaitable[None] | None]
"""Loads weights from a path for ``/update_weights_from_disk`` (sync or async)."""


class ApiError(Exception):
    """A request the server refuses; becomes ``{"error": {"message": ...}}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


def _sampling_params(raw: object) -> SamplingParams:
    if raw is None:
        return SamplingParams()
    if not isinstance(raw, Mapping):
        raise ApiError(400, f"sampling_params must be an object, got {type(raw).__name__}")
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SAMPLING_KEYS:
            if value is not None:
                params[key] = value
        elif key in _ANY_VALUE or (key in _NEUTRAL and value in (None, _NEUTRAL[key])):
            continue
        else:
            hint = f" (only {_NEUTRAL[key]!r} is supported)" if key in _NEUTRAL else ""
            raise ApiError(
                400, f"sampling_params key {key!r}={value!r} is not supported by this server{hint}"
            )
    return cast(SamplingParams, params)


@attrs.define
class EngineService:
    """SGLang's API as plain async methods over one engine; the HTTP app and the router's
    in-process workers both call these."""

    engine: InferenceEngine
    tokenizer: TokenizerLike | None = None
    model_path: str | None = None
    load_weights_from_disk: WeightLoader | None = None

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
        ids = payload.get("input_ids")
        if ids is None:
            text = payload.get("text")
            if not isinstance(text, str):
                raise ApiError(400, "request needs 'input_ids' (list of ints) or 'text' (string)")
            if self.tokenizer is None:
                raise ApiError(400, "'text' input needs a server started with a tokenizer; send input_ids")
            ids = list(self.tokenizer.encode(text))
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ApiError(400, f"input_ids must be a list of ints, got {str(ids)[:100]}")
        params = _sampling_params(payload.get("sampling_params"))
        out = await self.engine.generate(ids, params)
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
        self.engine.update_weights(version)
        return {"success": True, "message": f"weight version {self.engine.weight_version}"}

    async def update_weights_from_disk(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/update_weights_from_disk {"model_path", "weight_version"?}`` via ``load_weights_from_disk``."""
        path = payload.get("model_path")
        if not isinstance(path, str):
            raise ApiError(400, "update_weights_from_disk needs 'model_path'")
        if self.load_weights_from_disk is None:
            raise ApiError(
                400, "this server has no weight loader; pass load_weights_from_disk= to start_server"
            )
        result = self.load_weights_from_disk(path)
        if result is not None:
            await result
        self.update_weight_version({"new_version": payload.get("weight_version")})
        return {"success": True, "message": f"loaded {path}", "num_paused_requests": 0}


def _json_handler(
    fn: Callable[[Mapping[str, Any]], Awaitable[object]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            return web.json_response(await fn(body))
        except ApiError as e:
            return _error(e.status, e.message)
        except Exception as e:
            # The client gets the cause, not aiohttp's bare "500 Internal Server Error".
            logger.exception("%s %s failed", request.method, request.path)
            return _error(500, f"{request.path}: {type(e).__name__}: {e}")

    return handler


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


async def read_json_object(request: web.Request) -> Mapping[str, Any] | web.Response:
    """The request's JSON-object body (``{}`` when it has none), or a 400 reply saying what is wrong."""
    body: object = {}
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError as e:
            return _error(400, f"body is not JSON: {e}")
    if not isinstance(body, Mapping):
        return _error(400, f"body must be a JSON object, got {type(body).__name__}")
    return body


def build_app(service: EngineService) -> web.Application:
    """The aiohttp application serving ``service``."""

    async def ok(_: Mapping[str, Any]) -> str:
        return "ok"

    async def info(_: Mapping[str, Any]) -> dict[str, Any]:
        return service.model_info()

    async def version(_: Mapping[str, Any]) -> dict[str, Any]:
        return {"weight_version": str(service.engine.weight_version)}

    async def flush(_: Mapping[str, Any]) -> dict[str, Any]:
        return await service.flush_cache()

    async def set_version(body: Mapping[str, Any]) -> dict[str, Any]:
        return service.update_weight_version(body)

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/generate", _json_handler(service.generate))
    app.router.add_post("/abort_request", _json_handler(service.abort))
    # /health_generate is the same liveness answer: the engine runs in this process, so a
    # server that answers can generate.
    for path in ("/health", "/health_generate"):
        app.router.add_get(path, _json_handler(ok))
    for path in ("/get_model_info", "/get_server_info"):
        app.router.add_get(path, _json_handler(info))
    app.router.add_get("/get_weight_version", _json_handler(version))
    app.router.add_route("*", "/flush_cache", _json_handler(flush))
    app.router.add_post("/update_weight_version", _json_handler(set_version))
    app.router.add_post("/update_weights_from_disk", _json_handler(service.update_weights_from_disk))
    return app


@attrs.define
class ServerHandle:
    """A running server: ``url`` (``http://host:port``), ``port``; ``await close()`` stops it."""

    host: str
    port: int
    _runner: web.AppRunner

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting requests and shut the server down."""
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_app(app: web.Application, host: str, port: int) -> ServerHandle:
    """Start ``app`` on ``host:port`` (0: a free port) in the running event loop."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # With port 0 the OS picked one; the runner knows which.
    bound = int(runner.addresses[0][1]) if port == 0 else port
    return ServerHandle(host=host, port=bound, runner=runner)


async def start_server(
    engine: InferenceEngine,
    tokenizer: TokenizerLike | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_path: str | None = None,
    load_weights_from_disk: WeightLoader | None = None,
) -> ServerHandle:
    """Serve SGLang's HTTP API over ``engine`` in the running event loop.

    ``tokenizer`` enables ``text`` prompts and decodes replies when the engine returns no text.
    ``load_weights_from_disk(path)`` backs ``/update_weights_from_disk``.
    """
    service = EngineService(engine, tokenizer, model_path, load_weights_from_disk)
    return await serve_app(build_app(service), host, port)
