"""The worked example, a custom generate plus a custom reward: ``python -m examples.custom_generate_and_rm.run``
trains from Python; add ``--cli`` to run the same launch through ``miles-sdk train`` flags."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples._common import RunOptions, parse_run_args, tiny_config, train_tiny
from examples.custom_generate_and_rm.hooks import generate, reward_fn
from miles_sdk import cli
from miles_sdk.testing import save_tiny_policy

__all__ = ["GENERATE_PATH", "REWARD_PATH", "cli_argv", "dataset", "main", "write_jsonl"]

GENERATE_PATH = "examples.custom_generate_and_rm.hooks.generate"
REWARD_PATH = "examples.custom_generate_and_rm.hooks.reward_fn"

_PASSAGES = (
    (
        "Ada Lovelace wrote the first published computer program in 1843.",
        "Who wrote the first program?",
        "Ada Lovelace",
    ),
    (
        "The Amazon river flows through Brazil into the Atlantic Ocean.",
        "Which ocean does the Amazon reach?",
        "Atlantic Ocean",
    ),
    ("Honey bees communicate the direction of flowers by dancing.", "How do bees communicate?", "by dancing"),
    ("The Eiffel Tower was finished in Paris in 1889.", "When was the Eiffel Tower finished?", "1889"),
)

# Shared by both routes, so they train the same thing.
_SETTINGS: dict[str, Any] = {
    "rollout_batch_size": 2,
    "n_samples_per_prompt": 2,
    "rollout_max_response_len": 16,
    "metadata_key": "metadata",
}


def dataset() -> list[dict[str, Any]]:
    """Reading-comprehension rows: prompt, label, and the passage in ``metadata.context``."""
    return [
        {
            "input": f"Passage: {passage}\nQuestion: {question}\n",
            "label": answer,
            "metadata": {"context": passage},
        }
        for passage, question, answer in _PASSAGES
    ]


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines (the ``--prompt-data`` format)."""
    out = Path(path)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return out


def cli_argv(
    hf_checkpoint: str, prompt_data: str, output_dir: str, num_rollout: int, seed: int = 0
) -> list[str]:
    """The ``miles-sdk train`` command line of the worked example (both hooks given by path)."""
    argv = [
        "train",
        "--hf-checkpoint",
        hf_checkpoint,
        "--prompt-data",
        prompt_data,
        "--label-key",
        "label",
        "--custom-generate-function-path",
        GENERATE_PATH,
        "--custom-rm-path",
        REWARD_PATH,
        "--num-rollout",
        str(num_rollout),
        "--output-dir",
        output_dir,
        "--seed",
        str(seed),
        "--device",
        "cpu",
        "--lr",
        "1e-3",
        "--no-progress-bar",
    ]
    for key, value in _SETTINGS.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def _run_cli(opts: RunOptions) -> int:
    out = Path(opts.output_dir)
    checkpoint = out / "tiny_policy"
    save_tiny_policy(checkpoint, opts.preset, seed=opts.seed)
    data = write_jsonl(out / "prompts.jsonl", dataset())
    argv = cli_argv(str(checkpoint), str(data), str(out), opts.num_rollout, opts.seed)
    print("miles-sdk " + " ".join(argv))
    return cli.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train with both hooks, from Python (default) or through the CLI (``--cli``); returns 0."""
    opts = parse_run_args(
        argv,
        name="custom_generate_and_rm",
        description=__doc__,
        switches={"cli": "run the launch through `miles-sdk train` flags"},
    )
    if "cli" in opts.switches:
        return _run_cli(opts)
    config = tiny_config(opts, **_SETTINGS)
    train_tiny(config, opts, dataset=dataset(), generate_fn=generate, reward_model=reward_fn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
