"""Eval datasets: eval_prompt_data pairs, eval_config files, settings resolution, groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from miles_sdk.config import Config
from miles_sdk.data import EvalConfigError, EvalDataset, load_eval_datasets
from miles_sdk.data.eval import resolve_eval_settings


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "aime": write_jsonl(tmp_path / "aime.jsonl", [{"input": f"a{i}", "label": str(i)} for i in range(3)]),
        "gpqa": write_jsonl(
            tmp_path / "gpqa.jsonl", [{"q": "g0", "ans": "B", "metadata": {"rm_type": "f1", "keep": 1}}]
        ),
    }


def test_pairs_use_eval_and_rollout_settings(files: dict[str, str]) -> None:
    args = Config(
        eval_prompt_data=["aime", files["aime"]],
        label_key="label",
        n_samples_per_eval_prompt=2,
        eval_temperature=0.5,
        rollout_top_p=0.9,
        rollout_max_response_len=64,
        eval_max_response_len=32,
        rollout_stop=["</s>"],
    )
    (aime,) = resolve_eval_settings(args)
    assert (aime.name, aime.path, aime.label_key, aime.input_key) == ("aime", files["aime"], "label", "input")
    assert (aime.n_samples_per_eval_prompt, aime.temperature, aime.top_p, aime.max_response_len) == (
        2,
        0.5,
        0.9,
        32,
    )
    params = aime.sampling_params(args)
    assert params == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": -1,
        "max_new_tokens": 32,
        "skip_special_tokens": False,
        "no_stop_trim": True,
        "stop": ["</s>"],
    }


def test_groups_repeat_and_inject_metadata(tmp_path: Path, files: dict[str, str]) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        "eval:\n"
        "  defaults: {n_samples_per_eval_prompt: 3}\n"
        "  datasets:\n"
        "    gpqa:\n"
        f"      path: {files['gpqa']}\n"
        "      input_key: q\n"
        "      label_key: ans\n"
        "      rm_type: gpqa\n"
        "      n_samples_per_eval_prompt: 2\n"
        "      metadata_overrides: {split: test}\n"
        "      custom_generate_function_path: my.tools.generate\n"
    )
    args = Config(eval_prompt_data=["aime", files["aime"]], eval_config=str(config), label_key="label")
    datasets = load_eval_datasets(args)
    assert list(datasets) == ["aime", "gpqa"]
    gpqa = datasets["gpqa"]
    assert isinstance(gpqa, EvalDataset) and len(gpqa) == 1
    (group,) = gpqa.groups()
    assert [(s.index, s.group_index) for s in group] == [(0, 0), (1, 0)]
    assert group[0].prompt == "g0" and group[0].label == "B"
    assert group[0].metadata == {"rm_type": "gpqa", "keep": 1, "split": "test"}  # dataset rm_type wins
    assert group[0].generate_function_path == "my.tools.generate"
    assert gpqa.custom_generate_function_path == "my.tools.generate"
    group[0].metadata["keep"] = 2
    assert gpqa.groups()[0][0].metadata["keep"] == 1  # fresh samples each call

    aime = datasets["aime"]
    assert aime.settings.n_samples_per_eval_prompt == 3  # from the file's defaults
    assert [[s.index for s in g] for g in aime.groups()] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert aime.groups()[2][0].metadata == {} and aime.groups()[2][0].label == "2"


def test_json_config_entry_overrides_pair_path(tmp_path: Path, files: dict[str, str]) -> None:
    config = tmp_path / "eval.json"
    config.write_text(
        json.dumps(
            {
                "datasets": [
                    {
                        "name": "aime",
                        "path": files["gpqa"],
                        "input_key": "q",
                        "temperature": 0,
                        "reward_key": "score",
                    }
                ]
            }
        )
    )
    args = Config(eval_prompt_data=["aime", files["aime"]], eval_config=str(config))
    (aime,) = resolve_eval_settings(args)
    assert aime.path == files["gpqa"] and aime.temperature == 0.0 and isinstance(aime.temperature, float)
    assert aime.reward_key == "score"


def test_eval_chat_template(files: dict[str, str], tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    args = Config(eval_prompt_data=["aime", files["aime"]], apply_chat_template=True)
    aime = load_eval_datasets(args, tiny_tokenizer)["aime"]
    assert aime.groups()[0][0].prompt == "<|im_start|>user\na0<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("eval: [1, 2]\n", "'eval' must be a mapping"),
        (
            "datasets:\n  x: {path: a.jsonl, temprature: 1}\n",
            r"dataset 'x' has unknown keys \['temprature'\]",
        ),
        ("datasets:\n  x: {path: a.jsonl, top_k: 0.5}\n", "dataset 'x' key 'top_k' must be int, got 0.5"),
        ("datasets:\n  x: {path: a.jsonl, n_samples_per_eval_prompt: true}\n", "must be int, got True"),
        ("datasets:\n  x: {path: a.jsonl, n_samples_per_eval_prompt: 0}\n", "must be >= 1"),
        ("datasets:\n  x: {}\n", "eval dataset 'x' has no path"),
        ("datasets:\n  - path: a.jsonl\n", "dataset entry 0 has no 'name'"),
        ("datasets:\n  - {name: x, path: a}\n  - {name: x, path: b}\n", "dataset 'x' is defined twice"),
        ("defaults: {n_sample: 2}\n", r"'defaults' has unknown keys \['n_sample'\]"),
        ("datasets: [a: 1\n", "cannot parse eval_config"),
    ],
)
def test_bad_eval_config(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(text)
    with pytest.raises(EvalConfigError, match=message) as info:
        resolve_eval_settings(Config(eval_config=str(config)))
    assert str(config) in str(info.value)


def test_missing_config_file_and_bad_eval_rows(tmp_path: Path) -> None:
    with pytest.raises(EvalConfigError, match="does not exist"):
        resolve_eval_settings(Config(eval_config=str(tmp_path / "nope.yaml")))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input": "a"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing label key 'label'"):
        load_eval_datasets(Config(eval_prompt_data=["bad", bad], label_key="label"))


def test_eval_groups_are_independent_copies_made_without_a_deepcopy_per_sample(
    tmp_path: Path, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each eval sample is a fresh copy of its prompt (as ``copy.deepcopy`` gives), built by the
    data source's copier: before, every sample of every eval group was a ``copy.deepcopy``."""
    import copy

    from miles_sdk import Sample

    args = Config(eval_prompt_data=["aime", files["aime"]], label_key="label", n_samples_per_eval_prompt=2)
    aime = load_eval_datasets(args)["aime"]
    deep_copied: list[object] = []
    real = copy.deepcopy

    def counting(value: object, *args: object, **kwargs: object) -> object:
        if isinstance(value, Sample):
            deep_copied.append(value)
        return real(value, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(copy, "deepcopy", counting)
    groups = aime.groups()
    assert deep_copied == []
    first, second = groups[0][0], groups[0][1]
    first.tokens.append(7)
    first.metadata["seen"] = True
    assert second.tokens == [] and "seen" not in second.metadata
    assert aime.groups()[0][0].tokens == [] and "seen" not in aime.groups()[0][0].metadata
