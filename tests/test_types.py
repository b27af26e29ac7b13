"""Sample round trips and validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miles_sdk import Sample
from miles_sdk.types import SampleValidationError

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.text(max_size=5))


@st.composite
def any_sample(draw: st.DrawFn) -> Sample:
    prompt_len = draw(st.integers(0, 6))
    resp_len = draw(st.integers(0, 6))
    tokens = draw(
        st.lists(st.integers(0, 300), min_size=prompt_len + resp_len, max_size=prompt_len + resp_len)
    )
    reward = draw(
        st.one_of(
            st.none(),
            st.floats(-5, 5, allow_nan=False),
            st.dictionaries(st.sampled_from(["score", "acc", "pred"]), _json_scalars, max_size=3),
        )
    )
    return Sample(
        group_index=draw(st.one_of(st.none(), st.integers(0, 100))),
        index=draw(st.one_of(st.none(), st.integers(0, 1000))),
        prompt=draw(st.one_of(st.text(max_size=10), st.just([{"role": "user", "content": "hi"}]))),
        tokens=tokens,
        response=draw(st.text(max_size=10)),
        response_length=resp_len,
        label=draw(st.one_of(st.none(), st.text(max_size=5))),
        reward=reward,
        loss_mask=draw(
            st.one_of(st.none(), st.lists(st.integers(0, 1), min_size=resp_len, max_size=resp_len))
        ),
        rollout_log_probs=draw(
            st.one_of(st.none(), st.lists(st.floats(-20, 0), min_size=resp_len, max_size=resp_len))
        ),
        weight_versions=draw(st.lists(st.integers(0, 5), max_size=3)),
        status=draw(st.sampled_from(list(Sample.Status))),
        metadata=draw(st.dictionaries(st.text(max_size=4), _json_scalars, max_size=3)),
        remove_sample=draw(st.booleans()),
    )


@given(any_sample())
def test_round_trip_is_lossless(sample: Sample) -> None:
    data = sample.to_dict()
    assert data["status"] == sample.status.value
    again = Sample.from_dict(data)
    assert again == sample
    sample.validate()


def test_round_trip_does_not_alias() -> None:
    s = Sample(tokens=[1, 2, 3], response_length=1, metadata={"a": [1]})
    d = s.to_dict()
    d["metadata"]["a"].append(2)
    assert s.metadata == {"a": [1]}


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(KeyError, match="unknown keys"):
        Sample.from_dict({"tokens": [], "bogus": 1})


def test_validate_names_the_bad_field() -> None:
    s = Sample(index=7, tokens=[1, 2, 3], response_length=2, loss_mask=[1])
    with pytest.raises(SampleValidationError, match=r"index=7.*loss_mask"):
        s.validate()
    with pytest.raises(SampleValidationError, match="response_length"):
        Sample(tokens=[1], response_length=3).validate()


def test_reward_value_reads_dict_through_key_and_never_defaults_to_zero() -> None:
    assert Sample(reward=0.5).get_reward_value() == 0.5
    assert Sample(reward={"score": -1.0, "acc": False}).get_reward_value("score") == -1.0
    with pytest.raises(ValueError, match="no reward"):
        Sample(index=3).get_reward_value()
    with pytest.raises(KeyError, match="reward_key 'x'"):
        Sample(reward={"score": 1.0}).get_reward_value("x")
    with pytest.raises(ValueError, match="set reward_key"):
        Sample(reward={"score": 1.0}).get_reward_value()


def test_effective_loss_mask() -> None:
    assert Sample(tokens=[1, 2, 3], response_length=2).effective_loss_mask() == [1, 1]
    assert Sample(tokens=[1, 2, 3], response_length=2, loss_mask=[0, 1]).effective_loss_mask() == [0, 1]
    assert Sample(tokens=[1, 2, 3], response_length=2, remove_sample=True).effective_loss_mask() == [0, 0]
    assert Sample(tokens=[5, 6, 7], response_length=2).response_tokens == [6, 7]


def test_nan_reward_is_invalid() -> None:
    with pytest.raises(SampleValidationError, match="NaN"):
        Sample(reward=math.nan).validate()
