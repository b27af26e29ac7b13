"""Prompt datasets: formats, row slices, keys, chat templates, the length filter, bad input."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerFast

from miles_sdk.config import Config
from miles_sdk.data import DatasetError, PromptDataset, parse_data_path
from miles_sdk.data.templates import render_chat_prompt

ROWS: list[dict[str, Any]] = [
    {"input": f"What is {i} + {i}?", "label": str(2 * i), "metadata": {"id": i}} for i in range(10)
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def prompts(ds: PromptDataset) -> list[Any]:
    return [s.prompt for s in ds.samples]


# -- formats and slices ------------------------------------------------------------------------


def test_jsonl_rows_become_prompt_samples(tmp_path: Path) -> None:
    ds = PromptDataset(write_jsonl(tmp_path / "d.jsonl", ROWS), label_key="label")
    assert len(ds) == 10
    assert ds[3].prompt == "What is 3 + 3?"
    assert ds[3].label == "6"
    assert ds[3].metadata == {"id": 3}
    assert ds[3].tokens == [] and ds[3].index is None  # tokens left for the rollout, as in Miles
    assert ds.locations[3] == f"{tmp_path / 'd.jsonl'}:4"


def test_parquet_matches_jsonl(tmp_path: Path) -> None:
    a = PromptDataset(write_jsonl(tmp_path / "d.jsonl", ROWS), label_key="label")
    b = PromptDataset(write_parquet(tmp_path / "d.parquet", ROWS), label_key="label")
    assert prompts(a) == prompts(b)
    assert [s.label for s in a.samples] == [s.label for s in b.samples]
    assert [s.metadata for s in a.samples] == [s.metadata for s in b.samples]


def test_in_memory_rows_are_copied(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"input": [{"role": "user", "content": "hi"}], "metadata": {"k": [1]}}]
    ds = PromptDataset(rows)
    ds[0].metadata["k"].append(2)
    assert isinstance(ds[0].prompt, list)
    ds[0].prompt[0]["content"] = "changed"
    assert rows[0] == {"input": [{"role": "user", "content": "hi"}], "metadata": {"k": [1]}}


def test_hf_dataset_object() -> None:
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_list(ROWS)
    ds = PromptDataset(hf, label_key="label")
    assert prompts(ds) == [r["input"] for r in ROWS]
    assert ds.locations[2] == "hf_dataset[2]"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("@[2:5]", [2, 3, 4]), ("@[:3]", [0, 1, 2]), ("@[8:]", [8, 9]), ("@[-2:]", [8, 9]), ("@[1:-7]", [1, 2])],
)
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_row_slice(tmp_path: Path, spec: str, expected: list[int], fmt: str) -> None:
    writer = write_jsonl if fmt == "jsonl" else write_parquet
    path = writer(tmp_path / f"d.{fmt}", ROWS)
    ds = PromptDataset(path + spec)
    assert [s.metadata["id"] for s in ds.samples] == expected


def test_parse_data_path() -> None:
    assert parse_data_path("/a/b@c.jsonl@[3:7]") == ("/a/b@c.jsonl", slice(3, 7))
    assert parse_data_path("x.parquet@[:]") == ("x.parquet", slice(None, None))
    assert parse_data_path("x.jsonl") == ("x.jsonl", None)


def test_from_config_uses_keys(tmp_path: Path) -> None:
    rows = [{"question": "q1", "answer": 7, "info": {"rm_type": "math"}, "other": 1}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    args = Config(prompt_data=path, input_key="question", label_key="answer", metadata_key="info")
    ds = PromptDataset.from_config(args)
    assert ds[0].prompt == "q1"
    assert ds[0].label == 7  # kept as the data holds it (gpqa reads an int as an option index)
    assert ds[0].metadata == {"rm_type": "math"}


def test_metadata_as_json_string_and_missing_metadata() -> None:
    ds = PromptDataset([{"input": "a", "metadata": '{"x": 1}'}, {"input": "b"}])
    assert [s.metadata for s in ds.samples] == [{"x": 1}, {}]


# -- chat template -----------------------------------------------------------------------------


def test_chat_template_renders_messages_and_strings(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    rows: list[dict[str, Any]] = [
        {"input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]},
        {"input": "3+3?"},
    ]
    ds = PromptDataset(rows, tokenizer=tiny_tokenizer, apply_chat_template=True)
    assert ds[0].prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ds[1].prompt == "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_passes_tools_and_kwargs(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    tool = {"type": "function", "function": {"name": "calc", "parameters": {}}}
    rows = [{"input": "use calc", "tools": json.dumps([tool])}]
    ds = PromptDataset(rows, tokenizer=tiny_tokenizer, tool_key="tools", apply_chat_template=True)
    assert ds[0].metadata["tools"] == [tool]
    assert isinstance(ds[0].prompt, str)
    assert "<tools>" in ds[0].prompt and '"name": "calc"' in ds[0].prompt
    assert ds[0].prompt.endswith("<|im_start|>user\nuse calc<|im_end|>\n<|im_start|>assistant\n")

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{{ greeting }}|{% for m in messages %}{{ m.content }}{% endfor %}"
    ds2 = PromptDataset(
        [{"input": "x"}],
        tokenizer=tok,
        apply_chat_template=True,
        apply_chat_template_kwargs={"greeting": "hey"},
    )
    assert ds2[0].prompt == "hey|x"


def test_chat_template_needs_a_template(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(DatasetError, match="no chat_template"):
        PromptDataset([{"input": "x"}], tokenizer=tok, apply_chat_template=True)
    with pytest.raises(DatasetError, match="needs a tokenizer"):
        PromptDataset([{"input": "x"}], apply_chat_template=True)


# -- length filter -----------------------------------------------------------------------------


def test_long_prompts_dropped_and_counted(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    # Byte-level tokenizer: "aaaa" is 4 tokens (no merges apply to 'a').
    rows = [{"input": "a" * n} for n in (3, 9, 5, 6, 12)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="miles_sdk.data.dataset"):
        ds = PromptDataset(path, tokenizer=tiny_tokenizer, max_prompt_len=5)
    assert prompts(ds) == ["aaa", "aaaaa"]
    assert ds.num_dropped_long == 3 and ds.num_rows_read == 5
    assert ds.prompt_lengths == [3, 5]
    assert ds.locations == [f"{path}:1", f"{path}:3"]
    assert "dropped 3 of 5 prompts longer than rollout_max_prompt_len=5" in caplog.text


def test_length_filter_counts_the_rendered_chat_prompt(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    rendered = render_chat_prompt(tiny_tokenizer, "hi")
    n = len(tiny_tokenizer.encode(rendered, add_special_tokens=False))
    rows = [{"input": "hi"}, {"input": "hi" * 5}]
    ds = PromptDataset(rows, tokenizer=tiny_tokenizer, apply_chat_template=True, max_prompt_len=n)
    assert prompts(ds) == [rendered] and ds.prompt_lengths == [n] and ds.num_dropped_long == 1


def test_length_filter_counts_unrendered_messages_through_the_template(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    n = len(tiny_tokenizer.encode(render_chat_prompt(tiny_tokenizer, "hi"), add_special_tokens=False))
    rows = [
        {"input": [{"role": "user", "content": "hi"}]},
        {"input": [{"role": "user", "content": "hi" * 9}]},
    ]
    ds = PromptDataset(rows, tokenizer=tiny_tokenizer, max_prompt_len=n)
    assert ds.num_dropped_long == 1
    assert ds[0].prompt == [{"role": "user", "content": "hi"}]  # kept as messages


def test_all_prompts_too_long_is_an_error(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DatasetError, match="all 2 prompts are longer than rollout_max_prompt_len=1"):
        PromptDataset([{"input": "abc"}, {"input": "def"}], tokenizer=tiny_tokenizer, max_prompt_len=1)


# -- bad input ---------------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a"}\n\n{"input": "b"\n{"input": "c"}\n')
    with pytest.raises(DatasetError, match=rf"{path}:3: malformed JSON line"):
        PromptDataset(str(path))


def test_missing_input_key_names_key_and_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"input": "a"}, {"prompt": "b"}])
    with pytest.raises(
        DatasetError, match=rf"{path}:2: missing input key 'input' \(row keys: \['prompt'\]\)"
    ):
        PromptDataset(path)


def test_missing_label_key_names_key_and_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", [{"input": "a", "y": "1"}])
    with pytest.raises(DatasetError, match=r"d.parquet\[row 0\]: missing label key 'label'"):
        PromptDataset(path, label_key="label")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["not", "a", "dict"]], r"rows\[0\]: a row must be a JSON object"),
        ([{"input": 5}], r"rows\[0\]: 'input' is a int"),
        ([{"input": [{"content": "no role"}]}], r"rows\[0\]: 'input' message 0"),
        ([{"input": "a", "metadata": [1]}], r"rows\[0\]: 'metadata' must be a dict"),
        ([{"input": "a", "metadata": "{oops"}], r"rows\[0\]: 'metadata' is a string but not valid JSON"),
    ],
)
def test_bad_rows(rows: list[Any], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        PromptDataset(rows)


def test_bad_tools(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DatasetError, match=r"rows\[0\]: 'tools' must be a list of tools"):
        PromptDataset([{"input": "a", "tools": {"name": "x"}}], tool_key="tools")


def test_empty_and_missing_and_unsupported(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="is empty"):
        PromptDataset(str(empty))
    with pytest.raises(DatasetError, match="is empty"):
        PromptDataset(write_jsonl(tmp_path / "d.jsonl", ROWS) + "@[20:30]")
    with pytest.raises(DatasetError, match="is empty"):
        PromptDataset([])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        PromptDataset(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.csv").write_text("input\na\n")
    with pytest.raises(DatasetError, match="unsupported prompt data format"):
        PromptDataset(str(tmp_path / "d.csv"))
    with pytest.raises(DatasetError, match="set prompt_data"):
        PromptDataset.from_config(Config())


def test_uncountable_messages_are_kept_with_a_warning(
    tiny_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    rows: list[dict[str, Any]] = [{"input": [{"role": "user", "content": "x" * 50}]}, {"input": "y" * 50}]
    with caplog.at_level(logging.WARNING, logger="miles_sdk.data.dataset"):
        ds = PromptDataset(rows, tokenizer=tok, max_prompt_len=10)
    assert len(ds) == 1 and ds.prompt_lengths == [-1] and ds.num_dropped_long == 1
    assert "1 chat prompts not counted" in caplog.text
