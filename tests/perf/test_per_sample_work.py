"""The fixed cost of a step (issue 21): the train and log-prob paths must not launch work per
sample. On a GPU every aten call on a device tensor is a kernel launch (and a blocking host copy a
stream stall), so a micro-batch of 64 samples cost hundreds of launches in the loss reducers, the
padding and the response-row slicing. These tests count aten calls (a dispatch mode, on the CPU)
and require the count not to grow with the number of samples."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from miles_sdk.algo.reducers import get_mean_of_sample_mean, masked_token_weights
from miles_sdk.backends._batching import SequenceRows, pad_tokens, to_device_rows
from miles_sdk.backends.torch_backend import TorchBackend
from miles_sdk.stages import TrainBatch
from miles_sdk.testing import small_config, tiny_policy

# Calls that only make views or read metadata: no kernel on a GPU.
_VIEWS = {"view", "_unsafe_view", "reshape", "slice", "select", "split_with_sizes", "detach", "alias",
          "t", "transpose", "unsqueeze", "squeeze", "expand", "as_strided", "lift_fresh"}  # fmt: skip


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name not in _VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _work(fn: Callable[..., object], *args: Any) -> collections.Counter[str]:
    with _Count() as count:
        fn(*args)
    return count.ops


def _masks(n: int) -> list[torch.Tensor]:
    return to_device_rows([[1.0] * (3 + i % 5) for i in range(n)], torch.float32, torch.device("cpu"))


def _reduce(lengths: list[int], masks: list[torch.Tensor], per_token: bool, values: torch.Tensor) -> None:
    get_mean_of_sample_mean(lengths, lengths, masks, per_token)(values)


def test_reducer_work_does_not_grow_with_the_samples() -> None:
    for per_token in (False, True):
        counts = []
        for n in (4, 64):
            masks = _masks(n)
            lengths = [m.numel() for m in masks]
            values = torch.randn(sum(lengths))
            counts.append(sum(_work(_reduce, lengths, masks, per_token, values).values()))
        assert counts[0] == counts[1], (per_token, counts)


def test_reducer_weights_match_the_per_sample_formula() -> None:
    masks = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])]
    lengths = [3, 2, 4]
    w = masked_token_weights(lengths, masks)
    expected = torch.cat([masks[0] / 2 / 3, masks[1] / 1 / 3, masks[2] / 3 / 3]).double()
    torch.testing.assert_close(w, expected)
    den = torch.tensor([4.0, 1.0, 2.0])
    torch.testing.assert_close(
        masked_token_weights(lengths, masks, denominators=den),
        torch.cat([masks[0] / 4 / 3, masks[1] / 1 / 3, masks[2] / 2 / 3]).double(),
    )
    torch.testing.assert_close(masked_token_weights(lengths, masks, True), torch.cat(masks).double() / 5)


def _pad_gather_backward(tokens: list[list[int]], hidden: torch.Tensor) -> None:
    ids, _ = pad_tokens(tokens, torch.device("cpu"))
    rows = SequenceRows(hidden[: ids.numel()], [i * ids.shape[1] for i in range(len(tokens))])
    picked = rows.all_scoring_rows([len(t) for t in tokens], [2] * len(tokens))
    picked.sum().backward()


def test_padding_and_response_rows_are_one_gather_whatever_the_samples() -> None:
    counts = []
    for n in (4, 64):
        tokens = [list(range(2, 6 + i % 7)) for i in range(n)]
        hidden = torch.randn(n * 16, 8, requires_grad=True)
        counts.append(sum(_work(_pad_gather_backward, tokens, hidden).values()))
    assert counts[0] == counts[1], counts


class _TorchCalls(TorchFunctionMode):
    """Python-level torch calls (``Tensor.to``, ``torch.cat``, ``.shape`` ...): host work that a
    dispatch mode does not see when it ends up a no-op (``.to`` of a tensor already there)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


def _train_data(n: int) -> tuple[TorchBackend, TrainBatch]:
    model, _ = tiny_policy("unit", seed=0)
    config = small_config(micro_batch_size=n, global_batch_size=n, n_samples_per_prompt=2, rollout_batch_size=n // 2)
    backend = TorchBackend(config, model)
    backend.set_num_rollout(4)
    tokens = [[3 + (i + j) % 40 for j in range(6 + i % 4)] for i in range(n)]
    data = TrainBatch(
        tokens=tokens,
        response_lengths=[3] * n,
        rewards=[float(i % 2) for i in range(n)],
        raw_reward=[float(i % 2) for i in range(n)],
        truncated=[0] * n,
        sample_indices=list(range(n)),
        loss_masks=[[1, 1, 0] for _ in range(n)],
        advantages=[torch.full((3,), float(i % 2) - 0.5) for i in range(n)],
        returns=[torch.zeros(3) for _ in range(n)],
    )
    return backend, data


def test_the_loss_does_not_touch_each_sample_through_torch() -> None:
    """Per-sample rows reach the loss as views of one flat tensor, and the loss joins them
    again for free: before, every micro-batch cost a ``.to`` per sample for each of seven
    per-sample inputs and a ``cat`` over them (~1.8k Python-level torch calls per demo step)."""
    per_size = []
    for n in (8, 32):
        backend, data = _train_data(n)
        backend.train(0, data)
        with _TorchCalls() as calls:
            backend.train(1, data)
        per_size.append(calls.calls)
    small, large = per_size
    growth = {k: large[k] - small[k] for k in large if large[k] - small[k] > 0}
    # What remains per sample (11 calls): the shape checks of the loss and the reducer (numel,
    # dim, shape reads) and the host rows of tensor-valued keys (as_tensor, reshape).
    assert large["to"] == small["to"], growth
    assert large["cat"] == small["cat"], growth
    assert sum(growth.values()) <= 12 * (32 - 8), growth


def test_a_train_micro_batch_costs_the_same_work_for_8_and_32_samples() -> None:
    """The whole train step (forward, loss, metrics, backward, AdamW): only the model's own work,
    whose kernel count does not depend on the batch size, and a fixed overhead."""
    per_size = []
    for n in (8, 32):
        model, _ = tiny_policy("unit", seed=0)
        config = small_config(
            micro_batch_size=n, global_batch_size=n, n_samples_per_prompt=2, rollout_batch_size=n // 2
        )
        backend = TorchBackend(config, model)
        backend.set_num_rollout(4)
        tokens = [[3 + (i + j) % 40 for j in range(6 + i % 4)] for i in range(n)]
        responses = [3] * n
        data = TrainBatch(
            tokens=tokens,
            response_lengths=responses,
            rewards=[float(i % 2) for i in range(n)],
            raw_reward=[float(i % 2) for i in range(n)],
            truncated=[0] * n,
            sample_indices=list(range(n)),
            loss_masks=[[1, 1, 0] for _ in range(n)],
            advantages=[torch.full((3,), float(i % 2) - 0.5) for i in range(n)],
            returns=[torch.zeros(3) for _ in range(n)],
        )
        backend.train(0, data)  # first step: optimizer state is created
        per_size.append(_work(backend.train, 1, data))
    small, large = per_size
    assert sum(large.values()) == sum(small.values()), (large - small) + (small - large)


def test_a_micro_batch_moves_to_the_device_in_two_copies(monkeypatch: Any) -> None:
    """The token ids in one copy and every float key (masks, advantages, returns, old/rollout
    log-probs) in another: a pinned copy per key was a pin and a launch each, per micro-batch."""
    import miles_sdk.backends._batching as batching

    copies: list[int] = []
    real = batching.host_to_device

    def counted(host: torch.Tensor, device: torch.device) -> torch.Tensor:
        copies.append(host.numel())
        return real(host, device)

    monkeypatch.setattr(batching, "host_to_device", counted)
    _, data = _train_data(8)
    data = attrs.evolve(
        data,
        rollout_log_probs=[torch.tensor([-0.5 - i, -1.0, -2.0]) for i in range(8)],
        log_probs=[torch.full((3,), -0.25) for _ in range(8)],
    )
    idx = [1, 3, 4, 6]
    mb = batching.micro_batch(data, idx, torch.device("cpu"))
    assert len(copies) == 2, copies
    for key in ("loss_masks", "advantages", "returns", "rollout_log_probs", "log_probs"):
        source = getattr(data, key)
        got = getattr(mb, key)
        if source is None:
            assert got is None, key
            continue
        assert [r.tolist() for r in got] == [torch.as_tensor(source[i], dtype=torch.float32).tolist() for i in idx], key
