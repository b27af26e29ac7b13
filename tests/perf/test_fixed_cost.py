"""The fixed cost of a step (issue 21): a prompt is copied into its group by unpickling one blob
and tokenised once per group, with the same results as a deep copy and an encode per sample."""

from __future__ import annotations

from typing import Any

from miles_sdk.config import Config
from miles_sdk.data import RolloutDataSource
from miles_sdk.data.source import _copier
from miles_sdk.rollout.context import RolloutContext
from miles_sdk.rollout.generate import _ENCODED, tokenize_prompt
from miles_sdk.testing import tiny_policy
from miles_sdk.testing.engine import ScriptedEngine
from miles_sdk.types import Sample


def _source(rows: list[dict[str, Any]]) -> RolloutDataSource:
    cfg = Config(label_key="label", rollout_batch_size=2, n_samples_per_prompt=3, metadata_key="metadata")
    return RolloutDataSource(cfg, dataset=rows)


def test_group_mates_are_independent_copies() -> None:
    rows = [{"input": "p0", "label": "0", "metadata": {"id": 0, "tags": ["a"]}}]
    group = _source(rows).get_samples(1)[0]
    assert [s.index for s in group] == [0, 1, 2] and {s.group_index for s in group} == {0}
    first, second = group[0], group[1]
    first.metadata["tags"].append("b")
    first.tokens.append(7)
    first.weight_versions.append(1)
    assert second.metadata == {"id": 0, "tags": ["a"]}
    assert second.tokens == [] and second.weight_versions == []
    again = _source(rows).get_samples(1)[0][0]  # the dataset's row is untouched
    assert again.metadata["tags"] == ["a"]


def test_an_unpicklable_prompt_is_deep_copied() -> None:
    prompt = Sample(prompt="p", label="x", metadata={"check": lambda s: s == "x", "seen": [1]})
    make = _copier(prompt)
    a, b = make(), make()
    assert a.metadata["check"] is prompt.metadata["check"]  # a lambda does not pickle; deepcopy keeps it
    assert a.metadata["seen"] == [1] and a.metadata["seen"] is not b.metadata["seen"]


def test_prompts_are_tokenised_once_per_text() -> None:
    _, tokenizer = tiny_policy("unit")
    calls = []
    encode = tokenizer.encode

    def counting(text: str, **kw: Any) -> list[int]:
        calls.append(text)
        return list(encode(text, **kw))

    tokenizer.encode = counting  # type: ignore[method-assign]
    ctx = RolloutContext(engine=ScriptedEngine([]), tokenizer=tokenizer)
    args = Config()
    samples = [Sample(prompt="1+2=", index=i) for i in range(4)] + [Sample(prompt="3+4=", index=9)]
    ids = [tokenize_prompt(args, s, ctx) for s in samples]
    assert calls == ["1+2=", "3+4="]
    assert ids[0] == ids[3] == list(encode("1+2=", add_special_tokens=False))
    ids[0].append(5)  # each caller owns its list
    assert tokenize_prompt(args, samples[1], ctx) == ids[3]
    tokenizer.add_tokens(["zzz_new"])  # a tokenizer that gains tokens is asked again
    tokenize_prompt(args, samples[0], ctx)
    assert calls == ["1+2=", "3+4=", "1+2="]
    assert tokenizer in _ENCODED
