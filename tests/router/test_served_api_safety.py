"""The served HTTP API under misuse: only the run steers it (16.6), big or many requests cannot
stall it (16.7), client mistakes answer 400 with the field named (16.8), and served generation
never runs while the trainer updates the shared model (13.10)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import pytest

from miles_sdk import Config, Trainer
from miles_sdk.compat.miles.utils import http_utils
from miles_sdk.engines import http_server
from miles_sdk.engines.http_server import GenerationGate, ServerLimits, start_server
from miles_sdk.router import Router, start_router_server
from miles_sdk.testing import ScriptedEngine, small_config, tiny_policy
from miles_sdk.testing.tiny import tiny_tokenizer


async def _post(url: str, body: object = None, *, raw: bytes | None = None, headers: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with session.post(url, headers=headers, **kwargs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


# ---- 16.6: control endpoints need the run's token ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/abort_request", {"abort_all": True}),
        ("/update_weight_version", {"new_version": "9"}),
        ("/update_weights_from_disk", {"model_path": "/tmp/x"}),
        ("/flush_cache", {}),
    ],
)
async def test_engine_control_endpoints_need_the_token(path: str, body: dict[str, Any]) -> None:
    engine = ScriptedEngine([5])
    async with await start_server(engine) as server:
        status, reply = await _post(server.url + path, body)
        assert status == 401 and "Authorization" in reply["error"]["message"]
        status, _ = await _post(server.url + path, body, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        assert (await _post(server.url + "/generate", {"input_ids": [1]}))[0] == 200  # generation stays open
    assert engine.abort_calls == 0 and engine.weight_version == 0


async def test_router_workers_cannot_be_added_or_removed_without_the_token() -> None:
    router = Router([ScriptedEngine([5])], health_check_interval=None)
    async with await start_router_server(router) as server:
        status, _ = await _post(server.url + "/add_worker", {"url": "http://10.0.0.9:1"})
        assert status == 401 and len(router.workers) == 1
        status, _ = await _post(server.url + "/remove_worker", {"url": router.workers[0].name})
        assert status == 401 and len(router.workers) == 1
        status, _ = await _post(server.url + "/abort_request", {"abort_all": True})
        assert status == 401
        status, _ = await _post(server.url + "/some_engine_endpoint", {})  # proxied POSTs too
        assert status == 401
        status, _ = await _post(server.url + "/add_worker", {"url": "http://10.0.0.9:1"}, headers=server.auth_headers)
        assert status == 200 and len(router.workers) == 2
        status, _ = await _post(server.url + "/remove_worker", {"url": "http://10.0.0.9:1"}, headers=server.auth_headers)
        assert status == 200 and len(router.workers) == 1
    await router.close()


async def test_in_process_miles_hooks_send_the_token_by_themselves() -> None:
    """A Miles hook posting to args.sglang_router_ip:port through miles.utils.http_utils runs unchanged."""
    engine = ScriptedEngine([5])
    async with await start_server(engine) as server:
        reply = await http_utils.post(f"http://127.0.0.1:{server.port}/abort_request", {"abort_all": True})
        assert reply == {"success": True} and engine.abort_calls == 1


async def test_a_public_bind_needs_a_user_token() -> None:
    with pytest.raises(ValueError, match="sglang_api_key"):
        await start_server(ScriptedEngine([5]), host="0.0.0.0")
    with pytest.raises(ValueError, match="sglang_api_key"):
        await start_router_server(Router([ScriptedEngine([5])], health_check_interval=None), host="0.0.0.0")
    async with await start_server(ScriptedEngine([5]), host="0.0.0.0", api_key="user-token") as server:
        assert server.api_key == "user-token"


# ---- 16.7: bounded bodies, concurrency and context; parsing off the loop -------------------------


async def test_a_body_over_the_limit_is_refused_before_parsing() -> None:
    async with await start_server(ScriptedEngine([5]), limits=ServerLimits(max_body_bytes=4096)) as server:
        status, reply = await _post(server.url + "/generate", raw=b'{"input_ids": [' + b"1," * 5000 + b"1]}")
    assert status == 413


def test_the_default_body_limit_is_sized_from_the_context() -> None:
    assert ServerLimits.for_context(4096).max_body_bytes < 8 * 1024**2 < 64 * 1024**2  # was 64 MB
    assert ServerLimits.for_context(4096, max_body_bytes=10_000).max_body_bytes == 10_000


async def test_requests_over_the_concurrency_limit_get_503() -> None:
    engine = ScriptedEngine([5], delays=0.3)
    limits = ServerLimits(max_concurrent_requests=2)
    async with await start_server(engine, limits=limits) as server:
        replies = await asyncio.gather(*(_post(server.url + "/generate", {"input_ids": [1]}) for _ in range(4)))
    statuses = sorted(s for s, _ in replies)
    assert statuses == [200, 200, 503, 503]
    assert "busy" in next(r for s, r in replies if s == 503)["error"]["message"]


class _CountingTokenizer:
    """The tiny tokenizer, counting the characters it is asked to encode."""

    def __init__(self) -> None:
        self.inner = tiny_tokenizer()
        self.chars = 0

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        self.chars += len(text)
        return list(self.inner.encode(text, add_special_tokens=False))

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return str(self.inner.decode(ids, **kwargs))

    def __len__(self) -> int:
        return len(self.inner)


async def test_a_prompt_over_the_context_is_refused_without_tokenising_it_all() -> None:
    tok = _CountingTokenizer()
    engine = ScriptedEngine([5])
    async with await start_server(engine, tok, max_context_len=64) as server:  # type: ignore[arg-type]
        status, reply = await _post(server.url + "/generate", {"input_ids": [1] * 64})
        assert status == 400 and "64" in reply["error"]["message"]
        status, reply = await _post(server.url + "/generate", {"text": "x" * 200_000})
        assert status == 400 and "context" in reply["error"]["message"]
        assert tok.chars < 200_000 / 10  # a prefix, not the whole prompt
        assert (await _post(server.url + "/generate", {"text": "1+1="}))[0] == 200
    assert len(engine.requests) == 1


async def test_large_bodies_are_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = http_server._parse_json

    def recording(raw: bytes) -> object:
        threads.append(threading.get_ident())
        return real(raw)

    monkeypatch.setattr(http_server, "_parse_json", recording)
    async with await start_server(ScriptedEngine([5])) as server:
        status, _ = await _post(server.url + "/generate", {"input_ids": [1], "pad": "x" * 200_000})
    assert status == 200 and threads and threads[0] != threading.get_ident()


# ---- 16.8: client mistakes are 400 with the field named ------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input_ids": [1, -3]}, "input_ids[1]"),
        ({"input_ids": [1, 10**9]}, "input_ids[1]"),
        ({"input_ids": [1], "sampling_params": {"temperature": -1}}, "temperature"),
        ({"input_ids": [1], "sampling_params": {"temperature": float("nan")}}, "temperature"),
        ({"input_ids": [1], "sampling_params": {"temperature": "hot"}}, "temperature"),
        ({"input_ids": [1], "sampling_params": {"top_p": 0}}, "top_p"),
        ({"input_ids": [1], "sampling_params": {"top_p": 1.5}}, "top_p"),
        ({"input_ids": [1], "sampling_params": {"top_k": 0}}, "top_k"),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": -2}}, "max_new_tokens"),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": 1.5}}, "max_new_tokens"),
        ({"input_ids": [1], "sampling_params": {"stop": [3]}}, "stop"),
        ({"input_ids": [1], "sampling_params": {"stop_token_ids": [-1]}}, "stop_token_ids"),
        ({"input_ids": [1], "sampling_params": {"ignore_eos": "yes"}}, "ignore_eos"),
    ],
)
async def test_bad_requests_answer_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    engine = ScriptedEngine([5])
    async with await start_server(engine, tiny_tokenizer()) as server:
        raw = json.dumps(body).encode()  # NaN goes over the wire as SGLang clients send it
        status, reply = await _post(server.url + "/generate", raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400, reply
    assert field in reply["error"]["message"]
    assert not engine.requests


async def test_deep_nesting_is_a_400() -> None:
    async with await start_server(ScriptedEngine([5])) as server:
        raw = b'{"input_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, reply = await _post(server.url + "/generate", raw=raw)
    assert status == 400 and "nest" in reply["error"]["message"]


# ---- 13.10: served generation waits while the trainer holds the model ----------------------------


async def test_the_gate_holds_requests_and_refuses_them_past_its_timeout() -> None:
    engine = ScriptedEngine([5])
    gate = GenerationGate(wait_timeout=0.2)
    async with await start_server(engine, gate=gate) as server:
        await gate.close()
        status, reply = await _post(server.url + "/generate", {"input_ids": [1]})
        assert status == 503 and "train step" in reply["error"]["message"]
        gate.wait_timeout = 30.0
        waiting = asyncio.create_task(_post(server.url + "/generate", {"input_ids": [1]}))
        await asyncio.sleep(0.2)
        assert not waiting.done() and not engine.requests
        await gate.open()
        assert (await waiting)[0] == 200
    assert len(engine.requests) == 1


async def _one(args: Config, sample: Any) -> float:
    return 1.0


def test_served_generate_never_runs_during_the_train_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code served /generate on the loop thread while backend.train ran on the same module."""
    model, tok = tiny_policy("unit", seed=0)
    engine = ScriptedEngine("1", tokenizer=tok)
    rows = [{"input": "1+1=", "label": "2"}] * 4
    cfg: Config = small_config(serve_http=True)
    with Trainer(cfg, model=model, tokenizer=tok, engine=engine, dataset=rows, reward_model=_one) as trainer:
        url = f"http://{trainer.args.sglang_router_ip}:{trainer.args.sglang_router_port}/generate"
        real_train = trainer.backend.train
        seen: dict[str, Any] = {}

        def train(rollout_id: int, data: Any) -> Any:
            before = len(engine.requests)
            client = threading.Thread(target=lambda: seen.update(reply=asyncio.run(_post(url, {"input_ids": [1]}))))
            client.start()
            client.join(timeout=0.5)  # long enough for the request to be served if nothing holds it
            seen["served_during_train"] = len(engine.requests) > before
            seen["client"] = client
            return real_train(rollout_id, data)

        monkeypatch.setattr(trainer.backend, "train", train)
        trainer.step()
        seen["client"].join(timeout=30)
    assert seen["served_during_train"] is False
    assert seen["reply"][0] == 200
