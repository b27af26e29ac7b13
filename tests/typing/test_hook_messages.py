"""What a user's mypy prints for the common hook mistakes: the expected signature, by its Protocol.

A ``Protocol | None`` parameter makes mypy print only ``incompatible type "Callable[[Sample],
Coroutine[...]]"; expected "RewardFn | BatchedRewardFn | None"``; against a bare Protocol it adds
``note: "RewardFn.__call__" has type "Callable[[Config, Sample], ...]"``, which shows which
parameter or return type is wrong. This runs mypy on a user's file with the mistakes and reads the
notes. (Slow-ish: one mypy run; its cache is kept in pytest's cache folder.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each mistake: (source lines of the user's hook and call, the Protocol named in the message, the
# start of the expected signature that the note must show).
MISTAKES: dict[str, tuple[str, str, str]] = {
    "reward without args": (
        "async def rm(sample: Sample) -> float:\n    return 1.0\n\nTrainer(Config(), reward_model=rm)",
        "RewardFn",
        '"RewardFn.__call__" has type "Callable[[Config, Sample], ',
    ),
    "batched reward as reward_model": (
        (
            "async def rm(args: Config, samples: list[Sample]) -> list[float]:\n    return [1.0]\n\n"
            "Trainer(Config(group_rm=True), reward_model=rm)"
        ),
        "RewardFn",
        '"RewardFn.__call__" has type "Callable[[Config, Sample], ',
    ),
    "per-sample reward as batched_reward_model": (
        (
            "async def rm(args: Config, sample: Sample) -> float:\n    return 1.0\n\n"
            "Trainer(Config(), batched_reward_model=rm)"
        ),
        "BatchedRewardFn",
        '"BatchedRewardFn.__call__" has type "Callable[[Config, list[Sample]], ',
    ),
    "sync generate": (
        (
            "def gen(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:\n"
            "    return sample\n\nTrainer(Config(), generate_fn=gen)"
        ),
        "GenerateFn",
        '"GenerateFn.__call__" has type "Callable[[Config, Sample, SamplingParams], Awaitable[',
    ),
    "filter returning str": (
        (
            'def keep(args: Config, samples: list[Sample]) -> str:\n    return "yes"\n\n'
            "Trainer(Config(), dynamic_sampling_filter=keep)"
        ),
        "DynamicSamplingFilterFn",
        '"DynamicSamplingFilterFn.__call__" has type "Callable[[Config, list[Sample]], DynamicFilterOutput | bool]"',
    ),
}


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, str]:
    """Each mistake's function in its own module (so the line numbers are known), one mypy run."""
    where = tmp_path_factory.mktemp("user_hooks")
    names = {}
    for i, (label, (source, _, _)) in enumerate(MISTAKES.items()):
        module = f"mistake_{i}"
        header = "from miles_sdk import Config, Sample, SamplingParams, Trainer\n\n\n"
        (where / f"{module}.py").write_text(header + source + "\n")
        names[label] = module
    # pytest's cache keeps mypy's warm between runs; with -p no:cacheprovider it is absent.
    pytest_cache = getattr(request.config, "cache", None)
    cache = (
        Path(pytest_cache.mkdir("miles_sdk_install_typing_mypy"))
        if pytest_cache is not None
        else tmp_path_factory.mktemp("mypy_cache")
    )
    # miles_sdk is found as an installed, typed package (py.typed) on the interpreter's path, as
    # after `pip install`; no mypy config of this repository applies (cwd is outside it).
    env = {k: v for k, v in os.environ.items() if k not in {"MYPYPATH"}} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(cache),
            *(f"{m}.py" for m in names.values()),
        ],
        cwd=where,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = done.stdout + done.stderr
    assert "Cannot find implementation or library stub" not in log, log
    return {
        label: "\n".join(line for line in log.splitlines() if line.startswith(f"{m}.py:"))
        for label, m in names.items()
    }


@pytest.mark.parametrize("label", list(MISTAKES))
def test_a_wrong_hook_is_reported_with_the_signature_it_needs(
    mypy_output: dict[str, str], label: str
) -> None:
    _, protocol, expected_note = MISTAKES[label]
    out = mypy_output[label]
    assert f'expected "{protocol}"' in out, out
    assert "note: " + expected_note in out, out
