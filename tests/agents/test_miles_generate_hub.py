"""Miles's newer calling convention and miles.rollout.generate_hub.* through the compat layer."""

from __future__ import annotations

import asyncio
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from miles_sdk.config import Config
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.loading import load_hook
from miles_sdk.rollout import RolloutContext, use_rollout_context
from miles_sdk.testing import ScriptedEngine
from miles_sdk.types import RolloutFnTrainOutput, Sample


class Replies:
    def __init__(self, tok: PreTrainedTokenizerFast, texts: list[str]) -> None:
        self.tok, self.texts, self.weight_version, self.inputs = tok, list(texts), 3, []

    async def generate(self, input_ids: list[int], params: SamplingParams) -> EngineOutput:
        self.inputs.append(list(input_ids))
        ids = self.tok.encode(self.texts.pop(0), add_special_tokens=False)
        return EngineOutput(ids, [-1.0] * len(ids), FinishReason.STOP, self.weight_version, None)

    async def abort_all(self) -> None: ...

    def update_weights(self, version: int | None = None) -> None: ...


async def _generate(fn: Any, args: Config, engine: Any, tok: Any, prompt: Any = "1+2?") -> Any:
    with use_rollout_context(RolloutContext(engine=engine, tokenizer=tok)):
        return await fn(
            args, Sample(index=0, prompt=prompt), SamplingParams(temperature=1.0, max_new_tokens=256)
        )


async def test_miles_agent_file_runs_unchanged_through_agentic_tool_call(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    args = Config(custom_agent_function_path="miles_files.agent_fn.run", max_seq_len=300)
    fn = load_hook(
        "miles.rollout.generate_hub.agentic_tool_call.generate",
        "GenerateFn",
        flag="--custom-generate-function-path",
    )
    sample = await _generate(fn, args, Replies(tok, ["hello<|im_end|>"]), tok)
    assert sample.status is Sample.Status.COMPLETED
    assert sample.metadata["reward"] == 1.0 and sample.metadata["said"] == "hello"
    assert {"max_seq_len", "session_id"} <= set(sample.metadata["meta_seen"])
    assert (
        sample.loss_mask == [1] * sample.response_length
        and sample.rollout_log_probs == [-1.0] * sample.response_length
    )


async def test_multi_turn_runs_tools_from_the_miles_flags(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    from miles_files import newstyle

    args = Config(
        generate_tool_specs_path="miles_files.newstyle.TOOLS",
        generate_execute_tool_function_path="miles_files.newstyle.execute_tool",
        generate_max_turns=4,
    )
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>'
    engine = Replies(tok, [call, "3<|im_end|>"])
    fn = load_hook("miles.rollout.generate_hub.multi_turn.generate", "GenerateFn")
    sample = await _generate(fn, args, engine, tok)
    assert newstyle.CALLS[-1] == ("add", {"a": 1, "b": 2})
    assert sample.status is Sample.Status.COMPLETED and sample.response.endswith("3<|im_end|>")
    # The second call continued from exactly the first call's tokens plus the masked tool turn.
    first_prompt, second_prompt = engine.inputs
    call_ids = tok.encode(call, add_special_tokens=False)
    assert second_prompt[: len(first_prompt) + len(call_ids)] == first_prompt + call_ids
    tool_text = tok.decode(second_prompt[len(first_prompt) + len(call_ids) :])
    assert (
        tool_text
        == "\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    n_tool = len(second_prompt) - len(first_prompt) - len(call_ids)
    assert sample.loss_mask == [1] * len(call_ids) + [0] * n_tool + [1] * 2


async def test_input_style_generate_fn_and_rollout_class_are_adapted(
    policy: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    _, tok = policy
    args = Config(n_samples_per_prompt=3)
    gen = load_hook("miles_files.newstyle.generate", "GenerateFn", flag="--custom-generate-function-path")
    sample = await _generate(gen, args, Replies(tok, ["ok<|im_end|>"]), tok, prompt="hi")
    assert sample.metadata == {"seen_args": 3, "evaluation": False}
    assert sample.response == "ok<|im_end|>" and sample.status is Sample.Status.COMPLETED

    rollout = load_hook("miles_files.newstyle.Rollout", "RolloutFn", flag="--rollout-function-path")

    class Source:
        def get_samples(self, n: int) -> list[list[Sample]]:
            return [[Sample(index=i)] for i in range(n)]

    with use_rollout_context(RolloutContext(engine=ScriptedEngine("x"), tokenizer=tok)):
        source = Source()
        out = rollout(args, 5, source, False)
        out = await out if asyncio.iscoroutine(out) else out
        again = await rollout(args, 6, source, False)
    assert (
        isinstance(out, RolloutFnTrainOutput)
        and len(out.samples) == 1
        and isinstance(again, RolloutFnTrainOutput)
    )
    # One instance per data source, called with Miles's typed inputs (weight version from the engine).
    from miles_files import newstyle

    assert len(newstyle.ROLLOUT_INSTANCES) == 1
    assert newstyle.ROLLOUT_CALLS == [(5, 0, False), (6, 0, False)]
