"""A mutable ``args`` for Miles-style hooks, written through to one namespace per run (issue 15.6).

Miles passes its argparse ``Namespace`` to every hook, and hook files use it as shared state:
the multi-agent rollout sets ``args.sampling_params``, ``args.tokenizer`` and a few flags, and the
agent function it calls reads them back. The SDK's :class:`~miles_sdk.config.Config` is frozen
(typed hooks keep it: the run's settings cannot drift under the trainer), so such a hook failed
with ``FrozenInstanceError``.

Miles-style hooks (see :func:`is_miles_style`) are called with a :class:`MilesArgs` instead: it
reads like the Config, and an attribute set on it lands in one overlay shared by every
Miles-style hook of the same Config, so a later hook sees it. The trainer itself keeps reading
the frozen Config: setting ``args.rollout_max_context_len`` in a hook changes what Miles-style
hooks read, not how the SDK generates (logged once per attribute).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miles_sdk.config import Config

__all__ = ["MilesArgs", "is_miles_style", "miles_args", "with_miles_args"]

logger = logging.getLogger(__name__)

_overlays: dict[int, dict[str, Any]] = {}
"""id(Config) -> the attributes Miles-style hooks set on it (dropped with the Config)."""


class MilesArgs:
    """``args`` as a Miles-style hook sees it: the Config's settings plus what hooks have set."""

    __slots__ = ("_config", "_overlay")

    def __init__(self, config: Config, overlay: dict[str, Any]) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_overlay", overlay)

    @property
    def config(self) -> Config:
        """The frozen Config underneath (what the trainer reads)."""
        config: Config = object.__getattribute__(self, "_config")
        return config

    def __getattr__(self, name: str) -> Any:
        overlay: dict[str, Any] = object.__getattribute__(self, "_overlay")
        if name in overlay:
            return overlay[name]
        return getattr(object.__getattribute__(self, "_config"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        overlay: dict[str, Any] = object.__getattribute__(self, "_overlay")
        config = object.__getattribute__(self, "_config")
        if name not in overlay and _is_setting(config, name):
            logger.info(
                "a Miles-style hook set args.%s = %r: later Miles-style hooks read it; the trainer keeps %r",
                name,
                value,
                getattr(config, name),
            )
        overlay[name] = value

    def __delattr__(self, name: str) -> None:
        overlay: dict[str, Any] = object.__getattribute__(self, "_overlay")
        if name not in overlay:
            raise AttributeError(f"args.{name} was not set by a hook; Config settings cannot be deleted")
        del overlay[name]

    def __dir__(self) -> list[str]:
        overlay: dict[str, Any] = object.__getattribute__(self, "_overlay")
        return sorted(set(dir(object.__getattribute__(self, "_config"))) | set(overlay))

    def __repr__(self) -> str:
        overlay: dict[str, Any] = object.__getattribute__(self, "_overlay")
        return f"MilesArgs(set by hooks: {sorted(overlay)}; {object.__getattribute__(self, '_config')!r})"


def _is_setting(config: Config, name: str) -> bool:
    try:
        getattr(config, name)
    except AttributeError:
        return False
    return True


def miles_args(config: Config | MilesArgs) -> MilesArgs:
    """The shared mutable view of ``config`` (the same overlay for every call with this Config)."""
    if isinstance(config, MilesArgs):
        return config
    key = id(config)
    overlay = _overlays.get(key)
    if overlay is None:
        overlay = _overlays[key] = {}
        weakref.finalize(config, _overlays.pop, key, None)
    return MilesArgs(config, overlay)


_IMPORTS_MILES = re.compile(r"^\s*(?:from\s+miles(?:\.[\w.]+)?\s+import|import\s+miles\b)", re.MULTILINE)


def _first_parameter(fn: Callable[..., Any]) -> inspect.Parameter | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    return params[0] if params else None


def is_miles_style(fn: object) -> bool:
    """True for a hook written against Miles: its module imports ``miles`` and its first parameter
    is not annotated as the SDK's ``Config``. Typed hooks (``args: Config``) keep the frozen Config."""
    if not callable(fn) or inspect.isclass(fn):
        return False
    first = _first_parameter(fn)
    if first is None or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        return False
    annotation = first.annotation
    if annotation is not first.empty and "Config" in (annotation if isinstance(annotation, str) else repr(annotation)):
        return False
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return False
    return _IMPORTS_MILES.search(source) is not None


def with_miles_args(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called with :func:`miles_args` in place of a Config first argument (or ``args=``)."""

    from miles_sdk.config import Config

    def swap(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args and isinstance(args[0], Config):
            args = (miles_args(args[0]), *args[1:])
        elif isinstance(kwargs.get("args"), Config):
            kwargs = {**kwargs, "args": miles_args(kwargs["args"])}
        return args, kwargs

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = swap(args, kwargs)
            return await fn(*args, **kwargs)

        return call_async

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = swap(args, kwargs)
        return fn(*args, **kwargs)

    return call
