"""The miles_sdk test kit: unit-test a hook in a few lines, without a GPU, a hub or a server.

- :func:`tiny_tokenizer`, :func:`tiny_policy`, :func:`save_tiny_policy`: a byte-level tokenizer
  and a seeded tiny causal LM built in code.
- :class:`ScriptedEngine`: an inference engine that answers from a script and records requests.
- :func:`make_sample`, :func:`make_group`, :func:`make_batch`: consistent Samples in one line.
- :func:`call_hook`, :func:`run_sync`, :func:`check_hook`: run a sync/async hook from any test;
  run the Trainer's conformance check.
- :func:`run_steps`: a few real loop steps on the tiny policy with your hooks plugged in.
- ``miles_sdk.testing.strategies``: hypothesis strategies (needs ``hypothesis``; import it
  directly, it is not re-exported here).
- pytest fixtures ``miles_config``, ``tiny_policy``, ``tiny_tokenizer``, ``tiny_checkpoint``,
  ``scripted_engine``: registered automatically when miles_sdk is installed.

Names are loaded on first use, so ``import miles_sdk.testing`` does not import transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miles_sdk.testing.builders import make_batch, make_group, make_sample
    from miles_sdk.testing.engine import ScriptedEngine, ScriptedRequest
    from miles_sdk.testing.hooks import call_hook, check_hook, run_sync
    from miles_sdk.testing.run import StepsResult, run_steps, small_config
    from miles_sdk.testing.tiny import save_tiny_policy, tiny_policy, tiny_tokenizer

__all__ = [
    "ScriptedEngine",
    "ScriptedRequest",
    "StepsResult",
    "call_hook",
    "check_hook",
    "make_batch",
    "make_group",
    "make_sample",
    "run_steps",
    "run_sync",
    "save_tiny_policy",
    "small_config",
    "tiny_policy",
    "tiny_tokenizer",
]

_WHERE: dict[str, str] = {
    "ScriptedEngine": "engine",
    "ScriptedRequest": "engine",
    "call_hook": "hooks",
    "check_hook": "hooks",
    "run_sync": "hooks",
    "StepsResult": "run",
    "run_steps": "run",
    "small_config": "run",
    "make_batch": "builders",
    "make_group": "builders",
    "make_sample": "builders",
    "save_tiny_policy": "tiny",
    "tiny_policy": "tiny",
    "tiny_tokenizer": "tiny",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'miles_sdk.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"miles_sdk.testing.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
