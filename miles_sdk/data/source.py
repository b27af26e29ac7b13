"""Serving prompt groups: Miles's ``RolloutDataSource`` and ``RolloutDataSourceWithBuffer``.

Semantics (as Miles): prompts are read sequentially; on wrap the epoch increments and, with
``rollout_shuffle``, the order is reshuffled with seed ``rollout_seed + epoch`` (the same
permutation Miles draws, from a private RNG rather than the global one). Each prompt is
deep-copied ``n_samples_per_prompt`` times; ``group_index`` and ``index`` grow monotonically.

State: position, epoch and indices, plus the buffer (Miles does not persist its buffer, so
groups returned by a partial rollout were lost across a restart; here they are kept).
``save``/``load`` use Miles's layout, ``{dir}/rollout/global_dataset_state_dict_{rollout_id}.pt``,
and read Miles-written files too.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from miles_sdk.config import Config, ConfigError
from miles_sdk.data._copy import copier
from miles_sdk.data.buffer import check_groups, pop_first, take_from_buffer
from miles_sdk.data.dataset import DataInput, DatasetError, PromptDataset
from miles_sdk.types import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from miles_sdk.hooks import BufferFilterFn

__all__ = [
    "DataSourceStateError",
    "RolloutDataSource",
    "RolloutDataSourceWithBuffer",
    "load_tokenizer",
    "num_rollout_for_epochs",
    "state_path",
]

logger = logging.getLogger(__name__)

_copier = copier
"""A prompt's group copies (:func:`miles_sdk.data._copy.copier`), under the name tests read."""

STATE_FORMAT = "miles_sdk.data_source/1"
_STATE_FILE = re.compile(r"^global_dataset_state_dict_(\d+)\.pt$")


class DataSourceStateError(ValueError):
    """A saved data-source state that cannot be restored (missing save dir, wrong shape)."""


def state_path(root: str, rollout_id: int) -> str:
    """Where the data-source state of ``rollout_id`` lives under checkpoint dir ``root`` (Miles layout)."""
    return os.path.join(root, "rollout", f"global_dataset_state_dict_{rollout_id}.pt")


def _latest_rollout_id(root: str) -> int | None:
    folder = os.path.join(root, "rollout")
    if not os.path.isdir(folder):
        return None
    ids = [int(m.group(1)) for name in os.listdir(folder) if (m := _STATE_FILE.match(name))]
    return max(ids) if ids else None


def load_tokenizer(args: Config) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(args.hf_checkpoint)``, as Miles loads it (remote code trusted:
    the checkpoint is the model being trained)."""
    if args.hf_checkpoint is None:
        raise ConfigError("the data source needs a tokenizer: pass tokenizer= or set hf_checkpoint")
    from transformers import AutoTokenizer

    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        args.hf_checkpoint, trust_remote_code=True
    )
    return tokenizer


def num_rollout_for_epochs(args: Config, dataset_size: int) -> int:
    """Rollout steps to run: ``num_rollout`` when set, else ``num_epoch * (dataset_size //
    rollout_batch_size)`` (Miles's conversion; a partial last batch of an epoch is not counted)."""
    if args.num_rollout is not None:
        if args.num_epoch is not None:
            logger.info("both num_rollout and num_epoch are set; num_epoch is ignored (as in Miles)")
        return args.num_rollout
    if args.num_epoch is None:
        raise ConfigError("set num_rollout (--num-rollout) or num_epoch (--num-epoch)")
    per_epoch = dataset_size // args.rollout_batch_size
    if per_epoch * args.num_epoch <= 0:
        raise ConfigError(
            f"num_epoch={args.num_epoch} over {dataset_size} prompts with rollout_batch_size="
            f"{args.rollout_batch_size} gives no rollout steps; lower rollout_batch_size or set num_rollout"
        )
    return per_epoch * args.num_epoch


class RolloutDataSource:
    """Sequential, epoch-aware prompt groups from a dataset. Read-only: ``add_samples`` raises.

    ``dataset`` overrides ``args.prompt_data``: a path, row dicts, a ``datasets.Dataset`` or a
    ready :class:`PromptDataset`. ``tokenizer`` is needed for ``apply_chat_template`` and
    ``rollout_max_prompt_len``; when omitted it is loaded from ``args.hf_checkpoint``, so the
    class also works as a ``DataSourceFactory`` (``--data-source-path``).
    With ``rollout_global_dataset=False`` and no data, it serves empty Samples (Miles behaviour).
    """

    def __init__(
        self,
        args: Config,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dataset: DataInput | PromptDataset | None = None,
    ) -> None:
        self.args = args
        self.epoch_id = 0
        self.sample_offset = 0
        self.sample_group_index = 0
        self.sample_index = 0
        self.metadata: dict[str, Any] = {}
        """Free-form state hooks may keep here (Miles's ``update_metadata``); saved with the state."""
        self.dataset: PromptDataset | None = None
        if isinstance(dataset, PromptDataset):
            self.dataset = dataset
        elif dataset is not None or (args.rollout_global_dataset and args.prompt_data is not None):
            needs_tokenizer = args.apply_chat_template or args.rollout_max_prompt_len is not None
            if tokenizer is None and needs_tokenizer:
                tokenizer = load_tokenizer(args)
            self.dataset = PromptDataset.from_config(args, dataset, tokenizer=tokenizer)
        elif args.rollout_global_dataset:
            raise ConfigError(f"{type(self).__name__}: set prompt_data (--prompt-data) or pass dataset=")
        self._order: Sequence[int] | npt.NDArray[np.int64] = ()
        self._shuffle_for(self.epoch_id)

    # -- reading -------------------------------------------------------------------------------

    @property
    def dataset_size(self) -> int:
        """Prompts per epoch (after the length filter); 0 without a dataset."""
        return 0 if self.dataset is None else len(self.dataset)

    @property
    def epoch(self) -> int:
        """The epoch the next prompt comes from (increments when the dataset wraps)."""
        return self.epoch_id

    def _shuffle_for(self, epoch: int) -> None:
        if not self.args.rollout_shuffle:
            self._order = range(self.dataset_size)  # no list of a million ints
            return
        order = list(range(self.dataset_size))
        random.Random(self.args.rollout_seed + epoch).shuffle(order)
        # Kept as 8-byte ints (a list holds a 36-byte object per row): the same permutation.
        self._order = order if len(order) < 4096 else np.asarray(order, dtype=np.int64)

    def _next_prompts(self, count: int) -> list[Sample]:
        if self.dataset is None:
            return [Sample() for _ in range(count)]
        prompts: list[Sample] = []
        skipped = 0  # lazy datasets skip too-long prompts as they are drawn
        while len(prompts) < count:
            if self.sample_offset >= len(self._order):
                self.epoch_id += 1
                self.sample_offset = 0
                self._shuffle_for(self.epoch_id)
            prompt = self.dataset.prompt_at(int(self._order[self.sample_offset]))
            self.sample_offset += 1
            if prompt is not None:
                prompts.append(prompt)
                skipped = 0
                continue
            skipped += 1
            if skipped >= self.dataset_size:
                raise DatasetError(
                    f"prompt dataset {self.dataset.name!r}: all {self.dataset_size} prompts are longer than "
                    f"rollout_max_prompt_len={self.args.rollout_max_prompt_len} tokens"
                )
        return prompts

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        """``num_samples`` new groups of ``n_samples_per_prompt`` deep copies of the next prompts."""
        if num_samples < 0:
            raise ValueError(f"get_samples: num_samples must be >= 0, got {num_samples}")
        groups: list[list[Sample]] = []
        for prompt in self._next_prompts(num_samples):
            group: list[Sample] = []
            fresh_copy = _copier(prompt)
            for _ in range(self.args.n_samples_per_prompt):
                sample = fresh_copy()
                sample.group_index = self.sample_group_index
                sample.index = self.sample_index
                self.sample_index += 1
                group.append(sample)
            self.sample_group_index += 1
            groups.append(group)
        return groups

    def add_samples(self, samples: list[list[Sample]]) -> None:
        """Not supported: this source has no buffer (use RolloutDataSourceWithBuffer)."""
        raise RuntimeError(
            f"{type(self).__name__} is read-only; use RolloutDataSourceWithBuffer to add samples"
        )

    def get_buffer_length(self) -> int | None:
        """Groups waiting in the buffer; None for a source without one."""
        return None

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into :attr:`metadata` (Miles API)."""
        self.metadata.update(metadata)

    def get_metadata(self) -> dict[str, Any]:
        """:attr:`metadata` (Miles API)."""
        return self.metadata

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Position, epoch, indices and metadata: plain values only (torch.save / JSON friendly)."""
        return {
            "format": STATE_FORMAT,
            "sample_offset": self.sample_offset,
            "epoch_id": self.epoch_id,
            "sample_group_index": self.sample_group_index,
            "sample_index": self.sample_index,
            "metadata": copy.deepcopy(self.metadata),
            "dataset_size": self.dataset_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (or a Miles state file's dict: missing keys default to 0)."""
        ints = {}
        for key in ("sample_offset", "epoch_id", "sample_group_index", "sample_index"):
            value = state.get(key, 0)
            if not isinstance(value, int) or value < 0:
                raise DataSourceStateError(f"data-source state: {key!r} must be an int >= 0, got {value!r}")
            ints[key] = value
        saved_size = state.get("dataset_size")
        if saved_size is not None and saved_size != self.dataset_size:
            logger.warning(
                "data-source state was saved over %s prompts but the dataset now has %d; positions may differ",
                saved_size,
                self.dataset_size,
            )
        if self.dataset is not None and ints["sample_offset"] > self.dataset_size:
            raise DataSourceStateError(
                f"data-source state: sample_offset={ints['sample_offset']} is past the end of the dataset "
                f"({self.dataset_size} prompts); was it saved for another dataset?"
            )
        self.sample_offset = ints["sample_offset"]
        self.epoch_id = ints["epoch_id"]
        self.sample_group_index = ints["sample_group_index"]
        self.sample_index = ints["sample_index"]
        self.metadata = copy.deepcopy(dict(state.get("metadata") or {}))
        self._shuffle_for(self.epoch_id)

    def save(self, rollout_id: int) -> None:
        """Write :meth:`state_dict` to ``{args.save}/rollout/global_dataset_state_dict_{rollout_id}.pt``."""
        if self.args.save is None:
            raise DataSourceStateError(f"{type(self).__name__}.save({rollout_id}): set save (--save) first")
        path = state_path(self.args.save, rollout_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated state file

    def load(self, rollout_id: int | None = None) -> None:
        """Restore the state saved under ``args.load`` for ``rollout_id`` (the latest when None).

        As in Miles, no ``load`` dir or no saved state is not an error: the source starts fresh
        (logged).
        """
        root = self.args.load
        if root is None:
            return
        if rollout_id is None:
            rollout_id = _latest_rollout_id(root)
            if rollout_id is None:
                logger.info("no data-source state under %s; starting from the first prompt", root)
                return
        path = state_path(root, rollout_id)
        if not os.path.exists(path):
            logger.warning("data-source state %s does not exist; starting from the first prompt", path)
            return
        try:
            state = torch.load(path, weights_only=True)
        except Exception as exc:
            raise DataSourceStateError(f"{path}: cannot read data-source state: {exc}") from exc
        if not isinstance(state, dict):
            raise DataSourceStateError(f"{path}: expected a dict, got {type(state).__name__}")
        try:
            self.load_state_dict(state)
        except DataSourceStateError as exc:
            raise DataSourceStateError(f"{path}: {exc}") from exc
        logger.info(
            "loaded data-source state from %s (epoch %d, offset %d)", path, self.epoch_id, self.sample_offset
        )


class RolloutDataSourceWithBuffer(RolloutDataSource):
    """The Miles default data source: a buffer of returned groups is served first.

    ``buffer_filter`` chooses what to serve from the buffer (default: ``args.buffer_filter_path``
    when set, else :func:`pop_first`). The buffer is part of the saved state.
    """

    def __init__(
        self,
        args: Config,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dataset: DataInput | PromptDataset | None = None,
        buffer_filter: BufferFilterFn | None = None,
    ) -> None:
        super().__init__(args, tokenizer=tokenizer, dataset=dataset)
        self.buffer: list[list[Sample]] = []
        if buffer_filter is None and args.buffer_filter_path is not None:
            from miles_sdk.loading import load_hook

            buffer_filter = load_hook(args.buffer_filter_path, "BufferFilterFn", flag="--buffer-filter-path")
        self.buffer_filter: BufferFilterFn = buffer_filter if buffer_filter is not None else pop_first

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        """Buffered groups first (through the buffer filter), then new prompt groups."""
        if num_samples < 0:
            raise ValueError(f"get_samples: num_samples must be >= 0, got {num_samples}")
        groups = take_from_buffer(self.args, self.buffer, self.buffer_filter, num_samples)
        if len(groups) < num_samples:
            groups += super().get_samples(num_samples - len(groups))
        return groups

    def add_samples(self, samples: list[list[Sample]]) -> None:
        """Append groups (each exactly ``n_samples_per_prompt`` Samples) to the buffer."""
        self.buffer.extend(check_groups(samples, self.args.n_samples_per_prompt, what="add_samples"))

    def get_buffer_length(self) -> int:
        return len(self.buffer)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["buffer"] = [[sample.to_dict() for sample in group] for group in self.buffer]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        raw = state.get("buffer") or []
        try:
            buffer = [[Sample.from_dict(s) for s in group] for group in raw]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataSourceStateError(f"data-source state: bad buffer entry: {exc}") from exc
        self.buffer = check_groups(buffer, self.args.n_samples_per_prompt, what="data-source state buffer")
