"""Keeping Python's full garbage collections off the training loop (issue 21).

A process that imported torch and transformers and built a model holds a few hundred thousand
objects tracked by the cyclic garbage collector. Each step creates and drops many objects
(samples, asyncio futures, metrics), and about every 20 steps of the demo CPython runs a full
collection over all of them: 150-280 ms on the CPU, on the step that happens to trigger it, while
the step itself is ~160 ms (bench.tiny_step).

``gc.freeze()`` moves every tracked object into a permanent generation that collections skip, so
the later full collections walk only the objects created since. A :class:`GcFreeze` per Trainer
does that once, right after the first full collection that runs while the Trainer trains (its
first step onwards): no collection of its own (a Trainer that takes a few steps, as in tests,
costs nothing), and the garbage that collection found is gone before the freeze. At the next
step's start it collects the young generations (well under a millisecond) and freezes.

Frozen objects are still freed when their reference count drops; only garbage in reference
cycles among them waits until they are unfrozen. :meth:`GcFreeze.release` (``Trainer.close``)
unfreezes when no other Trainer of the process still trains, so a notebook that builds one Trainer
after another does not keep the earlier ones' cycles; the interpreter's exit unfreezes too. That
unfreezes whatever else was frozen as well: ``gc.unfreeze`` takes no argument, and a freeze kept
past close would keep the Trainers' cycles. (CPython 3.12 starts with a few hundred objects frozen
of its own, so a non-zero count cannot tell a user's freeze from the interpreter's.)
"""

from __future__ import annotations

import atexit
import gc
import threading
from typing import Any

__all__ = ["GcFreeze"]

_lock = threading.Lock()
_holders = 0
"""Trainers of the process that train (stepped, not closed)."""
_full_collections = 0
"""Full collections seen while holders train (counted by :func:`_on_collection`)."""
_frozen = False
_exit_hook = False


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    global _full_collections
    if phase == "stop" and info.get("generation") == 2:
        _full_collections += 1


class GcFreeze:
    """One Trainer's part in the process's freeze: :meth:`step` at each step's start,
    :meth:`release` when it closes (both idempotent in the sense that matters: a Trainer holds
    at most once)."""

    def __init__(self) -> None:
        self._holding = False

    def step(self) -> None:
        """At a step's start: hold (the first time), and freeze once a full collection has run."""
        global _holders, _frozen, _exit_hook
        if not self._holding:
            with _lock:
                self._holding = True
                _holders += 1
                if _holders == 1:
                    gc.callbacks.append(_on_collection)
                    if not _exit_hook:
                        atexit.register(_unfreeze_at_exit)
                        _exit_hook = True
        if not _frozen and _full_collections:
            with _lock:
                if not _frozen and _holders:
                    gc.collect(1)  # the young generations' garbage, not frozen with the rest
                    gc.freeze()
                    _frozen = True

    def release(self) -> None:
        """The Trainer stops training: the last one of the process unfreezes what was frozen."""
        global _holders, _frozen, _full_collections
        with _lock:
            if not self._holding:
                return
            self._holding = False
            _holders -= 1
            if _holders:
                return
            if _on_collection in gc.callbacks:
                gc.callbacks.remove(_on_collection)
            if _frozen:
                gc.unfreeze()
            _frozen = False
            _full_collections = 0


def _unfreeze_at_exit() -> None:
    """Objects left frozen by a Trainer never closed are collected at exit like any other."""
    if _frozen:
        gc.unfreeze()
