"""Checks on a /generate request as SGLang makes them (``SamplingParams.verify``), answered with
400 and the field named, so a client mistake never reaches the engine as a 500 or garbage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from miles_sdk.engines._serving_guard import ApiError
from miles_sdk.engines.base import SamplingParams

__all__ = ["check_input_ids", "parse_sampling_params"]

_SAMPLING_KEYS = frozenset(SamplingParams.__annotations__)
# SGLang keys the engine interface has no slot for: accepted when they ask for SGLang's default
# behaviour (so Miles's usual dicts pass), refused otherwise (silently dropping a penalty would
# change what is sampled).
_NEUTRAL: dict[str, object] = {
    "n": 1,
    "min_new_tokens": 0,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
}
_ANY_VALUE = frozenset({"spaces_between_special_tokens", "logit_bias", "custom_params"})
_BOOLS = ("ignore_eos", "skip_special_tokens", "no_stop_trim")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"sampling_params.{key} must be a finite number, got {value!r}")
    return float(value)


def _int(key: str, value: object) -> int:
    if not _is_int(value):
        raise ApiError(400, f"sampling_params.{key} must be an integer, got {value!r}")
    return cast(int, value)


def parse_sampling_params(raw: object, *, vocab_size: int | None = None) -> SamplingParams:
    """``sampling_params`` of a request -> checked :class:`SamplingParams` (``stop`` as a list).

    Raises:
        ApiError: 400 naming the key: an unknown or unsupported key, a wrong type, NaN, or a value
            out of SGLang's range (temperature >= 0, 0 < top_p <= 1, top_k = -1 or >= 1,
            max_new_tokens >= 0, stop token ids in the vocabulary).
    """
    if raw is None:
        return SamplingParams()
    if not isinstance(raw, Mapping):
        raise ApiError(400, f"sampling_params must be an object, got {type(raw).__name__}")
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SAMPLING_KEYS:
            if value is not None:
                params[key] = value
        elif key in _ANY_VALUE or (key in _NEUTRAL and value in (None, _NEUTRAL[key])):
            continue
        else:
            hint = f" (only {_NEUTRAL[key]!r} is supported)" if key in _NEUTRAL else ""
            raise ApiError(400, f"sampling_params key {key!r}={value!r} is not supported by this server{hint}")
    if "temperature" in params and _number("temperature", params["temperature"]) < 0:
        raise ApiError(400, f"sampling_params.temperature must be >= 0, got {params['temperature']!r}")
    if "top_p" in params and not 0 < _number("top_p", params["top_p"]) <= 1:
        raise ApiError(400, f"sampling_params.top_p must be in (0, 1], got {params['top_p']!r}")
    if "top_k" in params and (k := _int("top_k", params["top_k"])) != -1 and k < 1:
        raise ApiError(400, f"sampling_params.top_k must be -1 (disabled) or >= 1, got {k}")
    if "max_new_tokens" in params and _int("max_new_tokens", params["max_new_tokens"]) < 0:
        raise ApiError(400, f"sampling_params.max_new_tokens must be >= 0, got {params['max_new_tokens']}")
    if "sampling_seed" in params:
        _int("sampling_seed", params["sampling_seed"])
    for key in _BOOLS:
        if key in params and not isinstance(params[key], bool):
            raise ApiError(400, f"sampling_params.{key} must be true or false, got {params[key]!r}")
    if "stop" in params:
        stop = params["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ApiError(400, f"sampling_params.stop must be a string or a list of non-empty strings, got {stop!r}")
        params["stop"] = stop
    if "stop_token_ids" in params:
        ids = params["stop_token_ids"]
        if not isinstance(ids, list):
            raise ApiError(400, f"sampling_params.stop_token_ids must be a list of token ids, got {ids!r}")
        check_input_ids(ids, vocab_size=vocab_size, field="sampling_params.stop_token_ids")
    return cast(SamplingParams, params)


def check_input_ids(ids: object, *, vocab_size: int | None, field: str = "input_ids") -> list[int]:
    """``ids`` as a list of token ids in ``[0, vocab_size)``; 400 naming the first bad one."""
    if not isinstance(ids, list):
        raise ApiError(400, f"{field} must be a list of token ids, got {type(ids).__name__}")
    for i, t in enumerate(ids):
        if not _is_int(t):
            raise ApiError(400, f"{field}[{i}] must be an integer token id, got {str(t)[:50]!r}")
        if t < 0 or (vocab_size is not None and t >= vocab_size):
            bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
            raise ApiError(400, f"{field}[{i}] = {t} is not a token id {bound}")
    return cast(list[int], ids)
