"""Eval datasets: ``eval_prompt_data`` pairs and an optional ``eval_config`` file -> prompt groups.

Each eval dataset has settings resolved per field, first match wins (Miles's order):
the dataset's entry in ``eval_config`` -> the file's ``defaults`` -> ``args.eval_*`` ->
``args.rollout_*`` / the training keys. The file is JSON or YAML::

    eval:                      # optional wrapper, as in Miles
      defaults: {n_samples_per_eval_prompt: 4, max_response_len: 512}
      datasets:                # a list of entries with `name`, or a mapping name -> entry
        - name: aime
          path: data/aime.jsonl        # optional when eval_prompt_data names the dataset
          rm_type: math
          metadata_overrides: {difficulty: hard}

Datasets named only in ``eval_prompt_data`` use the defaults; a dataset in both takes its path
from the entry when it has one.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from miles_sdk.config import Config
from miles_sdk.data._copy import copier
from miles_sdk.data.dataset import PromptDataset
from miles_sdk.engines.base import SamplingParams
from miles_sdk.types import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "EvalConfigError",
    "EvalDataset",
    "EvalDatasetSettings",
    "load_eval_datasets",
    "resolve_eval_settings",
]


class EvalConfigError(ValueError):
    """A bad ``eval_config`` file or ``eval_prompt_data`` list; names the file, dataset and key."""


@attrs.frozen(kw_only=True)
class EvalDatasetSettings:
    """Everything that differs between eval datasets: where, how to read, how to sample and score."""

    name: str
    path: str
    rm_type: str | None = None
    """Injected as ``metadata["rm_type"]``, so the reward picks it per sample."""
    input_key: str = "input"
    label_key: str | None = None
    tool_key: str | None = None
    metadata_key: str = "metadata"
    n_samples_per_eval_prompt: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_response_len: int = 1024
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_prompt_len: int | None = None
    """Eval prompts longer than this many tokens are dropped; None keeps all."""
    reward_key: str | None = None
    """Key read from dict rewards of this dataset (falls back to eval_reward_key, reward_key)."""
    custom_generate_function_path: str | None = None
    """Per-dataset generate function (e.g. tool calling), set on each sample."""
    metadata_overrides: dict[str, Any] = attrs.field(factory=dict)
    """Merged into every sample's metadata (after ``rm_type``)."""

    def inject_metadata(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        """A copy of ``metadata`` with this dataset's ``rm_type`` and overrides applied."""
        out = copy.deepcopy(dict(metadata or {}))
        if self.rm_type is not None:
            out["rm_type"] = self.rm_type
        out.update(copy.deepcopy(self.metadata_overrides))
        return out

    def sampling_params(self, args: Config) -> SamplingParams:
        """SGLang sampling parameters for this dataset (stop settings fall back to the rollout's)."""
        params = SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_response_len,
            skip_special_tokens=args.rollout_skip_special_tokens,
            no_stop_trim=True,
        )
        stop = self.stop if self.stop is not None else args.rollout_stop
        stop_ids = self.stop_token_ids if self.stop_token_ids is not None else args.rollout_stop_token_ids
        if stop:
            params["stop"] = list(stop)
        if stop_ids:
            params["stop_token_ids"] = list(stop_ids)
        return params


# field -> (accepted types, Config attributes to fall back on, in order)
_FIELDS: dict[str, tuple[tuple[type, ...], tuple[str, ...]]] = {
    "rm_type": ((str,), ()),
    "input_key": ((str,), ("eval_input_key", "input_key")),
    "label_key": ((str,), ("eval_label_key", "label_key")),
    "tool_key": ((str,), ("eval_tool_key", "tool_key")),
    "metadata_key": ((str,), ("metadata_key",)),
    "n_samples_per_eval_prompt": ((int,), ("n_samples_per_eval_prompt",)),
    "temperature": ((int, float), ("eval_temperature", "rollout_temperature")),
    "top_p": ((int, float), ("eval_top_p", "rollout_top_p")),
    "top_k": ((int,), ("eval_top_k", "rollout_top_k")),
    "max_response_len": ((int,), ("eval_max_response_len", "rollout_max_response_len")),
    "stop": ((list,), ()),
    "stop_token_ids": ((list,), ()),
    "max_prompt_len": ((int,), ("eval_max_prompt_len",)),
    "reward_key": ((str,), ("eval_reward_key", "reward_key")),
    "custom_generate_function_path": ((str,), ()),
    "metadata_overrides": ((dict,), ()),
}
_ENTRY_KEYS = frozenset(_FIELDS) | {"name", "path"}


def _read_config_file(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise EvalConfigError(f"eval_config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)  # YAML is a superset of JSON: any other suffix parses too
    except Exception as exc:  # json / yaml errors carry the line in their message
        raise EvalConfigError(f"{path}: cannot parse eval_config: {exc}") from exc
    if not isinstance(data, dict):
        raise EvalConfigError(f"{path}: eval_config must be a mapping at the top level")
    root = data.get("eval", data)
    if not isinstance(root, dict):
        raise EvalConfigError(f"{path}: 'eval' must be a mapping")
    return root


def _entries(raw: object, where: str) -> list[dict[str, Any]]:
    """Normalise ``datasets`` (a list with names, or a mapping keyed by name) to a list of dicts."""
    if raw is None:
        return []
    items: list[tuple[str | None, object]]
    if isinstance(raw, dict):
        items = [(str(name), cfg) for name, cfg in raw.items()]
    elif isinstance(raw, list):
        items = [(None, cfg) for cfg in raw]
    else:
        raise EvalConfigError(f"{where}: 'datasets' must be a list or a mapping, got {type(raw).__name__}")
    out: list[dict[str, Any]] = []
    for i, (name, cfg) in enumerate(items):
        entry = dict(cfg or {}) if isinstance(cfg, dict) or cfg is None else None
        if entry is None:
            raise EvalConfigError(
                f"{where}: dataset entry {name or i} must be a mapping, got {type(cfg).__name__}"
            )
        if name is not None:
            entry.setdefault("name", name)
        if "name" not in entry:
            raise EvalConfigError(f"{where}: dataset entry {i} has no 'name'")
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if unknown:
            raise EvalConfigError(
                f"{where}: dataset {entry['name']!r} has unknown keys {unknown}; known: {sorted(_ENTRY_KEYS)}"
            )
        out.append(entry)
    return out


def resolve_eval_settings(args: Config) -> list[EvalDatasetSettings]:
    """The settings of every eval dataset named by ``eval_prompt_data`` and ``eval_config``."""
    pairs = list(args.eval_prompt_data or [])
    if len(pairs) == 1:  # Miles's legacy form, a single path: the dataset is named after the file
        pairs = [os.path.splitext(os.path.basename(pairs[0].split("@", 1)[0]))[0], pairs[0]]
    if len(pairs) % 2:
        raise EvalConfigError(
            f"eval_prompt_data takes pairs 'name path ...', got {len(pairs)} values: {pairs}"
        )
    paths = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
    order = list(paths)
    defaults: dict[str, Any] = {}
    by_name: dict[str, dict[str, Any]] = {}
    where = args.eval_config or "eval_prompt_data"
    if args.eval_config is not None:
        root = _read_config_file(args.eval_config)
        defaults = dict(root.get("defaults") or {})
        unknown = sorted(set(defaults) - set(_FIELDS))
        if unknown:
            raise EvalConfigError(f"{where}: 'defaults' has unknown keys {unknown}; known: {sorted(_FIELDS)}")
        for entry in _entries(root.get("datasets"), where):
            name = str(entry["name"])
            if name in by_name:
                raise EvalConfigError(f"{where}: dataset {name!r} is defined twice")
            by_name[name] = entry
            if name not in paths:
                order.append(name)
    settings: list[EvalDatasetSettings] = []
    for name in order:
        entry = by_name.get(name, {})
        path = entry.get("path", paths.get(name))
        if not isinstance(path, str):
            raise EvalConfigError(
                f"{where}: eval dataset {name!r} has no path (give 'path' or list it in eval_prompt_data)"
            )
        values: dict[str, Any] = {}
        for key, (types, fallbacks) in _FIELDS.items():
            value = entry[key] if key in entry else defaults.get(key)
            if value is None:
                value = next((v for a in fallbacks if (v := getattr(args, a, None)) is not None), None)
            if value is None:
                continue
            if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
                raise EvalConfigError(
                    f"{where}: dataset {name!r} key {key!r} must be {'/'.join(t.__name__ for t in types)}, "
                    f"got {value!r}"
                )
            values[key] = float(value) if types == (int, float) and isinstance(value, (int, float)) else value
        if values.get("n_samples_per_eval_prompt", 1) < 1:
            raise EvalConfigError(f"{where}: dataset {name!r}: n_samples_per_eval_prompt must be >= 1")
        settings.append(EvalDatasetSettings(name=name, path=path, **values))
    return settings


class EvalDataset:
    """One eval dataset: its settings and its prompts, served as groups."""

    def __init__(self, settings: EvalDatasetSettings, prompts: PromptDataset) -> None:
        self.settings = settings
        self.prompts = prompts

    @property
    def name(self) -> str:
        return self.settings.name

    # The eval rollout reads these per-dataset settings as attributes (EvalDatasetLike).
    @property
    def temperature(self) -> float:
        return self.settings.temperature

    @property
    def top_p(self) -> float:
        return self.settings.top_p

    @property
    def top_k(self) -> int:
        return self.settings.top_k

    @property
    def max_response_len(self) -> int:
        return self.settings.max_response_len

    @property
    def reward_key(self) -> str | None:
        return self.settings.reward_key

    @property
    def custom_generate_function_path(self) -> str | None:
        return self.settings.custom_generate_function_path

    def __len__(self) -> int:
        """Number of prompts (groups)."""
        return len(self.prompts)

    def groups(self) -> list[list[Sample]]:
        """Fresh samples: one group of ``n_samples_per_eval_prompt`` copies per prompt.

        ``group_index`` is the prompt's position and ``index`` counts from 0 over the dataset;
        metadata carries the dataset's ``rm_type`` and overrides.
        """
        n = self.settings.n_samples_per_eval_prompt
        out: list[list[Sample]] = []
        for g, prompt in enumerate(self.prompts.samples):
            group: list[Sample] = []
            fresh_copy = copier(prompt)  # what copy.deepcopy(prompt) gives, without a deep copy per sample
            for j in range(n):
                sample = fresh_copy()
                sample.group_index = g
                sample.index = g * n + j
                sample.metadata = self.settings.inject_metadata(sample.metadata)
                if self.settings.custom_generate_function_path is not None:
                    sample.generate_function_path = self.settings.custom_generate_function_path
                group.append(sample)
            out.append(group)
        return out

    def __repr__(self) -> str:
        return f"EvalDataset({self.name!r}, {len(self)} prompts x {self.settings.n_samples_per_eval_prompt})"


def load_eval_datasets(
    args: Config, tokenizer: PreTrainedTokenizerBase | None = None
) -> dict[str, EvalDataset]:
    """Every eval dataset, by name, in ``eval_prompt_data`` order then ``eval_config`` order.

    Prompts are read and rendered like training prompts (``apply_chat_template`` and its kwargs);
    the tokenizer is loaded from ``hf_checkpoint`` when needed and not given.
    """
    out: dict[str, EvalDataset] = {}
    for settings in resolve_eval_settings(args):
        needs_tokenizer = args.apply_chat_template or settings.max_prompt_len is not None
        if tokenizer is None and needs_tokenizer:
            from miles_sdk.data.source import load_tokenizer

            tokenizer = load_tokenizer(args)
        prompts = PromptDataset(
            settings.path,
            tokenizer=tokenizer,
            input_key=settings.input_key,
            label_key=settings.label_key,
            metadata_key=settings.metadata_key,
            tool_key=settings.tool_key,
            multimodal_keys=args.multimodal_keys,
            apply_chat_template=args.apply_chat_template,
            apply_chat_template_kwargs=args.apply_chat_template_kwargs,
            max_prompt_len=settings.max_prompt_len,
        )
        out[settings.name] = EvalDataset(settings, prompts)
    return out
