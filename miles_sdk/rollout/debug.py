"""Save and reload a rollout's samples: ``save_debug_rollout_data`` / ``load_debug_rollout_data``.

The file layout is Miles's (``torch.save`` of ``{"rollout_id", "metadata", "samples": [sample dicts]}``),
so a file written by Miles loads here and the reverse. ``group_sizes`` is added so groups come
back exactly as they were. Samples round-trip losslessly through ``Sample.to_dict``/``from_dict``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from miles_sdk.types import Sample

__all__ = ["load_rollout_data", "rollout_data_path", "save_rollout_data"]

_EXTRA_FIELDS_KEY = "miles_extra_fields"
"""Where fields of a Miles Sample that this SDK's Sample lacks end up (in ``metadata``)."""


def rollout_data_path(path_template: str, rollout_id: int | str) -> Path:
    """``path_template`` with ``{rollout_id}`` filled in (eval rollouts pass ``"eval_3"``)."""
    try:
        return Path(path_template.format(rollout_id=rollout_id))
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"debug rollout data path template {path_template!r} may only use the {{rollout_id}} field"
        ) from exc


def save_rollout_data(
    path_template: str,
    rollout_id: int | str,
    samples: list[list[Sample]],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the groups of one rollout to ``path_template.format(rollout_id=...)``; returns the path."""
    path = rollout_data_path(path_template, rollout_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "rollout_id": rollout_id,
        "metadata": dict(metadata or {}),
        "samples": [s.to_dict() for group in samples for s in group],
        "group_sizes": [len(group) for group in samples],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated file under the real name
    return path


def load_rollout_data(
    path_template: str, rollout_id: int | str, *, trusted: bool = False
) -> list[list[Sample]]:
    """Read back what :func:`save_rollout_data` (or Miles) wrote for ``rollout_id``.

    Files are read with ``torch.load(weights_only=True)``; a Miles file holding numpy arrays
    (routed experts) needs ``trusted=True``, which unpickles arbitrary objects: only for files
    you wrote yourself.
    """
    path = rollout_data_path(path_template, rollout_id)
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*"))[:8] if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"no debug rollout data for rollout_id={rollout_id}: {path} does not exist "
            f"(template {path_template!r}; files there: {near or 'none, or the folder is missing'})"
        )
    try:
        payload = torch.load(path, weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} holds objects other than plain lists/dicts (a Miles file with numpy arrays?); "
            "load it with trusted=True if you wrote it yourself"
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("samples"), list):
        raise ValueError(f"{path} is not rollout data: expected a dict with a 'samples' list")  # noqa: TRY004 - bad file content, not a bad argument
    samples = [_sample_from_dict(d, path, i) for i, d in enumerate(payload["samples"])]
    sizes = payload.get("group_sizes")
    if sizes is None:
        return _group_by_index(samples)
    if sum(sizes) != len(samples):
        raise ValueError(
            f"{path}: group_sizes add up to {sum(sizes)} but the file has {len(samples)} samples"
        )
    groups: list[list[Sample]] = []
    start = 0
    for size in sizes:
        groups.append(samples[start : start + size])
        start += size
    return groups


def _sample_from_dict(data: object, path: Path, position: int) -> Sample:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: samples[{position}] is {type(data).__name__}, expected a dict")  # noqa: TRY004
    known = Sample.__dataclass_fields__.keys()
    extra = {k: v for k, v in data.items() if k not in known}
    fields = {k: v for k, v in data.items() if k in known}
    try:
        sample = Sample.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: samples[{position}] cannot be rebuilt: {exc}") from exc
    if extra:
        # Miles-only fields (adapter, routing_key, ...) are kept, not dropped.
        sample.metadata = {**sample.metadata, _EXTRA_FIELDS_KEY: extra}
    return sample


def _group_by_index(samples: list[Sample]) -> list[list[Sample]]:
    """Miles files store a flat list: consecutive samples with one group_index form a group."""
    groups: list[list[Sample]] = []
    for s in samples:
        if groups and s.group_index is not None and groups[-1][-1].group_index == s.group_index:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups
