"""Call and check hooks from plain tests.

.. code-block:: python

    reward = call_hook(my_rm, miles_config, make_sample("1+1?", "2", label="2"))  # async hook, sync test
    check_hook(my_rm, RewardFn)  # the same conformance check Trainer(...) runs
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast, overload

__all__ = ["call_hook", "check_hook", "run_sync"]

P = ParamSpec("P")
T = TypeVar("T")


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` to completion and return its result, from sync code.

    Without a running event loop it uses ``asyncio.run``. Inside one (a Jupyter cell, an async
    test) it runs the awaitable on a fresh loop in a new thread and waits, since a loop cannot be
    re-entered. Context variables (the installed ``RolloutContext``) are carried across, and an
    exception from the awaitable is re-raised here unchanged.
    """
    coro = _as_coroutine(awaitable)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)

    context = contextvars.copy_context()
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            # context.run makes asyncio.run's main task inherit the caller's context variables.
            outcome["value"] = context.run(asyncio.run, coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=worker, name="miles_sdk-call_hook", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["value"])


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _as_coroutine(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    if inspect.iscoroutine(awaitable):
        return awaitable
    return _await(awaitable)


@overload
def call_hook(hook: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
@overload
def call_hook(hook: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
def call_hook(hook: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
    """Call a sync or async hook and return its result: what the loop would get after awaiting.

    Works from a plain test function and from inside a running event loop (see :func:`run_sync`).
    The arguments are passed through as given, so a wrong call fails as it would in the loop.
    """
    result = hook(*args, **kwargs)
    if inspect.isawaitable(result):
        return run_sync(result)
    return result


def check_hook(obj: object, protocol: type | str, *, name: str | None = None) -> None:
    """Run the conformance check that ``Trainer(...)`` runs on ``obj`` as a ``protocol`` hook.

    ``protocol`` is a Protocol from :mod:`miles_sdk.hooks` (``RewardFn``, ``GenerateFn``, ...) or
    its name. Checks: callable, ``async def`` where the loop awaits it, sync where it does not, and
    an arity that accepts the loop's arguments. Raises
    :class:`~miles_sdk.loading.HookSignatureError` naming the hook and the mismatch.
    """
    from miles_sdk.loading import check_hook_signature

    check_hook_signature(obj, protocol, name=name)
