"""Shim of ``miles.utils.data``: ``read_file``, ``Dataset`` and ``get_minimum_num_micro_batch_size``.

``Dataset`` is built on :class:`miles_sdk.data.PromptDataset` (same rows, prompts, labels,
metadata and tools, too-long prompts dropped) with Miles's seeded per-epoch ``shuffle``. As
everywhere in the SDK, a malformed JSON line is an error naming it, where Miles prints and skips
it. Multimodal rows keep their raw inputs (``multimodal_keys``); the processor is not run here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from miles_sdk.data.dataset import PromptDataset, read_rows
from miles_sdk.types import Sample

__all__ = ["Dataset", "get_minimum_num_micro_batch_size", "read_file"]


def read_file(path: str) -> Iterator[dict[str, Any]]:
    """The rows of a ``.jsonl`` / ``.parquet`` file (``path@[start:end]`` slices), as dicts."""
    _, rows = read_rows(path)
    for row in rows:
        yield dict(row.data)


class Dataset:
    """Miles's prompt dataset: ``samples[i]`` in the current epoch's order, ``origin_samples`` in file order."""

    def __init__(
        self,
        path: str,
        tokenizer: Any,
        processor: Any,
        max_length: int | None,
        *,
        prompt_key: str = "text",
        multimodal_keys: Mapping[str, str] | None = None,
        label_key: str | None = None,
        tool_key: str | None = None,
        metadata_key: str = "metadata",
        seed: int = 42,
        apply_chat_template: bool = False,
        apply_chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        dataset = PromptDataset(
            path,
            tokenizer=tokenizer,
            input_key=prompt_key,
            label_key=label_key,
            metadata_key=metadata_key,
            tool_key=tool_key,
            multimodal_keys=multimodal_keys,
            apply_chat_template=apply_chat_template,
            apply_chat_template_kwargs=apply_chat_template_kwargs,
            max_prompt_len=max_length,
        )
        self.origin_samples: list[Sample] = list(dataset.samples)
        self.samples: list[Sample] = self.origin_samples
        self.epoch_id = -1
        self.seed = seed

    def shuffle(self, new_epoch_id: int) -> None:
        """Reorder the samples for ``new_epoch_id`` (the same order for the same seed and epoch)."""
        if self.epoch_id == new_epoch_id:
            return
        order = list(range(len(self.origin_samples)))
        random.Random(self.seed + new_epoch_id).shuffle(order)
        self.samples = [self.origin_samples[i] for i in order]
        self.epoch_id = new_epoch_id

    def __getitem__(self, idx: int) -> Sample:
        return self.samples[idx]

    def __len__(self) -> int:
        return len(self.samples)


def get_minimum_num_micro_batch_size(total_lengths: Sequence[int], max_tokens_per_gpu: int) -> int:
    """How many micro-batches of at most ``max_tokens_per_gpu`` tokens first-fit packing needs."""
    bins: list[int] = []
    for length in total_lengths:
        for i, used in enumerate(bins):
            if used + length <= max_tokens_per_gpu:
                bins[i] = used + length
                break
        else:
            bins.append(length)
    return len(bins)
