# Narrow stub: only what miles_sdk.engines.sglang_engine touches of sglang's offline Engine.
from collections.abc import Sequence
from typing import Any

import torch

class _TokenizerManager:
    def abort_request(self, rid: str = "", abort_all: bool = False) -> None: ...

class Engine:
    tokenizer_manager: _TokenizerManager
    def __init__(self, **kwargs: Any) -> None: ...
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
    def flush_cache(self) -> Any: ...
    def shutdown(self) -> None: ...
