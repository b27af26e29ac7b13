"""Every built-in rm type, selected from the Config, scores a real Trainer step."""

from __future__ import annotations

from pathlib import Path

import pytest

from miles_sdk.testing import run_steps, small_config

ROWS = {
    "math": [{"input": "1+1=", "label": "2"}, {"input": "2+2=", "label": "4"}],
    "boxed_math": [{"input": "1+1=", "label": "2"}, {"input": "2+2=", "label": "4"}],
    "deepscaler": [{"input": "1+1=", "label": "2"}, {"input": "2+2=", "label": "4"}],
    "dapo": [{"input": "1+1=", "label": "2"}, {"input": "2+2=", "label": "4"}],
    "f1": [{"input": "say hi", "label": "hi"}, {"input": "say yes", "label": "yes"}],
    "gpqa": [
        {"input": "pick", "label": "A", "metadata": {"choices": ["x", "y", "z", "w"]}},
        {"input": "pick", "label": "B", "metadata": {"choices": ["x", "y", "z", "w"]}},
    ],
    "ifbench": [
        {"input": "write", "metadata": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}},
        {"input": "write", "metadata": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}},
    ],
    "random": [{"input": "a", "label": "x"}, {"input": "b", "label": "y"}],
    "deterministic_random": [{"input": "a", "label": "x"}, {"input": "b", "label": "y"}],
}


@pytest.mark.parametrize("rm_type", sorted(ROWS))
def test_builtin_rm_type_in_fit(tmp_path: Path, rm_type: str) -> None:
    cfg = small_config(
        output_dir=str(tmp_path),
        rm_type=rm_type,
        reward_key="score" if rm_type == "dapo" else None,
        reward_num_workers=0,
        label_key=None if rm_type == "ifbench" else "label",
    )
    result = run_steps({}, steps=1, config=cfg, dataset=ROWS[rm_type])
    samples = result.samples[0]
    assert samples and all(s.reward is not None for s in samples)
    values = [s.get_reward_value(cfg.reward_key) for s in samples]
    assert all(v in (-1.0, 0.0, 1.0) or 0.0 <= v <= 1.0 for v in values)
    assert "train/loss" in result.metrics[0]
