"""`SGLangEngine`: the InferenceEngine interface over sglang's offline ``sglang.Engine``.

SGLang cannot be installed on the development machines, so this adapter is tested against a fake
standing in for ``sglang.Engine`` (see docs/sglang.md); the request/reply mapping is the same
one :class:`~miles_sdk.engines.http_client.HttpEngine` uses against SGLang's HTTP API.

Weight sync: ``update_weights()`` pushes ``weights()`` (name, tensor) pairs through
``update_weights_from_tensor``; ``update_weights_from_disk(path)`` loads a saved HF directory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast

import torch

from miles_sdk._untyped_deps import import_sglang
from miles_sdk.engines.base import EngineOutput, SamplingParams
from miles_sdk.engines.http_client import parse_generate_response

__all__ = ["SGLangEngine", "SGLangEngineLike", "SGLangUnavailableError"]

logger = logging.getLogger(__name__)

NamedTensors = Callable[[], Iterable[tuple[str, torch.Tensor]]]
"""Returns the policy's current ``(name, tensor)`` pairs (e.g. ``lambda: model.state_dict().items()``)."""


class SGLangUnavailableError(ImportError):
    """sglang is not installed."""


class _TokenizerManagerLike(Protocol):
    def abort_request(self, rid: str = "", abort_all: bool = False) -> None: ...


class SGLangEngineLike(Protocol):
    """The part of ``sglang.Engine`` the adapter calls (a test fake implements just this)."""

    @property
    def tokenizer_manager(self) -> _TokenizerManagerLike: ...

    async def async_generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool | list[bool] | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]: ...

    def update_weights_from_tensor(
        self,
        named_tensors: Sequence[tuple[str, torch.Tensor]],
        load_format: str | None = None,
        flush_cache: bool = True,
    ) -> Any: ...

    def update_weights_from_disk(self, model_path: str, load_format: str | None = None) -> Any: ...


def _check_update(result: object, what: str) -> None:
    # SGLang has answered weight updates as (success, message), as a dict, or as an object with
    # .success over its versions; a False in any of them is an error the trainer must see.
    success: object = True
    message: object = ""
    if isinstance(result, tuple) and result:
        success, message = result[0], result[1] if len(result) > 1 else ""
    elif isinstance(result, dict):
        success, message = result.get("success", True), result.get("message", "")
    elif hasattr(result, "success"):
        success, message = result.success, getattr(result, "message", "")
    if success is False:
        raise RuntimeError(f"SGLangEngine: sglang.Engine.{what} failed: {message}")


class SGLangEngine:
    """An InferenceEngine driving ``sglang.Engine`` in-process.

    Args:
        engine: an existing ``sglang.Engine`` (or a stand-in); when None one is built from
            ``engine_kwargs`` (sglang's ServerArgs, e.g. ``model_path=...``).
        weights: the trainer's current named tensors, sent on :meth:`update_weights`.
        weight_version: the starting version.

    Raises:
        SGLangUnavailableError: ``engine`` is None and sglang is not installed.
    """

    def __init__(
        self,
        engine: SGLangEngineLike | None = None,
        *,
        weights: NamedTensors | None = None,
        weight_version: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        if engine is None:
            try:
                sglang = import_sglang()
            except ImportError as e:
                raise SGLangUnavailableError(
                    "SGLangEngine needs sglang, which is not installed: pip install 'miles-sdk[sglang]' "
                    "(or use rollout_engine='http' against a running SGLang server)"
                ) from e
            engine = cast(SGLangEngineLike, sglang.Engine(**engine_kwargs))
        elif engine_kwargs:
            raise TypeError(f"SGLangEngine: engine= given, so {sorted(engine_kwargs)} would be ignored")
        self.engine = engine
        self._weights = weights
        self._weight_version = weight_version

    @property
    def weight_version(self) -> int:
        return self._weight_version

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        reply = await self.engine.async_generate(
            input_ids=[int(t) for t in input_ids], sampling_params=dict(sampling_params), return_logprob=True
        )
        return parse_generate_response(reply, default_version=self._weight_version, source="sglang.Engine")

    async def abort_all(self) -> None:
        """Abort every running request; they return with finish reason ``abort``."""
        self.engine.tokenizer_manager.abort_request(rid="", abort_all=True)

    def update_weights(self, version: int | None = None) -> None:
        """Send ``weights()`` to the engine, then bump the version.

        sglang's update call blocks on its own event loop: call this from synchronous code (the
        Trainer's sync step), not from inside a coroutine.
        """
        if self._weights is None:
            raise RuntimeError(
                "SGLangEngine.update_weights: no weight source; pass weights=lambda: model.state_dict().items() "
                "or call update_weights_from_disk(path)"
            )
        named = [(name, tensor.detach()) for name, tensor in self._weights()]
        _check_update(
            self.engine.update_weights_from_tensor(named_tensors=named, flush_cache=True),
            "update_weights_from_tensor",
        )
        self._weight_version = self._weight_version + 1 if version is None else version

    def update_weights_from_disk(self, model_path: str, version: int | None = None) -> None:
        """Load an HF checkpoint directory into the engine, then bump the version."""
        _check_update(self.engine.update_weights_from_disk(model_path), "update_weights_from_disk")
        self._weight_version = self._weight_version + 1 if version is None else version
