"""Our SGLang-compatible server: a Miles generate function runs against it unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import attrs
import pytest
from transformers import PreTrainedTokenizerFast

from miles_sdk.config import Config
from miles_sdk.engines.http_server import ServerHandle, start_server
from miles_sdk.testing import ScriptedEngine
from miles_sdk.testing.tiny import tiny_tokenizer
from miles_sdk.types import Sample


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


# ---- a custom generate function exactly as a Miles user writes it (--custom-generate-function-path)


async def miles_generate(args: Any, sample: Sample, sampling_params: dict[str, Any]) -> Sample:
    from miles_sdk.testing.tiny import (
        tiny_tokenizer as load_tokenizer,  # users load theirs from args.hf_checkpoint
    )

    tokenizer = load_tokenizer()
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"
    prompt_ids = tokenizer.encode(sample.prompt, add_special_tokens=False)
    payload = {"input_ids": prompt_ids, "sampling_params": sampling_params, "return_logprob": True}
    async with aiohttp.ClientSession() as session, session.post(url, json=payload) as resp:
        resp.raise_for_status()
        output = await resp.json()
    new_tokens = [item[1] for item in output["meta_info"]["output_token_logprobs"]]
    new_log_probs = [item[0] for item in output["meta_info"]["output_token_logprobs"]]
    sample.tokens = prompt_ids + new_tokens
    sample.response_length = len(new_tokens)
    sample.response = output["text"]
    sample.rollout_log_probs = new_log_probs
    match output["meta_info"]["finish_reason"]["type"]:
        case "length":
            sample.status = Sample.Status.TRUNCATED
        case "abort":
            sample.status = Sample.Status.ABORTED
        case "stop":
            sample.status = Sample.Status.COMPLETED
    return sample


async def _post(
    url: str, body: object, method: str = "POST", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body if method == "POST" else None, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_miles_generate_function_runs_unchanged(tok: PreTrainedTokenizerFast) -> None:
    engine = ScriptedEngine(
        {"1+1=": "2 apples"}, tokenizer=tok, log_probs=[-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]
    )
    async with await start_server(engine, tok) as server:
        args = attrs.evolve(Config(), sglang_router_ip="127.0.0.1", sglang_router_port=server.port)
        sample = await miles_generate(args, Sample(prompt="1+1="), {"temperature": 1.0, "max_new_tokens": 5})
    assert sample.response == "2 app"  # 5 byte-level tokens of "2 apples"
    assert sample.status is Sample.Status.TRUNCATED
    assert sample.rollout_log_probs == [-0.1, -0.2, -0.3, -0.4, -0.5]
    assert sample.tokens[: sample.prompt_length] == tok.encode("1+1=", add_special_tokens=False)
    assert sample.tokens[sample.prompt_length :] == tok.encode("2 app", add_special_tokens=False)
    assert engine.requests[0].sampling_params == {"temperature": 1.0, "max_new_tokens": 5}


async def test_reply_shape_and_text_input(tok: PreTrainedTokenizerFast) -> None:
    engine = ScriptedEngine("ok", tokenizer=tok)
    async with await start_server(engine, tok) as server:
        status, reply = await _post(
            f"{server.url}/generate", {"text": "hi", "sampling_params": {"temperature": 0}}
        )
    assert status == 200
    assert reply["text"] == "ok"
    assert reply["output_ids"] == tok.encode("ok", add_special_tokens=False)
    meta = reply["meta_info"]
    assert meta["finish_reason"]["type"] == "stop"
    assert meta["prompt_tokens"] == len(tok.encode("hi")) and meta["completion_tokens"] == 2
    assert meta["weight_version"] == "0"
    assert "output_token_logprobs" not in meta  # return_logprob not asked for
    assert engine.requests[0].input_ids == tok.encode("hi")


async def test_batch_requests_answer_in_order() -> None:
    engine = ScriptedEngine(lambda ids: [int(ids[0]) * 10])
    async with await start_server(engine) as server:
        status, replies = await _post(
            f"{server.url}/generate",
            {
                "input_ids": [[1], [2], [3]],
                "sampling_params": [{"max_new_tokens": 1}] * 3,
                "return_logprob": True,
            },
        )
    assert status == 200
    assert [r["output_ids"] for r in replies] == [[10], [20], [30]]
    assert [r["meta_info"]["output_token_logprobs"] for r in replies] == [
        [[-0.5, 10, None]],
        [[-0.5, 20, None]],
        [[-0.5, 30, None]],
    ]


async def test_bad_requests_name_the_culprit() -> None:
    engine = ScriptedEngine([5])
    async with await start_server(engine) as server:
        status, reply = await _post(
            f"{server.url}/generate", {"input_ids": [1], "sampling_params": {"min_p": 0.3}}
        )
        assert status == 400 and "'min_p'" in reply["error"]["message"]
        # neutral values of SGLang-only keys pass (Miles sends some of these)
        status, _ = await _post(
            f"{server.url}/generate",
            {"input_ids": [1], "sampling_params": {"n": 1, "spaces_between_special_tokens": False}},
        )
        assert status == 200
        status, reply = await _post(f"{server.url}/generate", {"text": "no tokenizer"})
        assert status == 400 and "tokenizer" in reply["error"]["message"]
        status, reply = await _post(f"{server.url}/generate", {"input_ids": ["a"]})
        assert status == 400 and "input_ids" in reply["error"]["message"]
        status, reply = await _post(f"{server.url}/abort_request", {"rid": "r1"}, headers=server.auth_headers)
        assert status == 400


async def test_abort_returns_partial_tokens() -> None:
    engine = ScriptedEngine(list(range(1, 50)), delays=0.05)
    async with await start_server(engine) as server:
        task = asyncio.create_task(
            _post(f"{server.url}/generate", {"input_ids": [1], "return_logprob": True})
        )
        while not engine.requests or engine.in_flight == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.12)
        status, _ = await _post(f"{server.url}/abort_request", {"abort_all": True}, headers=server.auth_headers)
        assert status == 200
        _, reply = await task
    assert reply["meta_info"]["finish_reason"]["type"] == "abort"
    assert 0 < len(reply["output_ids"]) < 49
    assert engine.abort_calls == 1


async def test_admin_endpoints(tmp_path: Any) -> None:
    engine = ScriptedEngine([5])
    loaded: list[str] = []
    server: ServerHandle = await start_server(engine, model_path="tiny", load_weights_from_disk=loaded.append)
    try:
        assert (await _post(f"{server.url}/health", None, "GET"))[0] == 200
        _, info = await _post(f"{server.url}/get_model_info", None, "GET")
        assert info["model_path"] == "tiny" and info["is_generation"] is True
        auth = server.auth_headers
        _, reply = await _post(f"{server.url}/update_weight_version", {"new_version": "7"}, headers=auth)
        assert reply["success"] is True and engine.weight_version == 7
        _, reply = await _post(
            f"{server.url}/update_weights_from_disk", {"model_path": str(tmp_path)}, headers=auth
        )
        assert reply["success"] is True and loaded == [str(tmp_path)] and engine.weight_version == 8
        _, reply = await _post(f"{server.url}/generate", {"input_ids": [1]})
        assert reply["meta_info"]["weight_version"] == "8"
        assert (await _post(f"{server.url}/flush_cache", {}, headers=auth))[0] == 200
    finally:
        await server.close()


async def test_server_decodes_like_sglang(tok: PreTrainedTokenizerFast) -> None:
    eos = tok.eos_token_id
    assert isinstance(eos, int) and isinstance(tok.eos_token, str)
    engine = ScriptedEngine([104, 105, eos])  # no tokenizer: the engine returns no text
    async with await start_server(engine, tok) as server:
        _, default = await _post(f"{server.url}/generate", {"input_ids": [1]})
        _, kept = await _post(
            f"{server.url}/generate", {"input_ids": [1], "sampling_params": {"skip_special_tokens": False}}
        )
    assert default["text"] == "hi"  # SGLang skips special tokens unless told not to
    assert kept["text"] == "hi" + tok.eos_token
