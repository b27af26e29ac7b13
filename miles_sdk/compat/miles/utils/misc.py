"""Shim of ``miles.utils.misc``: ``load_function`` and ``SingletonMeta``."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, ClassVar

__all__ = ["SingletonMeta", "load_function"]


def load_function(path: str | None, *, sync_required: bool = False) -> Any:
    """Import ``"pkg.module.attr"`` (or ``"pkg.module:attr"``) and return the attribute; None for
    an empty path, as in Miles. ``sync_required`` rejects ``async def`` functions."""
    if not path:
        return None
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"load_function({path!r}): expected 'pkg.module.attr' or 'pkg.module:attr'")
    # Miles hook files may name other Miles-style modules; make sure their miles.* imports resolve.
    from miles_sdk.compat import install

    install()
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(
                f"load_function({path!r}): module {module_name!r} has no attribute {attr!r}"
            ) from None
    if sync_required:
        if not callable(target):
            raise ValueError(f"load_function({path!r}) did not resolve to a callable")
        if inspect.iscoroutinefunction(target):
            raise ValueError(
                f"load_function({path!r}) resolved to an async function; a synchronous one is required"
            )
    return target


class SingletonMeta(type):
    """Metaclass: one instance per class, built by the first call (Miles's global-state pattern)."""

    _instances: ClassVar[dict[type, Any]] = {}

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls not in SingletonMeta._instances:
            SingletonMeta._instances[cls] = super().__call__(*args, **kwargs)
        return SingletonMeta._instances[cls]

    @staticmethod
    def clear_all_instances() -> None:
        """Forget every instance (tests)."""
        SingletonMeta._instances.clear()
