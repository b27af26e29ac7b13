"""miles.utils.processing_utils / mask_utils / data and megatron.core.mpu under the shims (issue 15.5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from miles_sdk.compat import install
from miles_sdk.config import Config
from miles_sdk.testing.tiny import save_tiny_policy, tiny_tokenizer

install()

from miles.utils.data import Dataset, get_minimum_num_micro_batch_size, read_file  # noqa: E402
from miles.utils.mask_utils import MultiTurnLossMaskGenerator, get_response_lengths  # noqa: E402
from miles.utils.processing_utils import (  # noqa: E402
    encode_image_for_rollout_engine,
    extract_multimodal_train_inputs,
    load_tokenizer,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "and 2+2?"},
    {"role": "assistant", "content": "4", "step_loss_mask": 1},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_policy(str(folder))
    return str(folder)


def test_load_tokenizer_reads_chat_template_path(checkpoint: str, tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    tok = load_tokenizer(checkpoint, chat_template_path=str(template))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user]hi"
    assert load_tokenizer(checkpoint, chat_template_path=str(template)) is tok  # cached
    with pytest.raises(FileNotFoundError, match="nope.jinja"):
        load_tokenizer(checkpoint, chat_template_path=str(tmp_path / "nope.jinja"))
    assert Config.from_args(["--chat-template-path", str(template)]).chat_template_path == str(template)


def test_loss_mask_trains_assistant_turns_only() -> None:
    tok = tiny_tokenizer()
    gen = MultiTurnLossMaskGenerator(tok, tokenizer_type="qwen")
    ids, mask = gen.get_loss_mask(CONVERSATION)
    assert ids == list(tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False))
    texts = gen.get_text_from_loss_mask(ids, mask)
    assert len(texts) == 2 and texts[0].startswith("2") and texts[1].startswith("4")
    assert "assistant" not in "".join(texts) and "1+1" not in "".join(texts)
    skipped = [*CONVERSATION[:-1], {**CONVERSATION[-1], "step_loss_mask": 0}]
    assert len(gen.get_text_from_loss_mask(*gen.get_loss_mask(skipped))) == 1
    assert get_response_lengths([[0, 0, 1, 0, 1], [0, 0]]) == [3, 0]


def test_data_shims(tmp_path: Path) -> None:
    rows = [{"text": f"q{i}", "label": i, "metadata": {"i": i}} for i in range(6)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["text"] for r in read_file(f"{path}@[1:3]")] == ["q1", "q2"]
    ds = Dataset(str(path), None, None, None, label_key="label", seed=3)
    assert len(ds) == 6 and ds[2].prompt == "q2" and ds[2].label == 2
    ds.shuffle(1)
    first = [s.prompt for s in ds.samples]
    assert sorted(first) == [f"q{i}" for i in range(6)]
    ds.shuffle(2)
    ds.shuffle(1)
    assert [s.prompt for s in ds.samples] == first
    assert get_minimum_num_micro_batch_size([5, 5, 3, 7, 2], 10) == 3


def test_processing_helpers() -> None:
    image_mod = pytest.importorskip("PIL.Image")
    url = encode_image_for_rollout_engine(image_mod.new("L", (2, 2)))
    assert url.startswith("data:image/png;base64,")
    out = extract_multimodal_train_inputs({"input_ids": [1], "attention_mask": [1], "pixel_values": 3})
    assert out == {"pixel_values": 3}
    assert extract_multimodal_train_inputs({"input_ids": [1]}) is None


def test_megatron_mpu_resolves_to_this_process_without_megatron_core() -> None:
    from megatron.core import mpu

    assert mpu.get_data_parallel_rank() == 0 and mpu.get_data_parallel_world_size() == 1
    assert mpu.get_context_parallel_world_size() == 1
    with pytest.raises(ModuleNotFoundError, match="megatron.core.mpu"):
        import megatron.training  # noqa: F401


DRGRPO = "examples_drgrpo_custom_reducer"


def test_miles_drgrpo_reducer_file_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Miles's examples/experimental/DrGRPO/custom_reducer.py imports megatron.core.mpu at the top.
    from miles_sdk.testing import run_steps, small_config

    src = Path(__file__).parent / "miles_style_hooks" / "drgrpo_custom_reducer.py"
    assert "from megatron.core import mpu" in src.read_text()
    cfg = small_config(
        custom_pg_loss_reducer_function_path="miles_style_hooks.drgrpo_custom_reducer:get_pg_loss_reducer"
    )
    result = run_steps(config=cfg, steps=1)
    assert result.metrics and "train/loss" in result.metrics[0]
    assert "megatron" in sys.modules


AGENT_SEEN: list[dict[str, object]] = []


async def stub_agent_system(args: object, sample: object) -> list[object]:
    AGENT_SEEN.append(
        {
            "sampling_params": getattr(args, "sampling_params"),
            "tokenizer": getattr(args, "tokenizer"),
            "num_parallel": getattr(args, "num_parallel"),
            "rollout_max_context_len": getattr(args, "rollout_max_context_len"),
        }
    )
    return [sample]


def test_miles_multi_agent_rollout_file_runs(checkpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Miles's file, unchanged: imports processing_utils.load_tokenizer, reads args.chat_template_path,
    # sets attributes on args and loads the agent function named in args (FrozenInstanceError before).
    import asyncio

    from miles_sdk.loading import load_hook
    from miles_sdk.types import Sample
    from miles_style_hooks import rollout_with_multi_agents as module

    monkeypatch.setitem(
        module.MULTI_AGENT_CONFIGS, "custom_multi_agent_function_path", f"{__name__}.stub_agent_system"
    )
    hook = load_hook(
        "miles_style_hooks.rollout_with_multi_agents.generate_with_multi_agents",
        "GenerateFn",
        flag="--custom-generate-function-path",
    )
    args = Config(hf_checkpoint=checkpoint, rollout_max_context_len=64)
    AGENT_SEEN.clear()
    out = asyncio.run(hook(args, Sample(prompt="hi"), {"max_new_tokens": 4}))
    assert len(out) == 1 and out[0].prompt == "hi"
    (seen,) = AGENT_SEEN
    assert seen["sampling_params"] == {"max_new_tokens": 4} and seen["num_parallel"] == 5
    assert seen["rollout_max_context_len"] == 64 and seen["tokenizer"] is not None
