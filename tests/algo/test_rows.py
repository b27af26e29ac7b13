"""Rows: per-sample views of one flat tensor that the loss joins again without a cat."""

from __future__ import annotations

import pickle

import torch

from miles_sdk.algo._device import Rows, detach_rows, join_rows


def test_intact_rows_join_to_the_flat_tensor_itself() -> None:
    flat = torch.arange(6.0)
    rows = Rows(flat, [2, 1, 3])
    assert [r.tolist() for r in rows] == [[0.0, 1.0], [2.0], [3.0, 4.0, 5.0]]
    assert join_rows(rows).data_ptr() == flat.data_ptr()
    assert join_rows(rows, dtype=torch.float64).dtype == torch.float64


def test_a_hook_that_replaces_or_appends_rows_gets_what_it_left() -> None:
    rows = Rows(torch.arange(4.0), [2, 2])
    rows[1] = torch.tensor([9.0, 9.0])
    assert not rows.intact()
    assert join_rows(rows).tolist() == [0.0, 1.0, 9.0, 9.0]
    more = Rows(torch.arange(2.0), [1, 1])
    more.append(torch.tensor([7.0]))
    assert join_rows(more).tolist() == [0.0, 1.0, 7.0]


def test_gradients_through_joined_rows_equal_those_through_a_cat() -> None:
    x = torch.randn(5, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    (join_rows(Rows(x * 2, [3, 2])) * torch.arange(5.0)).sum().backward()
    (torch.cat(list(torch.split(y * 2, [3, 2]))) * torch.arange(5.0)).sum().backward()
    assert x.grad is not None and y.grad is not None
    torch.testing.assert_close(x.grad, y.grad)


def test_rows_pickle_and_detach_like_a_plain_list() -> None:
    x = torch.arange(3.0, requires_grad=True)
    rows = Rows(x * 1, [1, 2])
    back = pickle.loads(pickle.dumps(detach_rows(rows)))
    assert type(back) is list and [r.tolist() for r in back] == [[0.0], [1.0, 2.0]]
    detached = detach_rows(rows)
    assert isinstance(detached, Rows) and not join_rows(detached).requires_grad
