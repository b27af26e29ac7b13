"""Hypothesis strategies for property tests of hooks and RL math.

Needs ``hypothesis`` (a dev dependency); nothing else in miles_sdk imports this module.

Prompts and responses are printable ASCII whose token ids are the byte values, which is what the
tiny test tokenizer decodes them to (``decode(sample.tokens) == prompt + response``), so no
tokenizer is built while drawing examples.

.. code-block:: python

    @given(masked_token_tensors())
    def test_reducer_ignores_masked_tokens(batch: MaskedTokenBatch) -> None: ...
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import attrs
import torch
from hypothesis import strategies as st

from miles_sdk.types import Sample, SampleStatus, TrainData

__all__ = [
    "MaskedTokenBatch",
    "batches",
    "groups",
    "masked_token_tensors",
    "rewards",
    "samples",
    "train_data",
]

_ALPHABET = string.ascii_letters + string.digits + " +-*=?.,\n"


def rewards() -> st.SearchStrategy[float]:
    """Finite scalar rewards in [-1, 1], with 0 and 1 (the usual verifier values) drawn often."""
    return st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-1.0, 1.0, allow_nan=False, width=32))


def _log_probs(n: int) -> st.SearchStrategy[list[float]]:
    return st.lists(st.floats(-20.0, 0.0, allow_nan=False, width=32), min_size=n, max_size=n)


def _size(draw: st.DrawFn, value: int | st.SearchStrategy[int] | None, low: int, high: int) -> int:
    """A count given as an int, a strategy, or None (drawn from ``low..high``)."""
    if value is None:
        return draw(st.integers(low, high))
    return value if isinstance(value, int) else draw(value)


def _mask(n: int) -> st.SearchStrategy[list[int]]:
    # All-zero and all-one masks are the edge cases reducers get wrong; draw them on purpose.
    return st.one_of(
        st.just([1] * n), st.just([0] * n), st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)
    )


@st.composite
def samples(
    draw: st.DrawFn,
    *,
    prompt: str | None = None,
    min_response_len: int = 1,
    max_response_len: int = 8,
    max_prompt_len: int = 8,
    reward: st.SearchStrategy[float] | None = None,
    scored: bool = True,
    statuses: Sequence[SampleStatus] = (SampleStatus.COMPLETED, SampleStatus.TRUNCATED),
    with_loss_mask: bool | None = None,
    with_rollout_log_probs: bool = True,
    index: int = 0,
    group_index: int = 0,
) -> Sample:
    """A finished Sample whose tokens, response_length, loss_mask and log-probs agree.

    ``with_loss_mask=None`` draws either an explicit mask (possibly all zeros) or None.
    ``scored=False`` leaves ``reward`` None. The sample passes :meth:`Sample.validate`.
    """
    prompt_text = (
        prompt if prompt is not None else draw(st.text(_ALPHABET, min_size=1, max_size=max_prompt_len))
    )
    response = draw(st.text(_ALPHABET, min_size=min_response_len, max_size=max_response_len))
    n = len(response)
    has_mask = draw(st.booleans()) if with_loss_mask is None else with_loss_mask
    sample = Sample(
        group_index=group_index,
        index=index,
        rollout_id=0,
        prompt=prompt_text,
        tokens=list(prompt_text.encode()) + list(response.encode()),
        response=response,
        response_length=n,
        reward=draw(reward if reward is not None else rewards()) if scored else None,
        loss_mask=draw(_mask(n)) if has_mask else None,
        rollout_log_probs=draw(_log_probs(n)) if with_rollout_log_probs else None,
        weight_versions=[0],
        status=draw(st.sampled_from(list(statuses))),
    )
    sample.validate()
    return sample


@st.composite
def groups(
    draw: st.DrawFn,
    n: int | st.SearchStrategy[int] | None = None,
    *,
    group_index: int = 0,
    start_index: int | None = None,
    min_response_len: int = 1,
    max_response_len: int = 8,
    reward: st.SearchStrategy[float] | None = None,
    with_loss_mask: bool | None = None,
) -> list[Sample]:
    """One prompt's group of ``n`` samples (default 1-6): same prompt and group_index,
    consecutive indices."""
    size = _size(draw, n, 1, 6)
    prompt = draw(st.text(_ALPHABET, min_size=1, max_size=8))
    first = group_index * size if start_index is None else start_index
    return [
        draw(
            samples(
                prompt=prompt,
                min_response_len=min_response_len,
                max_response_len=max_response_len,
                reward=reward,
                with_loss_mask=with_loss_mask,
                index=first + i,
                group_index=group_index,
            )
        )
        for i in range(size)
    ]


@st.composite
def batches(
    draw: st.DrawFn,
    num_groups: int | st.SearchStrategy[int] | None = None,
    n: int | st.SearchStrategy[int] | None = None,
    *,
    reward: st.SearchStrategy[float] | None = None,
) -> list[list[Sample]]:
    """A rollout's samples: ``num_groups`` groups (default 1-4) of the same size ``n`` (default
    1-4), indices 0..G*n-1."""
    g = _size(draw, num_groups, 1, 4)
    size = _size(draw, n, 1, 4)
    return [draw(groups(size, group_index=i, reward=reward)) for i in range(g)]


@st.composite
def train_data(
    draw: st.DrawFn,
    num_samples: int | st.SearchStrategy[int] | None = None,
    *,
    max_response_len: int = 8,
    with_rollout_log_probs: bool = True,
) -> TrainData:
    """A consistent TrainData: every per-sample list has ``num_samples`` (default 1-6) entries and every
    per-token list matches ``response_lengths``."""
    k = _size(draw, num_samples, 1, 6)
    drawn = [
        draw(samples(max_response_len=max_response_len, with_loss_mask=True, index=i, group_index=i))
        for i in range(k)
    ]
    raw = [s.get_reward_value() for s in drawn]
    data = TrainData(
        tokens=[list(s.tokens) for s in drawn],
        response_lengths=[s.response_length for s in drawn],
        rewards=draw(st.lists(rewards(), min_size=k, max_size=k)),
        raw_reward=raw,
        truncated=[int(s.status is SampleStatus.TRUNCATED) for s in drawn],
        sample_indices=[i for i in range(k)],
        loss_masks=[s.effective_loss_mask() for s in drawn],
    )
    if with_rollout_log_probs:
        data["rollout_log_probs"] = [list(s.rollout_log_probs or []) for s in drawn]
    return data


@attrs.frozen
class MaskedTokenBatch:
    """Per-token values of a micro-batch in Miles's layout: per-sample 1-D tensors over the
    response tokens, with their loss masks and lengths."""

    values: list[torch.Tensor]
    """One 1-D tensor per sample, length ``response_lengths[i]``."""
    loss_masks: list[torch.Tensor]
    """0/1 float tensors shaped like ``values``; some rows may be all zeros."""
    response_lengths: list[int]
    total_lengths: list[int]
    """``prompt_length + response_length`` per sample."""
    extra: dict[str, list[torch.Tensor]] = attrs.field(factory=dict)
    """More per-token tensors laid out like ``values`` (names from ``extra_fields``)."""

    @property
    def flat_values(self) -> torch.Tensor:
        """``values`` concatenated: the flat per-token tensor a reducer or TIS function receives."""
        return torch.cat(self.values) if self.values else torch.zeros(0)

    @property
    def flat_masks(self) -> torch.Tensor:
        """``loss_masks`` concatenated."""
        return torch.cat(self.loss_masks) if self.loss_masks else torch.zeros(0)


@st.composite
def masked_token_tensors(
    draw: st.DrawFn,
    *,
    batch_size: int | st.SearchStrategy[int] | None = None,
    min_len: int = 1,
    max_len: int = 12,
    max_prompt_len: int = 6,
    elements: st.SearchStrategy[float] | None = None,
    extra_fields: Sequence[str] = (),
    dtype: torch.dtype = torch.float32,
) -> MaskedTokenBatch:
    """Variable-length per-sample tensors with masks, for reducers, losses and TIS functions.

    Draws all-masked rows, all-unmasked rows and single-token responses often (the cases that
    break per-sample means). ``batch_size`` defaults to 1-6 samples; ``elements`` defaults to finite floats in [-10, 10]; each name in
    ``extra_fields`` gets its own tensors of the same shapes.
    """
    k = _size(draw, batch_size, 1, 6)
    if k < 1 or min_len < 1 or max_len < min_len:
        raise ValueError(
            f"masked_token_tensors: need batch_size >= 1 and 1 <= min_len <= max_len, "
            f"got {k}, {min_len}, {max_len}"
        )
    elems = elements if elements is not None else st.floats(-10.0, 10.0, allow_nan=False, width=32)
    lengths = [draw(st.one_of(st.just(min_len), st.integers(min_len, max_len))) for _ in range(k)]

    def column(n: int) -> torch.Tensor:
        return torch.tensor(draw(st.lists(elems, min_size=n, max_size=n)), dtype=dtype)

    values = [column(n) for n in lengths]
    masks = [torch.tensor(draw(_mask(n)), dtype=dtype) for n in lengths]
    prompts = [draw(st.integers(1, max_prompt_len)) for _ in range(k)]
    extra = {name: [column(n) for n in lengths] for name in extra_fields}
    return MaskedTokenBatch(
        values=values,
        loss_masks=masks,
        response_lengths=lengths,
        total_lengths=[p + n for p, n in zip(prompts, lengths, strict=True)],
        extra=extra,
    )
