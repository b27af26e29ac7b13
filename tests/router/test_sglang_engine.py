"""SGLangEngine's request/reply mapping, against a fake standing in for sglang.Engine."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from miles_sdk.engines.base import FinishReason, InferenceEngine
from miles_sdk.engines.sglang_engine import SGLangEngine, SGLangUnavailableError


class FakeTokenizerManager:
    def __init__(self) -> None:
        self.aborts: list[tuple[str, bool]] = []

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborts.append((rid, abort_all))


class FakeSGLang:
    """Answers like sglang.Engine.async_generate with return_logprob=True (tuples, string version)."""

    def __init__(self, update_result: object = (True, "ok")) -> None:
        self.tokenizer_manager = FakeTokenizerManager()
        self.calls: list[dict[str, Any]] = []
        self.tensor_updates: list[list[tuple[str, torch.Tensor]]] = []
        self.disk_updates: list[str] = []
        self.update_result = update_result

    async def async_generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool | list[bool] | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        self.calls.append(
            {
                "prompt": prompt,
                "sampling_params": sampling_params,
                "input_ids": input_ids,
                "return_logprob": return_logprob,
                **kwargs,
            }
        )
        return {
            "text": " b",
            "output_ids": [32, 98],
            "meta_info": {
                "id": "x",
                "finish_reason": {"type": "length", "length": 2},
                "prompt_tokens": 3,
                "weight_version": "default",
                "output_token_logprobs": [(-0.5, 32, None), (-1.5, 98, None)],
            },
        }

    def update_weights_from_tensor(
        self,
        named_tensors: Sequence[tuple[str, torch.Tensor]],
        load_format: str | None = None,
        flush_cache: bool = True,
    ) -> object:
        self.tensor_updates.append(list(named_tensors))
        return self.update_result

    def update_weights_from_disk(self, model_path: str, load_format: str | None = None) -> object:
        self.disk_updates.append(model_path)
        return {"success": True, "message": ""}


async def test_generate_maps_request_and_reply() -> None:
    fake = FakeSGLang()
    engine = SGLangEngine(fake, weight_version=3)
    assert isinstance(engine, InferenceEngine)
    out = await engine.generate((1, 2, 3), {"temperature": 0.7, "max_new_tokens": 2, "stop": ["\n"]})
    assert fake.calls == [
        {
            "prompt": None,
            "input_ids": [1, 2, 3],
            "return_logprob": True,
            "sampling_params": {"temperature": 0.7, "max_new_tokens": 2, "stop": ["\n"]},
        }
    ]
    assert out.token_ids == [32, 98] and out.log_probs == [-0.5, -1.5]
    assert out.finish_reason is FinishReason.LENGTH
    assert out.weight_version == 3  # sglang's "default" version falls back to ours
    assert out.text == " b"


async def test_abort_all_aborts_everything() -> None:
    fake = FakeSGLang()
    await SGLangEngine(fake).abort_all()
    assert fake.tokenizer_manager.aborts == [("", True)]


def test_update_weights_sends_tensors_and_bumps_version() -> None:
    fake = FakeSGLang()
    weights = {"w": torch.ones(2, requires_grad=True)}
    engine = SGLangEngine(fake, weights=lambda: weights.items())
    engine.update_weights()
    assert engine.weight_version == 1
    (sent,) = fake.tensor_updates
    assert [name for name, _ in sent] == ["w"] and not sent[0][1].requires_grad
    engine.update_weights(10)
    assert engine.weight_version == 10
    engine.update_weights_from_disk("/ckpt")
    assert fake.disk_updates == ["/ckpt"] and engine.weight_version == 11


def test_failed_update_raises_with_sglang_message() -> None:
    engine = SGLangEngine(FakeSGLang(update_result=(False, "shape mismatch")), weights=list)
    with pytest.raises(RuntimeError, match="update_weights_from_tensor failed: shape mismatch"):
        engine.update_weights()
    assert engine.weight_version == 0
    with pytest.raises(RuntimeError, match="no weight source"):
        SGLangEngine(FakeSGLang()).update_weights()


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="sglang is installed")
def test_missing_sglang_names_the_extra() -> None:
    with pytest.raises(SGLangUnavailableError, match=r"miles-sdk\[sglang\]"):
        SGLangEngine(model_path="/nowhere")
