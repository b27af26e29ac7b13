"""Shape checks on what hooks return, where the loop receives it.

A hook that returns the wrong shape (a flat list where groups are due, a coroutine from a method
that must be sync) would otherwise fail several calls later inside the SDK, with a message about
the SDK's code (``'Sample' object is not iterable``). Each check here raises :class:`HookResultError`
naming the hook, where it came from and the type expected, at the point the loop first gets it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch

from miles_sdk.types import Sample

__all__ = [
    "HookResultError",
    "check_groups",
    "check_loss_result",
    "check_reducer_result",
    "check_reward_post_process_result",
    "check_tis_result",
    "check_train_data",
    "describe_hook",
]


class HookResultError(TypeError):
    """A hook returned a value of the wrong type or shape; the message names the hook."""


def describe_hook(
    obj: object, method: str | None = None, *, flag: str | None = None, path: str | None = None
) -> str:
    """``module.Qualname[.method]``, plus ``(from --flag path)`` when it was loaded from a flag."""
    if method is not None:
        target: Any = obj if isinstance(obj, type) else type(obj)
    else:
        target = getattr(obj, "func", obj)  # functools.partial
    module = getattr(target, "__module__", None)
    qual = getattr(target, "__qualname__", None) or type(target).__qualname__
    name = f"{module}.{qual}" if module else str(qual)
    if method is not None:
        name += f".{method}"
    if flag is not None and path is not None:
        name += f" (from {flag} {path})"
    return name


def _type_name(value: object) -> str:
    if isinstance(value, list | tuple) and value:
        return f"{type(value).__name__}[{type(value[0]).__name__}, ...]"
    return type(value).__name__


def _refuse_awaitable(value: object, where: str, expected: str) -> None:
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if callable(close):
            close()  # no "coroutine was never awaited" warning on top of this error
        raise HookResultError(
            f"{where} returned an awaitable ({type(value).__name__}): it must be a plain (sync) def "
            f"returning {expected}; remove `async` from it"
        )


def check_groups(value: object, where: str, *, allow_empty: bool = True) -> list[list[Sample]]:
    """``value`` as ``list[list[Sample]]`` (one inner list per prompt group), or a clear error."""
    expected = "list[list[Sample]] (one list of samples per prompt group)"
    _refuse_awaitable(value, where, expected)
    if not isinstance(value, list):
        raise HookResultError(f"{where} returned {_type_name(value)}; expected {expected}")
    for i, group in enumerate(value):
        if isinstance(group, Sample):
            raise HookResultError(
                f"{where} returned a flat list of Sample (element {i} is a Sample); expected {expected}. "
                "Wrap each prompt's samples in a list: [[s1, s2, ...], [s3, s4, ...]]"
            )
        if not isinstance(group, list):
            raise HookResultError(
                f"{where} returned a list whose element {i} is {_type_name(group)}; expected {expected}"
            )
        if not group and not allow_empty:
            raise HookResultError(f"{where} returned an empty group at position {i}; expected {expected}")
        for j, sample in enumerate(group):
            if not isinstance(sample, Sample):
                raise HookResultError(
                    f"{where} returned group {i} whose element {j} is {_type_name(sample)}; expected {expected}"
                )
    return value


def _float_list(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and all(isinstance(v, int | float) for v in value)
    )


def check_reward_post_process_result(
    value: object, n_samples: int, where: str
) -> tuple[list[float], list[float]]:
    """A ``RewardPostProcessFn`` result: ``(raw_rewards, rewards)``, one float each per sample."""
    expected = f"a tuple (raw_rewards, rewards) of two lists of {n_samples} floats (one per sample)"
    _refuse_awaitable(value, where, expected)
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise HookResultError(f"{where} returned {_type_name(value)}; expected {expected}")
    raw, rewards = value
    for name, part in (("raw_rewards", raw), ("rewards", rewards)):
        if not _float_list(part):
            raise HookResultError(f"{where} returned {name} as {_type_name(part)}; expected {expected}")
        if len(part) != n_samples:
            raise HookResultError(
                f"{where} returned {len(part)} {name} for {n_samples} samples; expected {expected}"
            )
    return [float(v) for v in raw], [float(v) for v in rewards]


_REQUIRED_TRAIN_KEYS = ("tokens", "response_lengths", "rewards", "loss_masks")


def check_train_data(value: object, where: str) -> Mapping[str, Any]:
    """A ``ConvertSamplesToTrainDataFn`` result: a dict of per-sample lists (see ``TrainData``)."""
    expected = f"a dict of per-sample lists with keys {list(_REQUIRED_TRAIN_KEYS)} (TrainData)"
    _refuse_awaitable(value, where, expected)
    if not isinstance(value, Mapping):
        raise HookResultError(f"{where} returned {_type_name(value)}; expected {expected}")
    missing = [k for k in _REQUIRED_TRAIN_KEYS if k not in value]
    if missing:
        raise HookResultError(f"{where} returned a dict without {missing}; expected {expected}")
    lengths: dict[str, int] = {}
    for key in _REQUIRED_TRAIN_KEYS:
        column = value[key]
        if not isinstance(column, Sequence) or isinstance(column, str | bytes):
            raise HookResultError(f"{where} returned {key!r} as {_type_name(column)}; expected {expected}")
        lengths[key] = len(column)
    if len(set(lengths.values())) > 1:
        raise HookResultError(
            f"{where} returned lists of different lengths {lengths}; expected one entry per sample in each"
        )
    return value


def _scalar_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1


def check_loss_result(value: object, where: str) -> tuple[torch.Tensor, Mapping[str, Any]]:
    """A ``LossFn`` result: ``(loss, metrics)``, a scalar tensor and a dict of scalars."""
    expected = "a tuple (loss, metrics): a scalar tensor and a dict of metric name -> scalar"
    _refuse_awaitable(value, where, expected)
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise HookResultError(f"{where} returned {_type_name(value)}; expected {expected}")
    loss, metrics = value
    if not _scalar_tensor(loss):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else None
        got = f"a tensor of shape {shape}" if shape is not None else _type_name(loss)
        raise HookResultError(f"{where} returned loss as {got}; expected {expected}")
    if not isinstance(metrics, Mapping):
        raise HookResultError(f"{where} returned metrics as {_type_name(metrics)}; expected {expected}")
    return loss, metrics


def check_tis_result(
    value: object, n_samples: int, where: str
) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
    """A ``TISFn`` result: ``(pg_loss, masks, metrics)`` with one mask per sample."""
    expected = f"a tuple (pg_loss, masks, metrics): a tensor, {n_samples} per-sample mask tensors and a dict"
    _refuse_awaitable(value, where, expected)
    if not isinstance(value, tuple | list) or len(value) != 3:
        raise HookResultError(f"{where} returned {_type_name(value)}; expected {expected}")
    pg_loss, masks, metrics = value
    if not isinstance(pg_loss, torch.Tensor):
        raise HookResultError(f"{where} returned pg_loss as {_type_name(pg_loss)}; expected {expected}")
    if not isinstance(masks, list | tuple) or not all(isinstance(m, torch.Tensor) for m in masks):
        raise HookResultError(f"{where} returned masks as {_type_name(masks)}; expected {expected}")
    if len(masks) != n_samples:
        raise HookResultError(
            f"{where} returned {len(masks)} masks for {n_samples} samples; expected {expected}"
        )
    if not isinstance(metrics, Mapping):
        raise HookResultError(f"{where} returned metrics as {_type_name(metrics)}; expected {expected}")
    return pg_loss, list(masks), cast(dict[str, torch.Tensor], dict(metrics))


def check_reducer_result(value: object, where: str) -> torch.Tensor:
    """What the callable a ``PGLossReducer`` built returns: a scalar tensor."""
    if not _scalar_tensor(value):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        got = f"a tensor of shape {shape}" if shape is not None else _type_name(value)
        raise HookResultError(
            f"{where}: its reducer returned {got}; expected a scalar tensor (the sum over samples of the "
            "reduced per-token values)"
        )
    assert isinstance(value, torch.Tensor)
    return value
