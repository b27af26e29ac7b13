"""Run unchanged Miles hook files: ``import miles.*`` resolves to shims built on miles_sdk.

Miles hook files import Miles internals (``from miles.utils.types import Sample``,
``from miles.utils.http_utils import post``, ``from miles.rollout.sglang_rollout import
GenerateState``, ...). :func:`install` puts a ``sys.meta_path`` finder in place that answers those
imports with the modules under ``miles_sdk.compat.miles``, built on this SDK: our ``Sample`` *is*
the Sample, the reward shims call our graders, the rollout shims call our rollout. It installs
nothing when the real ``miles`` package is importable, so a real Miles install is never shadowed.

:func:`miles_sdk.loading.load_hook` calls :func:`install` before importing any ``--*-path`` hook,
so hook files load without any set-up. See docs/miles-compat.md for what is provided and how it
differs from Miles.
"""

from __future__ import annotations

import sys

from miles_sdk.compat._bridge import call_off_loop, run_blocking
from miles_sdk.compat._finder import SHIM_PACKAGE, MilesShimFinder, provided_modules, real_miles_importable
from miles_sdk.compat._megatron_finder import MegatronShimFinder, real_megatron_importable

__all__ = ["call_off_loop", "install", "is_installed", "provided_modules", "run_blocking", "uninstall"]


def _installed_finder() -> MilesShimFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, MilesShimFinder)), None)


def is_installed() -> bool:
    """True when the ``miles`` -> shim finder is on ``sys.meta_path``."""
    return _installed_finder() is not None


def install() -> bool:
    """Make ``import miles.*`` resolve to the shims; idempotent.

    Returns True when the shims are (now or already) in place, False when the real ``miles``
    package is importable, in which case nothing is changed.
    """
    _install_megatron()
    if is_installed():
        return True
    if real_miles_importable():
        return False
    # First on the path: below the PathFinder, ``miles.x.y`` would be found again as a file in the
    # shim package and loaded a second time as a distinct module.
    sys.meta_path.insert(0, MilesShimFinder())
    return True


def _install_megatron() -> None:
    """``megatron.core.mpu`` for hook files (this process's ranks), unless megatron-core is installed."""
    if any(isinstance(f, MegatronShimFinder) for f in sys.meta_path) or real_megatron_importable():
        return
    sys.meta_path.insert(0, MegatronShimFinder())


def uninstall() -> None:
    """Remove the finders and forget the ``miles.*`` / ``megatron.*`` aliases (the shim modules
    themselves stay). Meant for tests."""
    finder = _installed_finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    for other in [f for f in sys.meta_path if isinstance(f, MegatronShimFinder)]:
        sys.meta_path.remove(other)
    for name, module in list(sys.modules.items()):
        if (name == "megatron" or name.startswith("megatron.")) and getattr(module, "__name__", "").startswith(
            "miles_sdk.compat.megatron"
        ):
            del sys.modules[name]
    for name, module in list(sys.modules.items()):
        if (name == "miles" or name.startswith("miles.")) and getattr(module, "__name__", "").startswith(
            SHIM_PACKAGE
        ):
            del sys.modules[name]
