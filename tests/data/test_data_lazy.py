"""Large prompt data read lazily (issue 16.12): the same samples and order as eager reading, the
length filter as prompts are drawn, exact resume, and no sample built before it is drawn."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from miles_sdk.config import Config
from miles_sdk.data import DatasetError, PromptDataset, RolloutDataSourceWithBuffer
from miles_sdk.data import dataset as dataset_module
from miles_sdk.types import Sample

ROWS: list[dict[str, Any]] = [
    {"input": "a" * (3 + i % 7), "label": i, "metadata": {"id": i}} for i in range(40)
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    # a blank line in the middle: skipped, and the line numbers after it still count it
    lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines[:10] + [""] + lines[10:]) + "\n")
    return str(path)


def served(source: RolloutDataSourceWithBuffer, steps: int, batch: int) -> list[int]:
    return [g[0].metadata["id"] for _ in range(steps) for g in source.get_samples(batch)]


def test_lazy_rows_equal_eager_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    eager, lazy = PromptDataset(path, label_key="label"), PromptDataset(path, label_key="label", lazy=True)
    assert lazy.lazy and not eager.lazy and len(lazy) == len(eager) == 40
    assert [s.to_dict() for s in lazy.samples] == [s.to_dict() for s in eager.samples]
    assert list(lazy.locations) == list(eager.locations) and lazy.locations[10] == f"{path}:12"
    assert lazy.samples[-1].metadata == {"id": 39} and len(lazy.samples[2:5]) == 3


def test_large_data_is_lazy_by_default_and_builds_only_what_is_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset_module, "LAZY_MIN_ROWS", 20)
    built: list[str] = []
    real = PromptDataset._build_sample

    def counting(self: PromptDataset, row: Any) -> Any:
        built.append(row.where)
        return real(self, row)

    monkeypatch.setattr(PromptDataset, "_build_sample", counting)
    monkeypatch.setattr(dataset_module, "_CHECKED_UP_FRONT", 4)
    args = Config(
        prompt_data=write_jsonl(tmp_path / "d.jsonl", ROWS), rollout_batch_size=2, n_samples_per_prompt=2
    )
    source = RolloutDataSourceWithBuffer(args)
    assert source.dataset is not None and source.dataset.lazy
    assert len(built) == 4  # the rows checked up front, not 40
    source.get_samples(2)
    assert len(built) == 6


@pytest.mark.parametrize("shuffle", [False, True])
def test_lazy_source_serves_what_the_eager_one_serves_and_resumes_exactly(
    tmp_path: Path, shuffle: bool
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    args = Config(prompt_data=path, rollout_batch_size=3, n_samples_per_prompt=2, rollout_shuffle=shuffle)
    eager = RolloutDataSourceWithBuffer(args, dataset=PromptDataset(path))
    lazy = RolloutDataSourceWithBuffer(args, dataset=PromptDataset(path, lazy=True))
    expected = served(eager, 30, 3)  # over two epochs
    assert served(lazy, 30, 3) == expected

    first = RolloutDataSourceWithBuffer(args, dataset=PromptDataset(path, lazy=True))
    got = served(first, 17, 3)
    state = first.state_dict()
    second = RolloutDataSourceWithBuffer(args, dataset=PromptDataset(path, lazy=True))
    second.load_state_dict(state)
    assert got + served(second, 13, 3) == expected


def test_lazy_length_filter_skips_long_prompts_as_drawn(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)  # byte-level tokenizer: "aaaa" is 4 tokens
    args = Config(prompt_data=path, rollout_batch_size=4, n_samples_per_prompt=1, rollout_max_prompt_len=5)
    eager = PromptDataset(path, tokenizer=tiny_tokenizer, max_prompt_len=5)
    with caplog.at_level(logging.INFO, logger="miles_sdk.data.dataset"):
        lazy = PromptDataset(path, tokenizer=tiny_tokenizer, max_prompt_len=5, lazy=True)
        source = RolloutDataSourceWithBuffer(args, dataset=lazy)
        ids = served(source, len(eager) // 4, 4)
    # without shuffle the kept prompts come in file order, exactly as from the eager dataset
    assert ids == [s.metadata["id"] for s in eager.samples][: len(ids)]
    assert all(len(lazy.samples[i].prompt) <= 5 for i in ids)
    assert lazy.num_dropped_long > 0 and lazy.prompt_lengths is None
    assert "skipping prompts longer than rollout_max_prompt_len=5" in caplog.text


def test_lazy_all_too_long_is_an_error_not_a_hang(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    args = Config(prompt_data=path, rollout_batch_size=1, n_samples_per_prompt=1, rollout_max_prompt_len=1)
    lazy = PromptDataset(path, tokenizer=tiny_tokenizer, max_prompt_len=1, lazy=True)
    with pytest.raises(DatasetError, match="all 40 prompts are longer than rollout_max_prompt_len=1"):
        RolloutDataSourceWithBuffer(args, dataset=lazy).get_samples(1)


def test_lazy_bad_row_names_its_line_when_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "_CHECKED_UP_FRONT", 4)
    rows: list[dict[str, Any]] = [{"input": f"p{i}"} for i in range(10)] + [{"question": "no input key"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    lazy = PromptDataset(path, lazy=True)  # the first rows are fine
    with pytest.raises(DatasetError, match=rf"{path}:12: missing input key 'input'"):
        lazy.prompt_at(10)


def test_lazy_file_with_bad_json_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"input": f"p{i}"}) + "\n" for i in range(500)) + '{"input": \n')
    with pytest.raises(DatasetError, match=r"d.jsonl:501: malformed JSON line"):
        PromptDataset(str(path), lazy=True)


def test_lazy_parquet_and_slices(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"input": f"p{i}", "label": str(i)} for i in range(30)]), path)
    lazy = PromptDataset(f"{path}@[5:-5]", label_key="label", lazy=True)
    eager = PromptDataset(f"{path}@[5:-5]", label_key="label")
    assert len(lazy) == len(eager) == 20
    assert [s.to_dict() for s in lazy.samples] == [s.to_dict() for s in eager.samples]
    assert lazy.locations[0] == f"{path}[row 5]"
    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert [s.metadata["id"] for s in PromptDataset(f"{jsonl}@[-3:]", lazy=True).samples] == [37, 38, 39]


def test_prompt_at_of_an_eager_dataset_is_its_sample() -> None:
    ds = PromptDataset([{"input": "x"}])
    sample = ds.prompt_at(0)
    assert isinstance(sample, Sample) and sample.prompt == "x"
