"""``import megatron.core.mpu`` without megatron-core: the ranks of this process (issue 15.5).

Installed by :func:`miles_sdk.compat.install` next to the ``miles`` finder, and only when no real
``megatron`` package is importable. It answers ``megatron``, ``megatron.core``,
``megatron.core.mpu`` and ``megatron.core.parallel_state``; any other ``megatron.*`` import is a
ModuleNotFoundError that says what is provided.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

from miles_sdk.compat._finder import _AliasLoader

__all__ = ["MegatronShimFinder", "real_megatron_importable"]

_SHIMS = {
    "megatron": "miles_sdk.compat.megatron",
    "megatron.core": "miles_sdk.compat.megatron.core",
    "megatron.core.mpu": "miles_sdk.compat.megatron.core.mpu",
    "megatron.core.parallel_state": "miles_sdk.compat.megatron.core.mpu",
}


def real_megatron_importable() -> bool:
    existing = sys.modules.get("megatron")
    if existing is not None:
        return not getattr(existing, "__name__", "").startswith("miles_sdk.compat.")
    for finder in sys.meta_path:
        if isinstance(finder, MegatronShimFinder):
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and find_spec("megatron", None) is not None:
            return True
    return False


class MegatronShimFinder(importlib.abc.MetaPathFinder):
    """Maps the few ``megatron`` modules hook files read ranks from to the SDK's shim."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "megatron" and not fullname.startswith("megatron."):
            return None
        shim = _SHIMS.get(fullname)
        if shim is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: megatron-core is not installed; miles_sdk provides only "
                f"{', '.join(sorted(_SHIMS))} (this process's ranks). Install megatron-core for the rest.",
                name=fullname,
            )
        module = importlib.import_module(shim)
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(module), is_package=hasattr(module, "__path__")
        )
