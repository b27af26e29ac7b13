"""Router over engine replicas: least-active routing, health checks, and a middleware chain.

- :class:`Router`: routes SGLang /generate requests over engine URLs and/or in-process engines;
  it is itself an ``InferenceEngine``.
- :class:`PrefixCacheMiddleware`: the reference ``RouterMiddleware`` (radix-tree prefix
  accounting, reply cache for repeated greedy requests).
- :func:`start_router_server`: serve a Router over SGLang's HTTP API (what
  ``args.sglang_router_ip`` / ``args.sglang_router_port`` point at).
- :func:`serve_rollout`: what the Trainer calls to honour ``rollout_engine`` / ``use_miles_router``.
"""

from __future__ import annotations

from miles_sdk.router._workers import UpstreamError
from miles_sdk.router.prefix_cache import PrefixCacheMiddleware, PrefixCacheStats, RadixTree
from miles_sdk.router.router import (
    ROUTE_TO,
    NoHealthyWorkerError,
    Router,
    RouterError,
    SupportsInvalidate,
    WorkerStatus,
)
from miles_sdk.router.server import build_router_app, start_router_server
from miles_sdk.router.serving import RolloutServing, serve_rollout

__all__ = [
    "ROUTE_TO",
    "NoHealthyWorkerError",
    "PrefixCacheMiddleware",
    "PrefixCacheStats",
    "RadixTree",
    "RolloutServing",
    "Router",
    "RouterError",
    "SupportsInvalidate",
    "UpstreamError",
    "WorkerStatus",
    "build_router_app",
    "serve_rollout",
    "start_router_server",
]
