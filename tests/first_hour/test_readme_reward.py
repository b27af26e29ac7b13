"""The README's "Using it" code, run as written on the tiny policy (issue 14 item 3).

The README's reward once compared ``sample.response.strip()`` with the label, but the response keeps
its EOS (``'7<|im_end|>'``), so it never matched and the run learned nothing. Here the README's own
block runs, with only the paths and sizes swapped for the CPU, on a task the tiny policy can learn
once it answers with one digit: the label is the same digit for every prompt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from miles_sdk import Config, Sample
from miles_sdk.demo.warmup import format_warmup
from miles_sdk.testing import tiny_policy
from miles_sdk.testing.tiny import EOS_TOKEN

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_using_it_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Using it") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README's 'Using it' section lost its python block"
    return match.group(1)


@pytest.fixture(scope="module")
def warm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny policy taught the answer format only (one random digit, then EOS): docs/first-run.md."""
    model, tok = tiny_policy("arithmetic", seed=0)
    prompts = [f"{a}+{b}=" for a in range(10) for b in range(10)]
    format_warmup(model, tok, prompts)
    path = tmp_path_factory.mktemp("warm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_readme(checkpoint: Path, tmp_path: Path, num_rollout: int) -> dict[str, Any]:
    data = tmp_path / "train.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for a in range(4):
            for b in range(4):
                f.write(json.dumps({"input": f"{a}+{b}=", "label": "7"}) + "\n")

    def cpu_config(**readme_kwargs: Any) -> Config:
        # The README's settings, with its paths and sizes replaced by ones that fit the CPU.
        kwargs = readme_kwargs | {
            "hf_checkpoint": str(checkpoint),
            "prompt_data": str(data),
            "rollout_batch_size": 4,
            "n_samples_per_prompt": 8,
            "num_rollout": num_rollout,
            "lr": 3e-3,
            "rollout_max_response_len": 3,
            "micro_batch_size": 32,
            "device": "cpu",
            "progress_bar": False,
            "output_dir": str(tmp_path / "out"),
            "rollout_seed": 1,
        }
        return Config(**kwargs)

    code = re.sub(r"(?<![\w.])Config\(", "cpu_config(", readme_using_it_block())
    namespace: dict[str, Any] = {"cpu_config": cpu_config}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    namespace["trainer"].close()
    return namespace


def test_readme_reward_matches_a_stopped_response() -> None:
    namespace: dict[str, Any] = {}
    code = readme_using_it_block()
    exec(compile(code[: code.index("config =")], str(README), "exec"), namespace)  # noqa: S102
    rm = namespace["my_rm"]
    sample = Sample(prompt="3+4=", response=f"7{EOS_TOKEN}", label="7")
    from miles_sdk.testing import run_sync

    assert run_sync(rm(Config(), sample)) == 1.0
    sample.response = f"8{EOS_TOKEN}"
    assert run_sync(rm(Config(), sample)) == 0.0


def test_readme_code_learns_on_the_tiny_policy(warm_checkpoint: Path, tmp_path: Path) -> None:
    namespace = run_readme(warm_checkpoint, tmp_path, num_rollout=6)
    rewards = [m["rollout/reward_mean"] for m in namespace["trainer"].history]
    assert len(rewards) == 6
    assert max(rewards) > 0.0, "the README reward never matched"
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.15, rewards
