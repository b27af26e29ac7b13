"""The shim modules one by one: http_utils, async_utils, misc, rm_hub, filter_hub, sglang_rollout."""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from miles_sdk.compat import install
from miles_sdk.config import Config
from miles_sdk.engines.http_server import start_server
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.testing import small_config
from miles_sdk.testing.engine import ScriptedEngine
from miles_sdk.types import DynamicFilterOutput, Sample

install()

from miles.rollout.filter_hub.base_types import MetricGatherer, call_dynamic_filter
from miles.rollout.rm_hub import async_rm, batched_async_rm
from miles.rollout.rm_hub.math_dapo_utils import compute_score
from miles.rollout.rm_hub.math_utils import extract_answer, grade_answer_verl
from miles.rollout.sglang_rollout import GenerateState, generate, get_model_url
from miles.utils.async_utils import run
from miles.utils.http_utils import HttpRequestError, get, post
from miles.utils.misc import load_function


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- http_utils ---------------------------------------------------------------------------------


async def test_post_returns_the_sglang_reply_with_logprobs() -> None:
    engine = ScriptedEngine([5, 6, 7], log_probs=[-0.1, -0.2, -0.3])
    async with await start_server(engine) as server:
        reply = await post(
            f"{server.url}/generate",
            {"input_ids": [1, 2], "return_logprob": True, "sampling_params": {"max_new_tokens": 8}},
        )
        info = await get(f"{server.url}/get_model_info")
    assert reply["output_ids"] == [5, 6, 7]
    assert reply["meta_info"]["output_token_logprobs"] == [[-0.1, 5, None], [-0.2, 6, None], [-0.3, 7, None]]
    assert reply["meta_info"]["finish_reason"]["type"] == "stop"
    assert isinstance(info, dict)
    assert engine.requests[0].input_ids == [1, 2]


async def test_post_fails_fast_on_a_client_error_naming_the_url() -> None:
    async with await start_server(ScriptedEngine([1])) as server:
        with pytest.raises(HttpRequestError, match=r"POST http://.*/generate failed: HTTP 400"):
            await post(f"{server.url}/generate", {"input_ids": "not ids"}, max_retries=5)


async def test_post_retries_connection_errors_then_gives_up() -> None:
    url = f"http://127.0.0.1:{_free_port()}/generate"
    with pytest.raises(HttpRequestError, match=r"failed after 3 attempt\(s\)") as info:
        await post(url, {"input_ids": [1]}, max_retries=3)
    assert url in str(info.value)


async def test_post_succeeds_once_the_server_comes_up() -> None:
    port = _free_port()

    async def start_late() -> Any:
        await asyncio.sleep(0.2)
        return await start_server(ScriptedEngine([9]), port=port)

    starting = asyncio.create_task(start_late())
    reply = await post(f"http://127.0.0.1:{port}/generate", {"input_ids": [1]}, max_retries=30)
    await (await starting).close()
    assert reply["output_ids"] == [9]


# ---- async_utils / misc -------------------------------------------------------------------------


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_run_blocks_on_a_coroutine_from_sync_code() -> None:
    assert run(_double(21)) == 42


async def test_run_inside_a_running_loop_raises_instead_of_deadlocking() -> None:
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        run(_double(1))


def test_load_function_takes_dots_and_colons(tmp_path: Path) -> None:
    (tmp_path / "lf_mod.py").write_text(
        textwrap.dedent("""
        class Box:
            def inner(self):
                return 1

        async def coro(args):
            return 1
    """)
    )
    sys.path.insert(0, str(tmp_path))
    try:
        assert load_function("lf_mod.Box").__name__ == "Box"
        assert load_function("lf_mod:Box.inner").__qualname__ == "Box.inner"
        assert load_function(None) is None and load_function("") is None
        with pytest.raises(ValueError, match="async function"):
            load_function("lf_mod.coro", sync_required=True)
        with pytest.raises(AttributeError, match="has no attribute 'missing'"):
            load_function("lf_mod.missing")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lf_mod", None)


# ---- rm_hub -------------------------------------------------------------------------------------


def test_math_utils_grade_like_miles() -> None:
    assert extract_answer("no box here") is None
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert grade_answer_verl("so \\boxed{\\frac{1}{2}}", "0.5") is True
    assert grade_answer_verl("so \\boxed{3}", "\\boxed{3}") is True
    assert grade_answer_verl("so 3", "3") is False
    assert grade_answer_verl("\\boxed{3}", "") is False


def test_dapo_compute_score() -> None:
    assert compute_score("... Answer: 12", "12") == {"score": 1.0, "acc": True, "pred": "12"}
    assert compute_score("... Answer: 11", "12")["score"] == -1.0
    assert compute_score("thus \\boxed{12}", "12", strict_box_verify=True)["acc"] is True


async def test_async_rm_uses_the_builtin_rm_type() -> None:
    args = small_config(rm_type="math")
    right = Sample(response="it is \\boxed{4}", label="4")
    wrong = Sample(response="it is \\boxed{5}", label="4")
    assert await async_rm(args, right) == 1.0
    assert await async_rm(args, wrong) == 0.0
    assert await batched_async_rm(args, [right, wrong]) == [1.0, 0.0]


async def test_custom_rm_path_wins_and_batched_gets_the_list(tmp_path: Path) -> None:
    (tmp_path / "rm_mod.py").write_text(
        textwrap.dedent("""
        async def one(args, sample, **kwargs):
            return 10.0 + kwargs.get("bonus", 0)

        async def many(args, samples, **kwargs):
            return [float(i) for i, _ in enumerate(samples)]
    """)
    )
    sys.path.insert(0, str(tmp_path))
    try:
        assert await async_rm(small_config(custom_rm_path="rm_mod.one"), Sample(), bonus=1) == 11.0
        samples = [Sample(index=i) for i in range(3)]
        args = small_config(custom_rm_path="rm_mod.many", group_rm=True)
        assert await batched_async_rm(args, samples) == [0.0, 1.0, 2.0]
        assert await batched_async_rm(args, samples, inplace_set_reward_field=True) is None
        assert [s.reward for s in samples] == [0.0, 1.0, 2.0]
        with pytest.raises(AssertionError, match="Overriding sample.reward .* sample index=0"):
            await batched_async_rm(args, samples, inplace_set_reward_field=True)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rm_mod", None)


async def test_rm_inside_a_trainer_context_uses_its_reward_objects() -> None:
    async def rm(args: Config, sample: Sample) -> float:
        return 7.0

    async def batched(args: Config, samples: list[Sample]) -> list[float]:
        return [1.0] * len(samples)

    with use_rollout_context(RolloutContext(engine=ScriptedEngine([1]), reward_fn=rm)):
        assert await async_rm(small_config(), Sample()) == 7.0
        assert await batched_async_rm(small_config(), [Sample(), Sample()]) == [7.0, 7.0]
    with use_rollout_context(RolloutContext(engine=ScriptedEngine([1]), batched_reward_fn=batched)):
        assert await batched_async_rm(small_config(), [Sample(), Sample()]) == [1.0, 1.0]


# ---- filter_hub ---------------------------------------------------------------------------------


def test_call_dynamic_filter_and_metric_gatherer() -> None:
    assert call_dynamic_filter(None, 1) == DynamicFilterOutput(keep=True)
    assert call_dynamic_filter(lambda args, samples: False, None, []) == DynamicFilterOutput(keep=False)
    verdict = DynamicFilterOutput(keep=False, reason="zero_std_1.0")
    assert call_dynamic_filter(lambda args, samples: verdict, None, []) is verdict
    gatherer = MetricGatherer()
    for reason in ("zero_std_1.0", "zero_std_1.0", None, "too_long"):
        gatherer.on_dynamic_filter_drop(reason)
    assert gatherer.collect() == {
        "rollout/dynamic_filter/drop_zero_std_1.0": 2,
        "rollout/dynamic_filter/drop_too_long": 1,
    }


def test_get_reward_value_accepts_args_as_miles_code_passes_it() -> None:
    assert Sample(reward={"score": 0.5}).get_reward_value(small_config(reward_key="score")) == 0.5
    assert Sample(reward=1.0).get_reward_value(small_config()) == 1.0


# ---- sglang_rollout -----------------------------------------------------------------------------


class _CharTok:
    def encode(self, text: str, /, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: list[int], /, *, skip_special_tokens: bool = False) -> str:
        return "".join(chr(t) for t in token_ids)

    def apply_chat_template(self, conversation: list[dict[str, str]], /, **kwargs: Any) -> object:
        return "".join(m["content"] for m in conversation)


def test_generate_state_is_one_per_args_and_builds_miles_sampling_params() -> None:
    tok = _CharTok()
    args = small_config(
        rollout_temperature=0.7,
        rollout_stop=["</a>"],
        sglang_server_concurrency=3,
        sglang_enable_deterministic_inference=True,
        rollout_seed=5,
    )
    state = GenerateState(args)
    assert GenerateState(args) is state
    assert GenerateState(small_config()) is not state
    with use_rollout_context(RolloutContext(engine=ScriptedEngine([1]), tokenizer=tok)):
        assert state.tokenizer is tok
    assert state.tokenizer is tok  # resolved once
    assert state.sampling_params == {
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": -1,
        "max_new_tokens": 4,
        "stop": ["</a>"],
        "stop_token_ids": None,
        "skip_special_tokens": False,
        "no_stop_trim": True,
        "spaces_between_special_tokens": False,
    }
    assert state.group_sampling_seeds == [5, 6]
    assert state.aborted is False
    state.aborted = True
    state.reset()
    assert state.aborted is False


def test_generate_state_without_a_tokenizer_says_what_to_set() -> None:
    args = small_config()
    state = GenerateState(args)
    with pytest.raises(ValueError, match="hf_checkpoint"):
        state.tokenizer  # noqa: B018


async def test_generate_calls_the_context_engine_with_miles_sampling_params() -> None:
    tok = _CharTok()
    engine = ScriptedEngine("xyz", tokenizer=tok, log_probs=-0.25)
    args = small_config(rollout_max_response_len=8)
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        params = dict(GenerateState(args).sampling_params)
        sample = await generate(args, Sample(prompt="ab"), params)
    assert sample.tokens == [ord(c) for c in "abxyz"]
    assert sample.response == "xyz" and sample.response_length == 3
    assert sample.rollout_log_probs == [-0.25] * 3
    assert sample.status is Sample.Status.COMPLETED
    assert engine.requests[0].sampling_params.get("max_new_tokens") == 8
    assert "spaces_between_special_tokens" not in engine.requests[0].sampling_params


async def test_generate_outside_a_trainer_posts_to_the_router() -> None:
    engine = ScriptedEngine([5, 6], log_probs=-1.0, finish_reasons="length")
    async with await start_server(engine) as server:
        args = small_config(sglang_router_ip=server.host, sglang_router_port=server.port)
        assert get_model_url(args, "default") == f"{server.url}/generate"
        sample = await generate(args, Sample(tokens=[1, 2, 3]), {"max_new_tokens": 4, "stop": None})
    assert sample.tokens == [1, 2, 3, 5, 6]
    assert sample.response_length == 2 and sample.rollout_log_probs == [-1.0, -1.0]
    assert sample.status is Sample.Status.TRUNCATED
    assert engine.requests[0].input_ids == [1, 2, 3]


async def test_generate_refuses_a_finished_sample() -> None:
    with pytest.raises(ValueError, match="has status completed"):
        await generate(small_config(), Sample(status=Sample.Status.COMPLETED), {})


def test_generate_state_entry_goes_with_its_args() -> None:
    import gc

    from miles_sdk.compat.miles.rollout.sglang_rollout import _OnePerArgs

    args = small_config()
    state = GenerateState(args)
    assert state.args is args
    before = len(_OnePerArgs._instances)
    del args
    gc.collect()
    assert len(_OnePerArgs._instances) == before - 1


async def test_custom_rm_path_naming_async_rm_itself_uses_the_builtins() -> None:
    args = small_config(rm_type="math", custom_rm_path="miles.rollout.rm_hub.async_rm")
    assert await async_rm(args, Sample(response="\\boxed{2}", label="2")) == 1.0
