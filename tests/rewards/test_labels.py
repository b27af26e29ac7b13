"""Raw label values through the graders and validate_labels (issue 15.1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from miles_sdk.config import Config
from miles_sdk.data import PromptDataset
from miles_sdk.rewards import RewardLabelError, compute_builtin_reward, validate_labels
from miles_sdk.types import Sample

GPQA_ROWS: list[dict[str, Any]] = [
    {"input": "Pick one", "label": idx, "metadata": {"rm_type": "gpqa", "choices": ["w", "x", "y", "z"]}}
    for idx in range(4)
]


def test_gpqa_int_label_scores_the_same_through_a_dataset(tmp_path: Path) -> None:
    # Issue 15.1: the loader turned 2 into "2", which gpqa does not read as an index -> 0 for every sample.
    path = tmp_path / "gpqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GPQA_ROWS))
    args = Config(prompt_data=str(path), label_key="label")
    ds = PromptDataset.from_config(args)
    validate_labels(args, ds.samples)
    for row, sample, letter in zip(GPQA_ROWS, ds.samples, "ABCD", strict=True):
        sample.response = f"The answer is ({letter})."
        direct = Sample(label=row["label"], metadata=row["metadata"], response=sample.response)
        assert asyncio.run(compute_builtin_reward(args, sample)) == 1.0
        assert asyncio.run(compute_builtin_reward(args, direct)) == 1.0


@pytest.mark.parametrize(
    ("rm_type", "label", "needle"),
    [
        ("math", {"answer": "1"}, "got a dict"),
        ("deepscaler", ["1", "2"], "got a list"),
        ("f1", ["paris"], "got a list"),
        ("boxed_math", True, "got a bool"),
        ("gpqa", 7, "option index in 0..3"),
        ("gpqa", 1.5, "option index"),
        ("gpqa", {"a": 1}, "got a dict"),
    ],
)
def test_validate_labels_catches_unusable_raw_labels(rm_type: str, label: Any, needle: str) -> None:
    choices = {"choices": ["a", "b", "c", "d"]}
    good: Any = 0 if rm_type == "gpqa" else "1"
    samples = [Sample(label=good, metadata=dict(choices)), Sample(label=label, metadata=dict(choices))]
    with pytest.raises(RewardLabelError, match=needle) as err:
        validate_labels(Config(rm_type=rm_type), samples)
    assert "1 of 2 rows" in str(err.value) and "row 1" in str(err.value)


@pytest.mark.parametrize(
    ("rm_type", "label"),
    [("math", 7), ("math", 0.5), ("math", "\\frac{1}{2}"), ("f1", "Paris"), ("gpqa", 3), ("gpqa", "C"), ("dapo", 12)],
)
def test_validate_labels_accepts_usable_raw_labels(rm_type: str, label: Any) -> None:
    validate_labels(Config(rm_type=rm_type), [Sample(label=label)])


def test_validate_labels_reads_the_label_column_of_raw_rows_when_label_key_unset() -> None:
    rows = [{"input": "q", "label": {"bad": 1}}]
    with pytest.raises(RewardLabelError, match="got a dict"):
        validate_labels(Config(rm_type="math"), rows)
    validate_labels(Config(rm_type="math"), [{"input": "q", "label": "3"}])
