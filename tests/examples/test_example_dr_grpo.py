"""examples/dr_grpo: the reducer divides by the constant (hand-computed) and a run loads it by path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

import examples.dr_grpo.reducer as reducer_module
from examples.dr_grpo import run
from examples.dr_grpo.reducer import get_pg_loss_reducer
from miles_sdk.algo import constant_divisor_reducer
from miles_sdk.hooks import LossReducer, PGLossReducer
from miles_sdk.testing import check_hook
from miles_sdk.testing.strategies import MaskedTokenBatch, masked_token_tensors

# Two samples: [1, 2, 3] with the 3 masked out, and [4, 5].
X = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
MASKS = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0])]


def test_reducer_divides_each_token_sum_by_the_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    # (1 + 2) + (4 + 5) = 12, summed over samples as Miles's reducers are: 12 / 1000.
    reduce = get_pg_loss_reducer([5, 4], [3, 2], MASKS)
    assert float(reduce(X)) == pytest.approx(0.012)
    # The constant is read when the reducer is built: 12 / 10.
    monkeypatch.setattr(reducer_module, "DIVISOR", 10.0)
    assert float(get_pg_loss_reducer([5, 4], [3, 2], MASKS)(X)) == pytest.approx(1.2)
    # The default reducer would give 3/2 + 9/2 = 6: Dr.GRPO ignores answer lengths.


def test_masked_positions_never_leak_and_per_token_mode_is_the_token_sum() -> None:
    x = X.clone()
    x[2] = float("nan")
    assert float(get_pg_loss_reducer([5, 4], [3, 2], MASKS)(x)) == pytest.approx(0.012)
    assert float(get_pg_loss_reducer([5, 4], [3, 2], MASKS, True)(X)) == pytest.approx(12.0)  # token sum


def test_reducer_rejects_a_tensor_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        get_pg_loss_reducer([5, 4], [3, 2], MASKS)(torch.zeros(4))
    check_hook(get_pg_loss_reducer, PGLossReducer)


def _reduce(factory: PGLossReducer, b: MaskedTokenBatch) -> LossReducer:
    return factory(b.total_lengths, b.response_lengths, b.loss_masks, False)


@settings(max_examples=40, deadline=None)
@given(masked_token_tensors())
def test_reducer_agrees_with_the_library_constant_divisor_reducer(b: MaskedTokenBatch) -> None:
    ours = _reduce(get_pg_loss_reducer, b)(b.flat_values)
    library = _reduce(constant_divisor_reducer(reducer_module.DIVISOR), b)(b.flat_values)
    torch.testing.assert_close(ours, library.to(ours.dtype))


def test_run_loads_the_reducer_by_its_miles_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(
        total_lengths: list[int],
        response_lengths: list[int],
        loss_masks: list[torch.Tensor],
        calculate_per_token_loss: bool = False,
    ) -> LossReducer:
        calls.append(len(loss_masks))
        return get_pg_loss_reducer(total_lengths, response_lengths, loss_masks, calculate_per_token_loss)

    monkeypatch.setattr(reducer_module, "get_pg_loss_reducer", counting)
    assert run.main(["--num-rollout", "2", "--output-dir", str(tmp_path)]) == 0
    assert calls and sum(calls) == 2 * 16  # every sample of both rollouts went through it
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in steps if "train/pg_loss" in r]) == 2
