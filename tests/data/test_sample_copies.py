"""The data source's copies of a prompt (issue 21): equal to ``copy.deepcopy(prompt)``, sharing
no mutable container with the prompt or with each other, and made without unpickling or
deep-copying a whole sample per copy when the prompt is plain data."""

from __future__ import annotations

import copy
import enum
import pickle
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miles_sdk.config import Config
from miles_sdk.data import RolloutDataSource
from miles_sdk.data.source import _copier
from miles_sdk.demo.task import make_addition_dataset
from miles_sdk.types import RewardSpec, Sample


class Colour(enum.Enum):
    RED = "red"


class Tagged(Sample):
    """A subclass: copied as deepcopy copies it (its own type)."""


def _containers(value: object, out: dict[int, object]) -> dict[int, object]:
    """Every mutable container reachable from ``value`` (a Sample's fields included), by id."""
    if isinstance(value, Sample):
        value = vars(value)
    if isinstance(value, dict | list | torch.Tensor) and id(value) not in out:
        out[id(value)] = value
        if isinstance(value, dict):
            for item in (*value.keys(), *value.values()):
                _containers(item, out)
        elif isinstance(value, list):
            for item in value:
                _containers(item, out)
    elif isinstance(value, tuple):
        for item in value:
            _containers(item, out)
    return out


def _plain(sample: Sample) -> dict[str, Any]:
    """A sample's fields, tensors as lists (a dict holding a tensor cannot be compared with ==)."""
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in vars(sample).items()}


def _assert_independent_copies(prompt: Sample) -> tuple[Sample, Sample]:
    make = _copier(prompt)
    a, b = make(), make()
    reference = copy.deepcopy(prompt)
    assert type(a) is type(reference) and list(vars(a)) == list(vars(reference))
    assert _plain(a) == _plain(b) == _plain(reference)
    mine, theirs = _containers(a, {}), {**_containers(prompt, {}), **_containers(b, {})}
    assert not set(mine) & set(theirs), "a copy shares a mutable container with the prompt or a group mate"
    return a, b


def test_a_flat_prompt_is_copied_without_unpickling_or_deepcopy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's prompts (text, label, empty lists) and chat prompts with flat metadata: no
    pickle.loads and no copy.deepcopy per sample (the old code unpickled every copy: 32 here)."""
    calls: list[str] = []
    loads, deepcopy = pickle.loads, copy.deepcopy

    def counting_loads(*args: Any, **kw: Any) -> Any:
        calls.append("loads")
        return loads(*args, **kw)

    def counting_deepcopy(*args: Any, **kw: Any) -> Any:
        calls.append("deepcopy")
        return deepcopy(*args, **kw)

    chat = [
        {
            "input": [{"role": "user", "content": f"what is {i}+1?"}],
            "label": str(i + 1),
            "metadata": {"id": i},
        }
        for i in range(4)
    ]
    demo_src = RolloutDataSource(
        Config(label_key="label", rollout_batch_size=2, n_samples_per_prompt=16),
        dataset=make_addition_dataset(0),
    )
    chat_src = RolloutDataSource(
        Config(label_key="label", rollout_batch_size=2, n_samples_per_prompt=4, metadata_key="metadata"),
        dataset=chat,
    )
    monkeypatch.setattr(pickle, "loads", counting_loads)
    monkeypatch.setattr(copy, "deepcopy", counting_deepcopy)
    demo = demo_src.get_samples(2)
    groups = chat_src.get_samples(2)
    monkeypatch.undo()
    assert calls == []
    assert [len(g) for g in demo] == [16, 16] and [s.index for s in demo[1]] == list(range(16, 32))
    first, second = groups[0][0], groups[0][1]
    assert isinstance(first.prompt, list)
    first.prompt[0]["content"] = "changed"
    first.metadata["id"] = 99
    assert isinstance(second.prompt, list) and second.prompt[0]["content"] == "what is 0+1?"
    assert second.metadata == {"id": 0} and chat_src.dataset is not None
    assert chat_src.dataset[0].prompt == [{"role": "user", "content": "what is 0+1?"}]


def test_copies_equal_deepcopy_for_every_kind_of_field() -> None:
    nested = Sample(
        prompt=[{"role": "user", "content": "hi", "parts": [{"text": "hi"}]}],
        tokens=[1, 2, 3],
        label={"answers": ["a", "b"], "n": 2},
        metadata={"rm_type": "math", "tools": [{"name": "f", "args": ("x", 1)}], "colour": Colour.RED},
        reward_spec=RewardSpec(rm_type="f1"),
        status=Sample.Status.COMPLETED,
        train_metadata={"w": 1.5},
    )
    a, b = _assert_independent_copies(nested)
    a.metadata["tools"][0]["name"] = "g"
    assert isinstance(a.prompt, list)
    a.prompt[0]["parts"][0]["text"] = "changed"
    assert b.metadata["tools"][0]["name"] == "f" and nested.metadata["tools"][0]["name"] == "f"
    assert isinstance(nested.prompt, list) and nested.prompt[0]["parts"][0]["text"] == "hi"

    with_tensor = Sample(prompt="p", teacher_log_probs=torch.tensor([-0.5, -1.0]))
    a, _ = _assert_independent_copies(with_tensor)
    assert isinstance(a.teacher_log_probs, torch.Tensor)
    assert torch.equal(a.teacher_log_probs, torch.tensor([-0.5, -1.0]))

    extra = Sample(prompt="p")
    extra.custom_state = {"turn": [0]}  # type: ignore[attr-defined]  # hooks may add attributes
    a, _ = _assert_independent_copies(extra)
    assert a.custom_state == {"turn": [0]}  # type: ignore[attr-defined]

    _assert_independent_copies(Tagged(prompt="p", metadata={"id": 1}))


def test_a_container_shared_by_two_fields_stays_shared_in_a_copy() -> None:
    """deepcopy keeps one object reached twice as one object; so does the copy."""
    steps = [1, 2]
    prompt = Sample(prompt="p", metadata={"steps": steps}, train_metadata={"steps": steps})
    a, b = _assert_independent_copies(prompt)
    assert a.train_metadata is not None and a.metadata["steps"] is a.train_metadata["steps"]
    assert a.metadata["steps"] is not b.metadata["steps"]


def test_an_unpicklable_field_is_deep_copied() -> None:
    def check(text: str) -> bool:
        return text == "x"

    prompt = Sample(prompt="p", label=[check], metadata={"seen": [1]})  # a local function does not pickle
    a, _ = _assert_independent_copies(prompt)
    assert a.label == [check] and a.label is not prompt.label


_atoms = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
_trees = st.recursive(
    _atoms,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    prompt=st.text(max_size=5)
    | st.lists(st.dictionaries(st.text(max_size=4), _atoms, max_size=3), max_size=3),
    tokens=st.lists(st.integers(0, 1000), max_size=6),
    label=_trees,
    metadata=st.dictionaries(st.text(max_size=4), _trees, max_size=4),
    train_metadata=st.none() | st.dictionaries(st.text(max_size=4), _trees, max_size=3),
)
def test_copies_of_any_plain_data_prompt_equal_deepcopy_and_share_nothing(
    prompt: Any,
    tokens: list[int],
    label: Any,
    metadata: dict[str, Any],
    train_metadata: dict[str, Any] | None,
) -> None:
    _assert_independent_copies(
        Sample(prompt=prompt, tokens=tokens, label=label, metadata=metadata, train_metadata=train_metadata)
    )
