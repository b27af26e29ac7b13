"""The address external servers reach the trainer at for the weight update group (issue 18).

SGLang's ``/init_weights_update_group`` takes ``master_address``: where the group's store (on
the trainer) listens. Miles passes Ray's node address and has no flag for it; here
``weight_sync_master_address`` (``--weight-sync-master-address``) or the ``MILES_HOST_IP``
environment variable (Miles's override of this host's address) sets it, else it is picked from
the route to the first remote server. A malformed value is a ConfigError naming the flag; one
that is not an address of this machine, or loopback with remote servers, fails the Trainer's
start before any weights load.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest

import miles_sdk.trainer
from miles_sdk import Config, ConfigError, Sample, Trainer
from miles_sdk._external import HOST_IP_ENV
from miles_sdk._loop import LoopThread
from miles_sdk.engines.embedded import EmbeddedEngine
from miles_sdk.engines.http_server import EngineService, ServerHandle, build_app, serve_app
from miles_sdk.engines.weight_group import WeightGroupReceiver
from miles_sdk.testing.tiny import tiny_policy

TOKEN = "test-master-address-token"
DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


@pytest.mark.parametrize(
    ("address", "wrong"),
    [
        ("http://10.0.0.1", "is not an IP address or host name"),
        ("10.0.0.1:29500", "is not an IP address or host name"),
        ("", "is not an IP address or host name"),
        ("two words", "is not an IP address or host name"),
        ("0.0.0.0", "is not an address the servers can connect to"),
    ],
)
def test_a_malformed_master_address_is_named_with_the_flag(address: str, wrong: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_args(["--weight-sync-method", "distributed", "--weight-sync-master-address", address])
    assert "--weight-sync-master-address" in str(info.value) and wrong in str(info.value), str(info.value)


def test_a_master_address_without_the_group_sync_is_refused() -> None:
    with pytest.raises(ConfigError, match="weight_sync_method is 'disk'"):
        Config.from_args(["--weight-sync-master-address", "10.0.0.1"])


@pytest.mark.parametrize("address", ["10.0.0.1", "trainer-0.cluster.local", "localhost", "fd00::1"])
def test_an_address_or_host_name_is_accepted(address: str) -> None:
    config = Config.from_args(["--weight-sync-method", "distributed", "--weight-sync-master-address", address])
    assert config.weight_sync_master_address == address


async def some_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.tokens[-4:]) % 2)


@attrs.define
class _Told(EngineService):
    """Records the master address each /init_weights_update_group tells it, then joins."""

    told: list[str] = attrs.Factory(list)

    async def init_weights_update_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.told.append(str(payload["master_address"]))
        return await super().init_weights_update_group(payload)


@pytest.fixture
def told_server() -> Iterator[tuple[_Told, ServerHandle]]:
    model, tok = tiny_policy("unit", seed=0)
    loop = LoopThread()  # the server's own loop, as a process of its own would have
    engine = EmbeddedEngine(copy.deepcopy(model), tok, max_batch_size=8)
    service = _Told(engine, tok, weight_groups=WeightGroupReceiver())
    handle = loop.run(serve_app(build_app(service, api_key=TOKEN), "127.0.0.1", 0, api_key=TOKEN))
    yield service, handle
    loop.run(handle.close())
    loop.close()
    engine.close()


def _flags(url: str, *extra: str) -> list[str]:
    return [
        *["--rollout-external", "--rollout-external-engine-addrs", url.removeprefix("http://")],
        *["--sglang-api-key", TOKEN, "--weight-sync-method", "distributed", *extra],
        *["--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4"],
        *["--label-key", "label", "--device", "cpu", "--no-progress-bar", "--micro-batch-size", "2"],
    ]


@pytest.mark.parametrize("given_by", ["flag", "env", "neither"])
def test_the_address_given_is_the_one_the_servers_are_told(
    told_server: tuple[_Told, ServerHandle], given_by: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """127.0.0.2 is this machine's too (all of 127/8 is loopback) but is never picked by itself
    (servers on this machine are told 127.0.0.1), so it tells which address reached them."""
    service, handle = told_server
    monkeypatch.delenv(HOST_IP_ENV, raising=False)
    extra: list[str] = []
    if given_by == "flag":
        extra = ["--weight-sync-master-address", "127.0.0.2"]
    elif given_by == "env":
        monkeypatch.setenv(HOST_IP_ENV, "127.0.0.2")
    model, tok = tiny_policy("unit", seed=0)
    config = Config.from_args(_flags(handle.url, *extra))
    with Trainer(config, model=model, tokenizer=tok, reward_model=some_reward, dataset=DATASET) as trainer:
        trainer._weight_sync.sync()  # what a step's sync does
        assert trainer._weight_sync._tmp is None, "the sync went through the disk, not the group"
    assert service.told == ["127.0.0.1" if given_by == "neither" else "127.0.0.2"]
    assert service.engine.weight_version == 1


def _no_weights(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the weights started loading before the master address was checked")


@pytest.mark.parametrize(
    ("address", "wrong"),
    [
        ("192.0.2.1", "'192.0.2.1' (192.0.2.1) is not an address of this machine"),
        ("127.0.0.1", "is a loopback address, which the servers on other hosts (http://10.0.0.2:30000) cannot reach"),
    ],
)
def test_an_address_the_servers_cannot_use_fails_the_start_before_the_weights_load(
    address: str, wrong: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(miles_sdk.trainer, "build_policy", _no_weights)
    config = Config.from_args(
        [
            *["--rollout-external", "--rollout-external-engine-addrs", "10.0.0.2:30000", "--rm-type", "math"],
            *["--weight-sync-method", "distributed", "--weight-sync-master-address", address],
            *["--n-samples-per-prompt", "2", "--label-key", "label"],
        ]
    )
    _, tok = tiny_policy("unit", seed=0)
    with pytest.raises(ConfigError) as info:
        Trainer(config, tokenizer=tok, dataset=DATASET)
    message = str(info.value)
    assert message.startswith("weight_sync_master_address (--weight-sync-master-address): "), message
    assert wrong in message, message


def test_the_environment_variable_is_checked_and_named_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(miles_sdk.trainer, "build_policy", _no_weights)
    monkeypatch.setenv(HOST_IP_ENV, "192.0.2.1")
    config = Config.from_args(
        [
            *["--rollout-external", "--rollout-external-engine-addrs", "10.0.0.2:30000", "--rm-type", "math"],
            *["--weight-sync-method", "distributed", "--n-samples-per-prompt", "2", "--label-key", "label"],
        ]
    )
    _, tok = tiny_policy("unit", seed=0)
    with pytest.raises(ConfigError, match=rf"^{HOST_IP_ENV} \(environment variable\): '192.0.2.1'"):
        Trainer(config, tokenizer=tok, dataset=DATASET)


def test_the_environment_variable_is_not_checked_without_servers_to_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    """MILES_HOST_IP may be set for Miles's router and engines; a run without external servers
    (engine replicas, which are told loopback) does not fail on it."""
    monkeypatch.setattr(miles_sdk.trainer, "build_policy", _no_weights)
    monkeypatch.setenv(HOST_IP_ENV, "192.0.2.1")
    config = Config.from_args(["--weight-sync-method", "distributed", "--n-samples-per-prompt", "2", "--rm-type", "math"])
    _, tok = tiny_policy("unit", seed=0)
    with pytest.raises(AssertionError, match="the weights started loading"):
        Trainer(config, tokenizer=tok, dataset=DATASET)
