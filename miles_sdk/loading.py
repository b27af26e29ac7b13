"""Miles-style hook paths ("pkg.module.attr" or "pkg.module:attr") -> checked hook objects.

Every hook is checked once, where it enters the system (``Trainer(...)`` or ``load_hook``):
callable, async where the Protocol is async, and able to accept the arguments the loop passes.
Errors name the flag, the path and the mismatch.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Final

from miles_sdk import hooks

__all__ = [
    "HOOK_SPECS",
    "HookLoadError",
    "HookSignatureError",
    "HookSpec",
    "check_hook_signature",
    "load_hook",
]


class HookLoadError(ImportError):
    """A hook path that cannot be imported: bad format, module not found, attribute missing."""


class HookSignatureError(TypeError):
    """A hook whose shape does not match its Protocol (not callable, sync/async, arity)."""


class HookSpec:
    """How the loop calls one hook: positional arity, keyword names, and whether it is awaited."""

    def __init__(
        self,
        protocol: str,
        positional: int,
        *,
        is_async: bool | None,
        keywords: tuple[str, ...] = (),
        is_class: bool = False,
        also_positional: tuple[int, ...] = (),
    ) -> None:
        self.protocol = protocol
        self.positional = positional
        self.also_positional = also_positional  # other arities Miles itself calls the hook with
        self.is_async = is_async  # None: sync or async both accepted
        self.keywords = keywords
        self.is_class = is_class


_TIS_KEYWORDS = (
    "args",
    "pg_loss",
    "train_log_probs",
    "rollout_log_probs",
    "loss_masks",
    "total_lengths",
    "response_lengths",
)

HOOK_SPECS: Final[dict[str, HookSpec]] = {
    "RolloutFn": HookSpec("RolloutFn", 4, is_async=None),
    "GenerateFn": HookSpec("GenerateFn", 3, is_async=True),
    "DataSourceFactory": HookSpec("DataSourceFactory", 1, is_async=False, is_class=True),
    # A plain def reward runs in a thread pool (rewards/runner.py), as TRL accepts them.
    "RewardFn": HookSpec("RewardFn", 2, is_async=None),
    "BatchedRewardFn": HookSpec("BatchedRewardFn", 2, is_async=None),
    "RewardPostProcessFn": HookSpec("RewardPostProcessFn", 2, is_async=False),
    "DynamicSamplingFilterFn": HookSpec("DynamicSamplingFilterFn", 2, is_async=False),
    "BufferFilterFn": HookSpec("BufferFilterFn", 4, is_async=False),
    "RolloutSampleFilterFn": HookSpec("RolloutSampleFilterFn", 2, is_async=False),
    "RolloutAllSamplesProcessFn": HookSpec("RolloutAllSamplesProcessFn", 3, is_async=False),
    # Miles calls it with args only; this SDK also passes the rollout data.
    "RolloutDataPostprocessFn": HookSpec("RolloutDataPostprocessFn", 2, is_async=False, also_positional=(1,)),
    "LossFn": HookSpec("LossFn", 4, is_async=False),
    "TISFn": HookSpec("TISFn", 0, is_async=False, keywords=_TIS_KEYWORDS),
    "PGLossReducer": HookSpec("PGLossReducer", 4, is_async=False),
    "ConvertSamplesToTrainDataFn": HookSpec("ConvertSamplesToTrainDataFn", 2, is_async=False),
    "BackendInitFn": HookSpec("BackendInitFn", 1, is_async=False),
    "BeforeLogProbHookFn": HookSpec("BeforeLogProbHookFn", 3, is_async=False),
    "BeforeTrainStepHookFn": HookSpec("BeforeTrainStepHookFn", 6, is_async=False),
    "PostSaveHookFn": HookSpec("PostSaveHookFn", 4, is_async=False),
    "RolloutLogFn": HookSpec("RolloutLogFn", 5, is_async=False),
    "EvalRolloutLogFn": HookSpec("EvalRolloutLogFn", 4, is_async=False),
    "RouterMiddleware": HookSpec("RouterMiddleware", 2, is_async=True),
    "ModelProviderFn": HookSpec("ModelProviderFn", 2, is_async=False),
    "AgentFn": HookSpec(
        "AgentFn", 0, is_async=True, keywords=("base_url", "prompt", "request_kwargs", "metadata")
    ),
}
"""Keyed by Protocol name in :mod:`miles_sdk.hooks`."""


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}" if module else str(name)


def _is_async_callable(obj: object) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - instances with an async __call__
    return call is not None and not inspect.isfunction(obj) and inspect.iscoroutinefunction(call)


def _accepts(sig: inspect.Signature, positional: int, keywords: tuple[str, ...]) -> str | None:
    """None when ``sig`` can be called with ``positional`` positional args and ``keywords``; else why not."""
    params = list(sig.parameters.values())
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    has_varkw = any(p.kind is p.VAR_KEYWORD for p in params)
    positional_params = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_positional = [p for p in positional_params if p.default is p.empty]
    if len(positional_params) < positional and not has_varargs:
        return f"takes {len(positional_params)} positional parameter(s), the loop passes {positional}"
    unfilled = [p for p in required_positional[positional:] if p.name not in keywords]
    if unfilled:
        extra = [p.name for p in unfilled]
        return (
            f"requires {len(required_positional)} positional parameter(s) ({', '.join(extra)} have no default), "
            f"the loop passes {positional}"
        )
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [k for k in keywords if k not in names]
    if missing and not has_varkw:
        return f"does not accept keyword argument(s) {', '.join(missing)}"
    required_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if any(k not in keywords for k in required_kw):
        return f"has required keyword-only parameter(s) {required_kw} that the loop does not pass"
    return None


def check_hook_signature(obj: object, protocol: type | str, *, name: str | None = None) -> None:
    """Check ``obj`` against the hook Protocol (class or its name in miles_sdk.hooks).

    Raises HookSignatureError naming the hook, the object and the mismatch.
    """
    proto_name = protocol if isinstance(protocol, str) else protocol.__name__
    if proto_name == "RewardModel":
        proto_name = "RewardFn"
    if proto_name == "BatchedRewardModel":
        proto_name = "BatchedRewardFn"
    spec = HOOK_SPECS.get(proto_name)
    if spec is None:
        raise KeyError(f"unknown hook Protocol {proto_name!r}; known: {sorted(HOOK_SPECS)}")
    label = f"hook {name or proto_name} ({_describe(obj)})"
    if not callable(obj):
        raise HookSignatureError(f"{label} is not callable; expected a {proto_name}")
    if spec.is_class:
        return _check_class_like(obj, spec, label)
    if spec.is_async is True and not _is_async_callable(obj):
        raise HookSignatureError(
            f"{label} must be an async function (`async def`) for {proto_name}; got a sync one"
        )
    if spec.is_async is False and _is_async_callable(obj):
        raise HookSignatureError(f"{label} must be a plain (sync) function for {proto_name}; got `async def`")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # builtins / C callables: nothing to check
    problem = _accepts(sig, spec.positional, spec.keywords)
    if problem is not None and any(_accepts(sig, n, spec.keywords) is None for n in spec.also_positional):
        return
    if problem is not None:
        raise HookSignatureError(f"{label} {problem}; expected {proto_name}{_protocol_signature(proto_name)}")


def accepts_positional(obj: object, n: int) -> bool:
    """Whether ``obj`` can be called with ``n`` positional arguments (True when unknowable)."""
    try:
        return _accepts(inspect.signature(obj), n, ()) is None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def _check_class_like(obj: object, spec: HookSpec, label: str) -> None:
    if inspect.isclass(obj):
        missing = [m for m in ("get_samples", "add_samples", "save", "load") if not hasattr(obj, m)]
        if missing:
            raise HookSignatureError(f"{label} lacks DataSource method(s) {missing}")
        return
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return
    problem = _accepts(sig, spec.positional, spec.keywords)
    if problem is not None:
        raise HookSignatureError(f"{label} {problem}; expected a DataSource factory (args) -> DataSource")


def _protocol_signature(proto_name: str) -> str:
    proto = getattr(hooks, proto_name, None)
    call = vars(proto).get("__call__") if proto is not None else None
    if call is None:
        return ""
    try:
        return str(inspect.signature(call)).replace("(self, ", "(", 1)
    except (TypeError, ValueError):
        return ""


def _import_attr(path: str, flag: str) -> Any:
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise HookLoadError(f"{flag}: {path!r} is not of the form 'pkg.module.attr' or 'pkg.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HookLoadError(f"{flag}: cannot import module {module_name!r} for {path!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise HookLoadError(f"{flag}: module {module_name!r} has no attribute {attr!r} (from {path!r})")
        target = getattr(target, part)
    return target


def load_hook(path: str, protocol: type | str, *, flag: str | None = None) -> Any:
    """Import ``path`` and check it against ``protocol``. ``flag`` (e.g. "--custom-rm-path")
    appears in every error message."""
    proto_name = protocol if isinstance(protocol, str) else protocol.__name__
    label = flag or proto_name
    # Miles hook files import miles.*: resolve those to our shims unless real Miles is installed.
    from miles_sdk.compat import install

    install()
    obj = _import_attr(path, label)
    if proto_name in ("GenerateFn", "RolloutFn"):
        # Miles's newer convention (GenerateFnInput functions, RolloutFnConstructorInput classes).
        from miles_sdk.compat.miles.rollout.generate_hub._convention import adapt_new_convention

        obj = adapt_new_convention(obj, proto_name)
    check_hook_signature(obj, proto_name, name=f"{label}={path}")
    # Imports inside the hook's body fail here, not at its first call after a whole rollout.
    from miles_sdk.compat._imports import BodyImportError, check_body_imports

    try:
        check_body_imports(obj, f"{label}={path}")
    except BodyImportError as exc:
        raise HookLoadError(str(exc)) from exc
    # Miles-style hooks get a mutable args (Miles passes its argparse Namespace); typed ones the Config.
    from miles_sdk.compat._args import is_miles_style, with_miles_args

    return with_miles_args(obj) if is_miles_style(obj) else obj
