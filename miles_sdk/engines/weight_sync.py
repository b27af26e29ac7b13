"""Moving trained weights to an engine in another process, and checking which weights it holds.

- :func:`save_for_sync` / :func:`load_into_module`: the ``/update_weights_from_disk`` path. The
  trainer writes a ``save_pretrained`` directory (safetensors), the server loads it by parameter
  name. SGLang loads the same directory, so one format serves our server and a real one.
- :func:`weights_by_name`: SGLang's ``get_weights_by_name`` (the first ``truncate_size`` rows of a
  parameter) over a torch module.
- :func:`fingerprint_names` / :func:`compare_fingerprint`: a cheap check that an engine samples from
  the trainer's weights: the first rows of a few tensors, read on both sides and compared within
  the rounding of the engine's dtype (a bf16 copy of fp32 masters still matches).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FINGERPRINT_ROWS",
    "WeightSyncError",
    "compare_fingerprint",
    "fingerprint_names",
    "flatten_values",
    "load_into_module",
    "save_for_sync",
    "weights_by_name",
]

FINGERPRINT_ROWS = 2
"""Rows of each fingerprint tensor read on both sides (a row of a 7B model is a few KB)."""

# bf16 keeps 8 significant bits: a cast moves a value by at most 2^-8 of itself. 2^-7 leaves room
# for a value that lands on the other side of a rounding boundary after the cast.
_RTOL = 2.0**-7
_ATOL = 1e-6


class WeightSyncError(RuntimeError):
    """The engine does not hold the weights the trainer just sent."""


def save_for_sync(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write ``model``'s weights as a ``save_pretrained`` directory (replacing what is there)."""
    out = Path(directory)
    if out.exists():
        shutil.rmtree(out)
    save = getattr(model, "save_pretrained", None)
    if callable(save):
        save(str(out), safe_serialization=True)
    else:
        from safetensors.torch import save_file

        out.mkdir(parents=True)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
    return out


def load_into_module(module: torch.nn.Module, model_path: str | Path) -> int:
    """Copy the tensors of every ``*.safetensors`` file in ``model_path`` into ``module``'s
    parameters and buffers by name (cast to their dtype and device); returns how many were loaded.

    Raises:
        FileNotFoundError: the directory has no safetensors file.
        KeyError: a saved name the module does not have, or a parameter the files do not cover
            (tied weights, stored once, count as covered).
    """
    from safetensors.torch import load_file

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path}: no *.safetensors file to load weights from")
    targets = dict(module.state_dict(keep_vars=True))
    loaded: set[str] = set()
    with torch.no_grad():
        for file in files:
            for name, tensor in load_file(str(file)).items():
                dst = targets.get(name)
                if dst is None:
                    raise KeyError(f"{file}: tensor {name!r} is not a parameter of {type(module).__name__}")
                if tuple(dst.shape) != tuple(tensor.shape):
                    raise KeyError(
                        f"{file}: {name!r} has shape {tuple(tensor.shape)}, the module's is {tuple(dst.shape)}"
                    )
                dst.copy_(tensor.to(device=dst.device, dtype=dst.dtype))
                loaded.add(name)
    covered = {id(t) for n, t in targets.items() if n in loaded}
    missing = [n for n, p in module.named_parameters() if n not in loaded and id(p) not in covered]
    if missing:
        raise KeyError(f"{model_path}: no weights for {len(missing)} parameters, e.g. {missing[:3]}")
    return len(loaded)


def weights_by_name(module: torch.nn.Module, name: str, truncate_size: int = 100) -> list[Any]:
    """SGLang's ``get_weights_by_name``: the first ``truncate_size`` rows of parameter ``name`` as
    (nested) float lists."""
    params = dict(module.named_parameters())
    if name not in params:
        raise KeyError(f"{type(module).__name__} has no parameter {name!r}")
    param = params[name].detach()
    rows = param[:truncate_size] if param.dim() > 0 else param
    values: list[Any] | float = rows.float().cpu().tolist()
    return values if isinstance(values, list) else [values]


def fingerprint_names(module: torch.nn.Module, count: int = 3) -> list[str]:
    """``count`` parameter names spread over the model (first, middle, last), 2-D ones preferred:
    a sync that misses some layers still shows up."""
    names = [n for n, p in module.named_parameters() if p.dim() == 2] or [
        n for n, _ in module.named_parameters()
    ]
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def flatten_values(values: object) -> list[float]:
    """Nested lists of numbers (a ``get_weights_by_name`` reply) -> one flat list."""
    if isinstance(values, int | float) and not isinstance(values, bool):
        return [float(values)]
    if isinstance(values, list | tuple):
        return [x for v in values for x in flatten_values(v)]
    raise TypeError(f"expected nested lists of numbers, got {type(values).__name__}")


def compare_fingerprint(
    expected: Mapping[str, Sequence[float]], actual: Mapping[str, Sequence[float]], *, where: str
) -> None:
    """Raise :class:`WeightSyncError` naming the first tensor whose values differ beyond a bf16 cast."""
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            raise WeightSyncError(f"{where}: reported no values for {name!r}")
        if len(got) != len(want):
            raise WeightSyncError(f"{where}: {name!r} has {len(got)} values, the trainer's has {len(want)}")
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if not math.isfinite(g) or abs(g - w) > _RTOL * abs(w) + _ATOL:
                raise WeightSyncError(
                    f"{where}: {name!r}[{i}] is {g:.6g} on the engine but {w:.6g} in the trainer: the "
                    "engine does not sample from the weights just synced (a weight update that never "
                    "reached it, or went to the wrong parameter)"
                )
