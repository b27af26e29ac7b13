"""Miles's newer calling convention, typed: ``GenerateFnInput`` -> ``GenerateFnOutput`` generate
functions and rollout classes built from a ``RolloutFnConstructorInput``.

Newer Miles code writes ``async def generate(input: GenerateFnInput) -> GenerateFnOutput`` and
``class MyRollout: __init__(self, input: RolloutFnConstructorInput); __call__(self, input:
RolloutFnTrainInput | RolloutFnEvalInput)``. :func:`adapt_generate_fn` and
:func:`adapt_rollout_fn` turn them into this SDK's ``GenerateFn`` / ``RolloutFn`` (Miles's own
``LegacyGenerateFnAdapter`` does the reverse); :func:`miles_sdk.loading.load_hook` applies them to
``--custom-generate-function-path`` and ``--rollout-function-path`` targets written that way.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from miles_sdk.types import RolloutFnEvalOutput, RolloutFnTrainOutput, Sample

if TYPE_CHECKING:
    from miles_sdk.config import Config
    from miles_sdk.engines.base import SamplingParams
    from miles_sdk.hooks import DataSource, GenerateFn, RolloutFn, RolloutOutput

__all__ = [
    "GenerateFnInput",
    "GenerateFnOutput",
    "RolloutFnConstructorInput",
    "RolloutFnEvalInput",
    "RolloutFnInput",
    "RolloutFnTrainInput",
    "adapt_generate_fn",
    "adapt_new_convention",
    "adapt_rollout_fn",
    "is_input_style_generate_fn",
    "is_rollout_class",
]


@dataclass(frozen=True)
class RolloutFnConstructorInput:
    args: Config
    data_source: DataSource


@dataclass(frozen=True)
class RolloutFnTrainInput:
    rollout_id: int
    weight_version: int | None = None
    """The engine's weight version, None before the first weight update."""

    @property
    def evaluation(self) -> bool:
        return False


@dataclass(frozen=True)
class RolloutFnEvalInput:
    rollout_id: int
    generate_state: Any = None
    weight_version: str | None = None
    hf_dir: str | None = None

    @property
    def evaluation(self) -> bool:
        return True


RolloutFnInput: TypeAlias = RolloutFnTrainInput | RolloutFnEvalInput


@dataclass(frozen=True)
class GenerateFnInput:
    state: Any
    """The shim's ``GenerateState(args)`` (``.args``, ``.tokenizer``, ``.semaphore``)."""
    sample: Sample
    sampling_params: dict[str, Any]
    evaluation: bool

    @property
    def args(self) -> Config:
        return cast("Config", self.state.args)


@dataclass(frozen=True)
class GenerateFnOutput:
    samples: Sample | list[Sample]


InputStyleGenerateFn: TypeAlias = Callable[
    [GenerateFnInput], Awaitable[GenerateFnOutput | Sample | list[Sample]]
]


def is_input_style_generate_fn(fn: object) -> bool:
    """Miles's test (``_is_legacy_generate_fn`` negated): fewer than 3 parameters, or the first
    is named ``input``. Classes are instantiated without arguments first, as Miles does."""
    if inspect.isclass(fn):
        return True
    try:
        params = list(inspect.signature(fn).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return bool(positional) and (len(positional) < 3 or positional[0].name == "input")


def adapt_generate_fn(fn: object) -> GenerateFn:
    """A ``(args, sample, sampling_params)`` GenerateFn calling ``fn(GenerateFnInput)``."""
    target = cast("InputStyleGenerateFn", fn() if inspect.isclass(fn) else fn)

    async def generate(
        args: Config, sample: Sample, sampling_params: SamplingParams
    ) -> Sample | list[Sample]:
        from miles_sdk.compat.miles.rollout.sglang_rollout import GenerateState

        state = GenerateState(args)
        out = await target(GenerateFnInput(state, sample, dict(sampling_params), evaluation=False))
        return out.samples if isinstance(out, GenerateFnOutput) else out

    generate.__qualname__ = f"adapt_generate_fn({getattr(fn, '__qualname__', fn)})"
    return generate


def is_rollout_class(fn: object) -> bool:
    """A class whose constructor takes one argument (the ``RolloutFnConstructorInput``)."""
    if not inspect.isclass(fn):
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return len([p for p in params if p.default is p.empty and p.kind is not p.VAR_KEYWORD]) == 1


def adapt_rollout_fn(cls: type) -> RolloutFn:
    """A RolloutFn that builds ``cls(RolloutFnConstructorInput(args, data_source))`` on first call
    (one instance per data source) and calls it with a ``RolloutFn*Input``; an awaitable result is awaited."""
    instances: dict[int, Any] = {}

    async def rollout(
        args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False
    ) -> RolloutOutput:
        from miles_sdk.rollout.context import get_rollout_context

        instance = instances.get(id(data_source))
        if instance is None:
            instance = cls(RolloutFnConstructorInput(args, data_source))
            instances[id(data_source)] = instance
        version = get_rollout_context().engine.weight_version
        given: RolloutFnInput = (
            RolloutFnEvalInput(rollout_id, weight_version=str(version))
            if evaluation
            else RolloutFnTrainInput(rollout_id, weight_version=version)
        )
        out = instance(given)
        if inspect.isawaitable(out):
            out = await out
        if not isinstance(out, RolloutFnTrainOutput | RolloutFnEvalOutput):
            out = RolloutFnEvalOutput(data=out) if evaluation else RolloutFnTrainOutput(samples=out)
        return out

    rollout.__qualname__ = f"adapt_rollout_fn({cls.__qualname__})"
    return rollout


def adapt_new_convention(obj: object, protocol: str) -> object:
    """``obj`` as this SDK's hook when it is written in Miles's newer convention, else unchanged:
    a ``GenerateFnInput`` generate function (or class) for ``GenerateFn``, a rollout class built from
    ``RolloutFnConstructorInput`` for ``RolloutFn``."""
    if protocol == "GenerateFn" and is_input_style_generate_fn(obj):
        return adapt_generate_fn(obj)
    if protocol == "RolloutFn" and is_rollout_class(obj):
        return adapt_rollout_fn(cast("type", obj))
    return obj
