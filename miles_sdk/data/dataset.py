"""Prompt datasets: rows from .jsonl / .parquet / memory / HF ``datasets`` -> prompt Samples.

Each row becomes one *prompt sample*: a :class:`~miles_sdk.types.Sample` holding ``prompt``,
``label``, ``metadata`` (and raw ``multimodal_inputs``). The data source deep-copies it
``n_samples_per_prompt`` times per group.

Tokens are left empty on purpose, as in Miles: the rollout tokenises ``sample.prompt`` itself
(``add_special_tokens=False``), and Miles generate hooks expect to fill ``tokens`` from scratch.
Prompts are tokenised here only to count them for ``rollout_max_prompt_len``; the counts are kept
in :attr:`PromptDataset.prompt_lengths`.

Every row keeps its location (``data.jsonl:12``, ``data.parquet[row 3]``, ``rows[5]``) so that
errors name the file and line of the culprit.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, overload

import numpy as np

from miles_sdk.data.rowstore import RawRow, RowStore, open_rows
from miles_sdk.data.templates import (
    PromptError,
    check_prompt,
    count_prompt_tokens,
    has_chat_template,
    render_chat_prompt,
)
from miles_sdk.types import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from miles_sdk.config import Config

__all__ = [
    "DataInput",
    "DatasetError",
    "HFDatasetLike",
    "PromptDataset",
    "RawRow",
    "parse_data_path",
    "read_rows",
]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Bad prompt data. The message names the file and line (or row) and the key involved."""


class HFDatasetLike(Protocol):
    """What is used of a Hugging Face ``datasets.Dataset``: its columns, length and row dicts."""

    @property
    def column_names(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


DataInput: TypeAlias = "str | os.PathLike[str] | Sequence[Mapping[str, Any]] | HFDatasetLike"
"""A path (``.jsonl`` / ``.parquet``, optionally ``path@[start:end]``), row dicts, or an HF Dataset."""


_SLICE = re.compile(r"^(?P<path>.*)@\[(?P<start>-?\d*):(?P<end>-?\d*)\]$")


def parse_data_path(spec: str) -> tuple[str, slice | None]:
    """Split ``"path@[start:end]"`` into the path and a row slice (Python slice semantics).

    >>> parse_data_path("train.jsonl@[10:20]")
    ('train.jsonl', slice(10, 20, None))
    >>> parse_data_path("train.parquet")
    ('train.parquet', None)
    """
    m = _SLICE.match(spec)
    if m is None:
        return spec, None
    start, end = m.group("start"), m.group("end")
    return m.group("path"), slice(int(start) if start else None, int(end) if end else None)


def read_rows(source: DataInput) -> tuple[str, list[RawRow]]:
    """Read every row of ``source`` with its location. Returns ``(name, rows)``.

    A row that is not a JSON object / dict is an error naming its location; so is a file that is
    not UTF-8 (JSONL) or not readable parquet.
    """
    store = open_rows(source, parse_data_path)
    return store.name, [store.row(i) for i in range(len(store))]


def _load_json_field(value: Any, where: str, key: str) -> Any:
    """Parquet files often store dicts and lists as JSON strings; decode those."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: {key!r} is a string but not valid JSON: {exc.msg}") from exc


DEFAULT_LABEL_COLUMN = "label"
"""The column read as the label when ``label_key`` is unset and a row has it (issue 14.2)."""


def _plain_label(value: Any) -> Any:
    """The label as the data holds it (str, int, float, dict, list), as Miles's loader keeps it.

    Graders need the raw type: gpqa reads an int as an option index, dapo an int answer. Only
    numpy scalars / arrays (pandas, some parquet readers) become their plain Python values.
    """
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    return value


LAZY_MIN_ROWS = 100_000
"""From this many rows on, a dataset is lazy (``lazy=None``): see :class:`PromptDataset`."""

_CHECKED_UP_FRONT = 64
"""Rows a lazy dataset builds at once, so that a wrong input_key or label_key fails at start."""


class PromptDataset:
    """Prompt samples built from rows, with too-long prompts dropped.

    Eager (fewer than :data:`LAZY_MIN_ROWS` rows, or ``lazy=False``): every row is built now;
    ``samples[i]`` is the prompt sample for the i-th kept row in file order, ``locations[i]`` names
    its file and line, and ``rollout_max_prompt_len`` drops too-long prompts up front (as Miles).

    Lazy (``lazy=True``, or large data; issue 16.12): rows stay in the file (memory-mapped) and a
    sample is built when the data source draws it. The whole file is still checked at once for
    encoding and JSON syntax; other row errors (a missing key, a bad prompt) name the file and line
    when the row is drawn. ``len()`` counts rows, and the length filter runs as prompts are drawn:
    :meth:`prompt_at` returns None for a too-long prompt, which the data source skips (so an epoch
    is a shuffle of all rows, too-long ones skipped, instead of a shuffle of the kept ones).
    ``prompt_lengths`` is None and ``num_dropped_long`` counts the drops seen so far.
    """

    def __init__(
        self,
        source: DataInput,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        input_key: str = "input",
        label_key: str | None = None,
        metadata_key: str = "metadata",
        tool_key: str | None = None,
        multimodal_keys: Mapping[str, str] | None = None,
        apply_chat_template: bool = False,
        apply_chat_template_kwargs: Mapping[str, Any] | None = None,
        max_prompt_len: int | None = None,
        lazy: bool | None = None,
    ) -> None:
        store = open_rows(source, parse_data_path)
        self.name = store.name
        if not len(store):
            raise DatasetError(
                f"prompt dataset {self.name!r} is empty (no rows; check the file or its @[a:b] slice)"
            )
        if (apply_chat_template or max_prompt_len is not None) and tokenizer is None:
            need = "apply_chat_template" if apply_chat_template else "rollout_max_prompt_len"
            raise DatasetError(
                f"{self.name}: {need} needs a tokenizer (pass tokenizer= or set hf_checkpoint)"
            )
        if apply_chat_template and tokenizer is not None and not has_chat_template(tokenizer):
            raise DatasetError(
                f"{self.name}: apply_chat_template is set but the tokenizer has no chat_template"
            )

        self.input_key = input_key
        self.label_key = label_key
        self.metadata_key = metadata_key
        self.tool_key = tool_key
        self._tokenizer = tokenizer
        self._multimodal_keys = dict(multimodal_keys or {})
        self._apply_chat_template = apply_chat_template
        self._chat_template_kwargs = dict(apply_chat_template_kwargs or {})
        self._max_prompt_len = max_prompt_len
        self.lazy: bool = len(store) >= LAZY_MIN_ROWS if lazy is None else lazy
        """Whether samples are built when drawn rather than now (see the class doc)."""
        if self.lazy:
            self._init_lazy(store)
            return

        rows = [store.row(i) for i in range(len(store))]
        built = [self._build_sample(row) for row in rows]
        self.num_rows_read: int = len(built)
        """Rows read from the source (after the @[a:b] slice, before the length filter)."""
        self.samples: Sequence[Sample] = [s for s, _ in built]
        self.locations: Sequence[str] = [row.where for row in rows]
        self.prompt_lengths: list[int] | None = None
        """Prompt token counts of the kept samples; None when no length limit was set."""
        self.num_dropped_long: int = 0
        """Prompts dropped for being longer than ``max_prompt_len`` tokens."""
        if max_prompt_len is not None:
            self._drop_long([text for _, text in built], max_prompt_len)

    @classmethod
    def from_config(
        cls,
        args: Config,
        source: DataInput | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> PromptDataset:
        """The training prompt dataset as ``args`` describes it; ``source`` overrides ``prompt_data``."""
        source = source if source is not None else args.prompt_data
        if source is None:
            raise DatasetError("no prompt data: set prompt_data (--prompt-data) or pass dataset=")
        return cls(
            source,
            tokenizer=tokenizer,
            input_key=args.input_key,
            label_key=args.label_key,
            metadata_key=args.metadata_key,
            tool_key=args.tool_key,
            multimodal_keys=args.multimodal_keys,
            apply_chat_template=args.apply_chat_template,
            apply_chat_template_kwargs=args.apply_chat_template_kwargs,
            max_prompt_len=args.rollout_max_prompt_len,
        )

    def _init_lazy(self, store: RowStore) -> None:
        self._store = store
        self.num_rows_read = len(store)
        self.samples = _LazySamples(self)
        self.locations = _LazyLocations(store)
        self.prompt_lengths = None
        self.num_dropped_long = 0
        self._dropped = np.zeros(len(store), dtype=bool) if self._max_prompt_len is not None else None
        for i in range(min(len(store), _CHECKED_UP_FRONT)):
            self._build_sample(store.row(i))
        logger.info(
            "%s: %d rows, read lazily (memory-mapped; samples built when drawn)", self.name, len(store)
        )

    def prompt_at(self, i: int) -> Sample | None:
        """The prompt sample of row ``i``, or None when the length filter drops it (lazy datasets;
        an eager one has dropped them already). The data source deep-copies what it returns."""
        if not self.lazy:
            return self.samples[i]
        sample, text = self._build_sample(self._store.row(i))
        limit, dropped = self._max_prompt_len, self._dropped
        if limit is None or dropped is None or text is None:
            return sample
        assert self._tokenizer is not None
        if dropped[i] or count_prompt_tokens(self._tokenizer, [text])[0] > limit:
            if not dropped[i]:
                dropped[i] = True
                self.num_dropped_long += 1
                if self.num_dropped_long == 1:
                    logger.info(
                        "%s: skipping prompts longer than rollout_max_prompt_len=%d tokens as they are drawn "
                        "(first: %s); num_dropped_long counts them",
                        self.name,
                        limit,
                        self._store.row(i).where,
                    )
            return None
        return sample

    # -- building ------------------------------------------------------------------------------

    def _build_sample(self, row: RawRow) -> tuple[Sample, str | None]:
        """The prompt sample of one row, and the text to count for the length filter (if any)."""
        data, where = row.data, row.where
        if self.input_key not in data:
            raise DatasetError(f"{where}: missing input key {self.input_key!r} (row keys: {sorted(data)})")
        try:
            prompt = check_prompt(copy.deepcopy(data[self.input_key]), where, self.input_key)
        except PromptError as exc:
            raise DatasetError(str(exc)) from exc

        label: Any = None
        if self.label_key is not None:
            if self.label_key not in data:
                raise DatasetError(
                    f"{where}: missing label key {self.label_key!r} (row keys: {sorted(data)})"
                )
            label = _plain_label(data[self.label_key])
        elif DEFAULT_LABEL_COLUMN in data:
            # Unset label_key with a `label` column: users expect it read (a None label scores 0).
            if not getattr(self, "_said_default_label", False):
                self._said_default_label = True
                logger.info(
                    "%s: label_key is unset; reading the %r column as the label (set label_key to change)",
                    where,
                    DEFAULT_LABEL_COLUMN,
                )
            label = _plain_label(data[DEFAULT_LABEL_COLUMN])

        metadata = _load_json_field(data.get(self.metadata_key), where, self.metadata_key) or {}
        if not isinstance(metadata, Mapping):
            raise DatasetError(
                f"{where}: {self.metadata_key!r} must be a dict, got {type(metadata).__name__}"
            )
        metadata = copy.deepcopy(dict(metadata))

        tools: list[Any] | None = None
        if self.tool_key is not None and data.get(self.tool_key) is not None:
            raw_tools = _load_json_field(data[self.tool_key], where, self.tool_key)
            if hasattr(raw_tools, "tolist"):  # numpy arrays from some parquet readers
                raw_tools = raw_tools.tolist()
            if not isinstance(raw_tools, list):
                raise DatasetError(
                    f"{where}: {self.tool_key!r} must be a list of tools, got {type(raw_tools).__name__}"
                )
            tools = copy.deepcopy(raw_tools)
            metadata["tools"] = tools

        multimodal = {kind: copy.deepcopy(data.get(key)) for kind, key in self._multimodal_keys.items()}

        text: str | None = prompt if isinstance(prompt, str) else None
        # Messages kept unrendered (the rollout renders them) are rendered here only to be counted.
        tok = self._tokenizer
        count_messages = self._max_prompt_len is not None and tok is not None and has_chat_template(tok)
        if self._apply_chat_template or (text is None and count_messages):
            assert self._tokenizer is not None
            try:
                text = render_chat_prompt(
                    self._tokenizer,
                    prompt,
                    tools=tools,
                    chat_template_kwargs=self._chat_template_kwargs,
                    where=where,
                )
            except PromptError as exc:
                raise DatasetError(str(exc)) from exc
            if self._apply_chat_template:
                prompt = text
        sample = Sample(prompt=prompt, label=label, metadata=metadata, multimodal_inputs=multimodal or None)
        return sample, text

    def _drop_long(self, texts: list[str | None], max_prompt_len: int) -> None:
        assert self._tokenizer is not None
        countable = [i for i, t in enumerate(texts) if t is not None]
        to_count = [t for t in texts if t is not None]
        if len(countable) < len(texts):
            logger.warning(
                "%s: %d chat prompts not counted for rollout_max_prompt_len (tokenizer has no chat template)",
                self.name,
                len(texts) - len(countable),
            )
        counts = count_prompt_tokens(self._tokenizer, to_count)
        lengths: list[int | None] = [None] * len(texts)
        for i, n in zip(countable, counts, strict=True):
            lengths[i] = n
        keep = [i for i, n in enumerate(lengths) if n is None or n <= max_prompt_len]
        self.num_dropped_long = len(texts) - len(keep)
        logger.info(
            "%s: dropped %d of %d prompts longer than rollout_max_prompt_len=%d tokens",
            self.name,
            self.num_dropped_long,
            len(texts),
            max_prompt_len,
        )
        if not keep:
            raise DatasetError(
                f"prompt dataset {self.name!r}: all {len(texts)} prompts are longer than "
                f"rollout_max_prompt_len={max_prompt_len} tokens"
            )
        self.samples = [self.samples[i] for i in keep]
        self.locations = [self.locations[i] for i in keep]
        # Uncounted prompts (no template) report -1: unknown, kept as Miles keeps them.
        self.prompt_lengths = [-1 if (m := lengths[i]) is None else m for i in keep]

    # -- access --------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Kept prompts (eager), or rows (lazy: the length filter runs as prompts are drawn)."""
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __repr__(self) -> str:
        lazy = ", lazy" if self.lazy else ""
        return f"PromptDataset({self.name!r}, {len(self)} prompts, {self.num_dropped_long} dropped as too long{lazy})"


class _LazySamples(Sequence[Sample]):
    """``PromptDataset.samples`` of a lazy dataset: each sample built when indexed (not cached)."""

    def __init__(self, dataset: PromptDataset) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset._store)

    @overload
    def __getitem__(self, i: int) -> Sample: ...

    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        build, store = self._dataset._build_sample, self._dataset._store
        if isinstance(i, slice):
            return [build(store.row(j))[0] for j in range(*i.indices(len(self)))]
        return build(store.row(range(len(self))[i]))[0]


class _LazyLocations(Sequence[str]):
    """``PromptDataset.locations`` of a lazy dataset."""

    def __init__(self, store: RowStore) -> None:
        self._store = store

    def __len__(self) -> int:
        return len(self._store)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self._store.location(j) for j in range(*i.indices(len(self)))]
        return self._store.location(range(len(self))[i])
