"""The SGLang servers a ``rollout_engine="http"`` run uses (Miles's ``--rollout-external
--rollout-external-engine-addrs``, or ``sglang_router_ip``/``sglang_router_port``), checked when
the Trainer starts, before any weights load:

- every server answers ``GET /health`` within ``rollout_external_wait_timeout`` seconds (a server
  still loading is waited for), else the start fails naming each one and its flag;
- the address they reach this process at for the weight update group
  (``weight_sync_master_address``, else ``MILES_HOST_IP``) is an address of this machine, and
  not loopback while a server is on another host.
"""

from __future__ import annotations

import os

from miles_sdk.config import Config, ConfigError
from miles_sdk.engines.http_client import normalize_url
from miles_sdk.engines.server_probe import ProbedServer, wait_for_servers
from miles_sdk.engines.weight_group import GroupJoinError, check_master_address

__all__ = ["HOST_IP_ENV", "check_engine_servers", "check_external_servers", "external_servers", "master_address"]

HOST_IP_ENV = "MILES_HOST_IP"
"""Miles's environment variable for this host's address as other machines reach it."""

_ADDRS = "rollout_external_engine_addrs (--rollout-external-engine-addrs)"
_ROUTER = "sglang_router_ip/sglang_router_port (--sglang-router-ip/--sglang-router-port)"
_MASTER = "weight_sync_master_address (--weight-sync-master-address)"


def external_servers(args: Config) -> list[ProbedServer]:
    """Each server a ``rollout_engine="http"`` run sends requests to, with the flag naming it."""
    if args.rollout_engine != "http":
        return []
    servers = [ProbedServer(normalize_url(a), _ADDRS) for a in args.rollout_external_engine_addrs or []]
    if args.sglang_router_ip and args.sglang_router_port:
        url = normalize_url(f"{args.sglang_router_ip}:{args.sglang_router_port}")
        if url not in {s.url for s in servers}:
            servers.append(ProbedServer(url, _ROUTER))
    return servers


def master_address(args: Config) -> tuple[str, str] | None:
    """The weight update group's master address for servers and the setting that gave it:
    ``weight_sync_master_address``, else ``MILES_HOST_IP``; None: picked from the route to them."""
    if args.weight_sync_master_address is not None:
        return args.weight_sync_master_address, _MASTER
    from_env = os.environ.get(HOST_IP_ENV, "").strip()
    if from_env:
        return from_env, f"{HOST_IP_ENV} (environment variable)"
    return None


def check_external_servers(args: Config) -> None:
    """Fail now, naming the setting, when a server is down or the master address cannot work."""
    servers = external_servers(args)
    chosen = master_address(args) if args.weight_sync_method == "distributed" else None
    # The flag is checked whatever the engine (an HttpEngine passed as engine= uses it too); the
    # environment variable, which may be set for Miles's other uses, only where servers take it.
    if chosen is not None and (args.weight_sync_master_address is not None or servers):
        address, named_by = chosen
        try:
            check_master_address(address, named_by=named_by, servers=[s.url for s in servers])
        except GroupJoinError as e:
            raise ConfigError(str(e)) from None
    wait_for_servers(servers, wait=args.rollout_external_wait_timeout, api_key=args.sglang_api_key)


def check_engine_servers(args: Config, engine: object) -> None:
    """An :class:`~miles_sdk.engines.http_client.HttpEngine` passed as ``Trainer(engine=...)``:
    each of its servers answers before the weights load, as the servers the Config names do."""
    from miles_sdk.engines.http_client import HttpEngine

    if not isinstance(engine, HttpEngine):
        return
    listed = "the HttpEngine passed as Trainer(engine=...)"
    wait_for_servers(
        [ProbedServer(url, listed) for url in engine.urls],
        wait=args.rollout_external_wait_timeout,
        api_key=engine.api_key,
        what="Trainer(engine=HttpEngine(...))",
    )
