"""`serve_rollout`: put the rollout's engine behind HTTP the way a Miles run does.

Miles generate functions POST to ``http://{args.sglang_router_ip}:{args.sglang_router_port}/generate``.
The Trainer calls :func:`serve_rollout` once and gets back the engine the default rollout should
call plus a ``Config`` whose ``sglang_router_ip``/``sglang_router_port`` point at a live server:

================  ==================  =========================================================
rollout_engine    use_miles_router    what runs
================  ==================  =========================================================
embedded/sglang   False               our SGLang-API server over the engine (rollout calls the
                                      engine directly)
embedded/sglang   True                a Router (with middlewares) over the engine, served over
                                      HTTP; the rollout calls the router
http              False               ``HttpEngine`` to the given ip/port, or over
                                      rollout_external_engine_addrs (then, without a router
                                      ip/port, our server over it; args point at it)
http              True                a Router over that URL (or those addresses), served on a
                                      new port; args point at the router
================  ==================  =========================================================

Passing middlewares counts as ``use_miles_router``.

A served API's control endpoints take ``args.sglang_api_key`` (else a random per-run token,
registered so in-process hooks send it); a non-loopback bind without ``sglang_api_key`` is refused.
``gate`` (the Trainer's) holds served /generate requests while a train step runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from miles_sdk.config import Config
from miles_sdk.engines._serving_guard import GenerationGate, ServerLimits
from miles_sdk.engines.base import InferenceEngine
from miles_sdk.engines.http_client import HttpEngine, normalize_url
from miles_sdk.engines.http_server import ServerHandle, start_server
from miles_sdk.hooks import RouterMiddleware
from miles_sdk.rollout.context import TokenizerLike
from miles_sdk.router.router import Router
from miles_sdk.router.server import start_router_server

__all__ = ["RolloutServing", "serve_rollout"]


@attrs.define
class RolloutServing:
    """What :func:`serve_rollout` started. ``await close()`` stops all of it."""

    engine: InferenceEngine
    """What the rollout should call (the engine, the router, or an HttpEngine)."""
    args: Config
    """``args`` with ``sglang_router_ip``/``sglang_router_port`` pointing at the live server."""
    server: ServerHandle | None = None
    router: Router | None = None
    http_engine: HttpEngine | None = None

    async def close(self) -> None:
        """Stop the server, then the router's health loop and connections."""
        if self.server is not None:
            await self.server.close()
        if self.router is not None:
            await self.router.close()
        if self.http_engine is not None:
            await self.http_engine.close()


async def serve_rollout(
    args: Config,
    engine: InferenceEngine | None = None,
    tokenizer: TokenizerLike | None = None,
    *,
    middlewares: Sequence[RouterMiddleware] = (),
    serve_http: bool = True,
    host: str = "127.0.0.1",
    gate: GenerationGate | None = None,
) -> RolloutServing:
    """Start what ``args.rollout_engine`` / ``args.use_miles_router`` ask for (see the module table).

    ``engine`` is required unless ``rollout_engine == "http"``. With ``serve_http=False`` no
    server is started for a local engine (the router, if any, is still built). A local server
    binds ``args.sglang_router_ip``/``args.sglang_router_port`` when set, else ``host`` and a free port.
    """
    use_router = args.use_miles_router or bool(middlewares)
    key = args.sglang_api_key
    limits = ServerLimits.for_context(args.rollout_max_context_len, max_body_bytes=args.serve_max_body_bytes)
    limits = attrs.evolve(limits, max_concurrent_requests=args.serve_max_concurrent_requests)
    if args.rollout_engine == "http":
        external = args.rollout_external_engine_addrs
        routed = bool(args.sglang_router_ip and args.sglang_router_port)
        if not external and not routed:
            raise ValueError(
                "rollout_engine='http' needs sglang_router_ip and sglang_router_port (the SGLang server or router), "
                "or rollout_external_engine_addrs (--rollout-external-engine-addrs host:port ...)"
            )
        urls = [normalize_url(a) for a in external] if external else [f"http://{args.sglang_router_ip}:{args.sglang_router_port}"]
        if not use_router:
            client = HttpEngine(
                urls, tokenizer=tokenizer, max_connections=args.sglang_server_concurrency, api_key=key
            )
            if routed:
                return RolloutServing(engine=client, args=args, http_engine=client)
            # External servers and no router named: Miles starts its router in front of them;
            # here our SGLang-API server over the client, so generate functions reach them all.
            server = await start_server(
                client,
                tokenizer,
                host,
                0,
                model_path=args.hf_checkpoint,
                api_key=key,
                limits=limits,
                gate=gate,
                max_context_len=args.rollout_max_context_len,
            )
            return RolloutServing(engine=client, args=_pointing_at(args, server), server=server, http_engine=client)
        router = Router(
            urls,
            middlewares=middlewares,
            tokenizer=tokenizer,
            max_connections=args.sglang_server_concurrency,
            api_key=key,
        )
        server = await start_router_server(router, host, 0, api_key=key, limits=limits, gate=gate)
        return RolloutServing(engine=router, args=_pointing_at(args, server), server=server, router=router)

    if engine is None:
        raise ValueError(f"serve_rollout: rollout_engine={args.rollout_engine!r} needs the engine object")
    bind_host = args.sglang_router_ip or host
    bind_port = args.sglang_router_port or 0
    if use_router:
        router = Router([engine], middlewares=middlewares, tokenizer=tokenizer)
        if not serve_http:
            await router.start()
            return RolloutServing(engine=router, args=args, router=router)
        server = await start_router_server(
            router, bind_host, bind_port, api_key=key, limits=limits, gate=gate
        )
        return RolloutServing(engine=router, args=_pointing_at(args, server), server=server, router=router)
    if not serve_http:
        return RolloutServing(engine=engine, args=args)
    server = await start_server(
        engine,
        tokenizer,
        bind_host,
        bind_port,
        model_path=args.hf_checkpoint,
        api_key=key,
        limits=limits,
        gate=gate,
        max_context_len=args.rollout_max_context_len,
    )
    return RolloutServing(engine=engine, args=_pointing_at(args, server), server=server)


def _pointing_at(args: Config, server: ServerHandle) -> Config:
    return args.replace(sglang_router_ip=server.host, sglang_router_port=server.port)
