"""Shim of ``miles.utils.processing_utils``: tokenizer and processor loading, image encoding.

``load_tokenizer(name, chat_template_path=...)`` is cached per (name, template, kwargs) as in Miles,
and a ``chat_template_path`` file replaces the tokenizer's chat template (a missing file is an error
naming it). The multimodal helpers follow Miles's; ``process_vision_info`` needs ``qwen_vl_utils``
for processors without ``extract_media``, as in Miles.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import io
import logging
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "build_processor_kwargs",
    "call_processor",
    "encode_image_for_rollout_engine",
    "extract_multimodal_train_inputs",
    "load_processor",
    "load_tokenizer",
    "process_vision_info",
    "processor_requires_medias",
]

logger = logging.getLogger(__name__)

DEFAULT_PATCH_SIZE = 14
_tokenizers: dict[tuple[Any, ...], Any] = {}


def _cache_key(name_or_path: str, chat_template_path: str | None, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    items = tuple(sorted(kwargs.items()))
    try:
        hash(items)
    except TypeError:
        return None  # unhashable kwargs: load without caching
    return (name_or_path, chat_template_path, items)


def load_tokenizer(name_or_path: str, chat_template_path: str | None = None, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(name_or_path, **kwargs)``, its chat template replaced by the
    file ``chat_template_path`` when given (``Config.chat_template_path``); cached."""
    key = _cache_key(name_or_path, chat_template_path, kwargs)
    if key is not None and key in _tokenizers:
        return _tokenizers[key]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if chat_template_path:
        if not os.path.isfile(chat_template_path):
            raise FileNotFoundError(
                f"chat_template_path {chat_template_path!r} is not a file (--chat-template-path; a Jinja template)"
            )
        with open(chat_template_path, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
        logger.info("loaded the chat template of %s from %s", name_or_path, chat_template_path)
    if key is not None:
        _tokenizers[key] = tokenizer
    return tokenizer


def load_processor(name_or_path: str, **kwargs: Any) -> Any:
    """The checkpoint's multimodal processor, or None when it has none (a text model)."""
    from transformers import AutoProcessor, PreTrainedTokenizerBase, ProcessorMixin

    try:
        processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        logger.warning("no processor loaded from %s: %s", name_or_path, exc)
        return None
    if isinstance(processor, PreTrainedTokenizerBase) or not isinstance(processor, ProcessorMixin):
        return None  # a plain tokenizer came back: text only
    return processor


def build_processor_kwargs(multimodal_inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Processor kwargs: token ids as lists, modality outputs as torch tensors (per-modality dicts)."""
    result = dict(multimodal_inputs or {})
    result["text_kwargs"] = {**result.get("text_kwargs", {}), "return_tensors": None}
    for key in ("audio_kwargs", "images_kwargs", "videos_kwargs"):
        result[key] = {**result.get(key, {}), "return_tensors": "pt"}
    return result


def processor_requires_medias(processor: Any) -> bool:
    """True for processors that take ``medias=`` next to ``text=`` (Kimi-VL style)."""
    try:
        params = inspect.signature(processor).parameters
    except (TypeError, ValueError):
        return hasattr(processor, "media_processor")
    return "medias" in params and "text" in params


def call_processor(processor: Any, text: Any, multimodal_inputs: Mapping[str, Any] | None = None) -> Any:
    """Run ``processor`` on ``text`` with the images / videos of ``multimodal_inputs``."""
    inputs = dict(multimodal_inputs or {})
    if processor_requires_medias(processor):
        medias = [{"type": "image", "image": image} for image in inputs.get("images") or []]
        medias += [{"type": "video", "video": video} for video in inputs.get("videos") or []]
        return processor(text=text, medias=medias)
    return processor(text=text, **build_processor_kwargs(inputs))


def extract_multimodal_train_inputs(processor_output: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the trainer needs of a processor output (pixel values, grids, ...); None when nothing."""
    dropped = {"input_ids", "attention_mask", "mm_token_type_ids"}
    return {k: v for k, v in processor_output.items() if k not in dropped} or None


def process_vision_info(prompt: Any, processor: Any) -> dict[str, Any]:
    """``{"images": ..., "videos": ...}`` of a chat prompt, through the processor or qwen_vl_utils."""
    if hasattr(processor, "extract_media"):
        result: dict[str, Any] = processor.extract_media(prompt)
        return result
    try:
        qwen_process_vision_info = importlib.import_module("qwen_vl_utils").process_vision_info
    except ImportError as exc:
        raise ImportError("process_vision_info needs qwen_vl_utils (pip install qwen-vl-utils)") from exc
    patch_size = getattr(getattr(processor, "image_processor", None), "patch_size", DEFAULT_PATCH_SIZE)
    images, videos = qwen_process_vision_info(prompt, image_patch_size=patch_size)
    return {"images": images, "videos": videos}


def encode_image_for_rollout_engine(image: Any) -> str:
    """A PIL image as the ``data:image/png;base64,...`` URL the engines accept (converted to RGB)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
