"""The import hook behind :func:`miles_sdk.compat.install`: ``miles`` / ``miles.*`` -> our shim modules.

A ``sys.meta_path`` finder answers every import of ``miles`` or ``miles.<sub>`` with the shim module
``miles_sdk.compat.miles.<sub>``; the very same module object is registered under both names, so
``miles.utils.types.Sample is miles_sdk.types.Sample`` and a shim's state (``GenerateState``) exists
once. A ``miles.*`` module the shim does not provide is a ``ModuleNotFoundError`` that names it and
lists what is provided. Nothing is installed when the real ``miles`` package is importable.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["SHIM_PACKAGE", "MilesShimFinder", "provided_modules", "real_miles_importable"]

SHIM_PACKAGE = "miles_sdk.compat.miles"
_ALIAS_ROOT = "miles"


def provided_modules() -> list[str]:
    """Every ``miles.*`` module name the shim answers, sorted (``miles`` itself included)."""
    root = importlib.import_module(SHIM_PACKAGE)
    names = [_ALIAS_ROOT]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{_ALIAS_ROOT}."):
        if not info.name.rpartition(".")[2].startswith("_"):
            names.append(info.name)
    return sorted(names)


def _is_alias_name(fullname: str) -> bool:
    return fullname == _ALIAS_ROOT or fullname.startswith(_ALIAS_ROOT + ".")


def real_miles_importable() -> bool:
    """True when a ``miles`` package other than our shim can be imported from ``sys.path``."""
    existing = sys.modules.get(_ALIAS_ROOT)
    if existing is not None:
        return not getattr(existing, "__name__", "").startswith(SHIM_PACKAGE)
    # Ask only the other finders: ours, when installed, would answer for the shim itself.
    for finder in sys.meta_path:
        if isinstance(finder, MilesShimFinder):
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and find_spec(_ALIAS_ROOT, None) is not None:
            return True
    return False


def _shim_exists(shim_name: str) -> bool:
    if any(part.startswith("_") for part in shim_name[len(SHIM_PACKAGE) :].split(".") if part):
        return False  # private helpers of the shim are not Miles modules
    try:
        return importlib.util.find_spec(shim_name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


class _AliasLoader(importlib.abc.Loader):
    """Hands out an already imported shim module under its ``miles.*`` name."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module
        self._own_spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self._module

    def exec_module(self, module: ModuleType) -> None:
        # importlib stamps the alias spec onto the module; keep the shim's own, so the module
        # still reports (and reloads as) miles_sdk.compat.miles.<sub>.
        module.__spec__ = self._own_spec


class MilesShimFinder(importlib.abc.MetaPathFinder):
    """Maps ``miles`` and ``miles.<sub>`` to ``miles_sdk.compat.miles.<sub>``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not _is_alias_name(fullname):
            return None
        shim_name = SHIM_PACKAGE + fullname[len(_ALIAS_ROOT) :]
        if not _shim_exists(shim_name):
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: miles_sdk runs Miles hook files without Miles installed, "
                f"but only these miles modules are provided: {', '.join(provided_modules())}. "
                "See docs/miles-compat.md; install Miles itself for the rest.",
                name=fullname,
            )
        module = importlib.import_module(shim_name)
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(module), is_package=hasattr(module, "__path__")
        )
