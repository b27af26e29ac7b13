"""Layering of the package (issue 17): the algorithms import no loop, engine or backend, and the
core loop does not import the Miles compatibility layer (it plugs in when a Miles-style hook path
loads). Each check runs in a fresh interpreter: the pytest plugin installs the compat layer here."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

ALGO_IMPORT = """
import json, sys
import torch
before = set(sys.modules)
import miles_sdk.algo, miles_sdk.stages
print(json.dumps(sorted(set(sys.modules) - before)))
"""

SYNC_ROLLOUT_STEP = """
import json, sys
from miles_sdk import RolloutFnTrainOutput, Trainer
from miles_sdk.testing import make_batch, small_config, tiny_policy

def rollout(args, rollout_id, data_source, evaluation=False):  # sync, as Miles's rollout functions are
    return RolloutFnTrainOutput(samples=make_batch(2, 2, rewards=[[0.0, 1.0], [1.0, 0.0]]))

model, tok = tiny_policy("unit", seed=3)
config = small_config(logprob_gap_warn_threshold=0.0)
with Trainer(config, model=model, tokenizer=tok, dataset=[{"input": "1+1=", "label": "2"}], rollout_fn=rollout) as t:
    t.step()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("miles_sdk"))))
"""


def _modules_after(script: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_algorithms_import_without_the_loop_engines_or_backends() -> None:
    loaded = _modules_after(ALGO_IMPORT)
    forbidden = ("miles_sdk.trainer", "miles_sdk.engines.embedded", "miles_sdk.backends", "miles_sdk.rollout",
                 "miles_sdk.distributed", "miles_sdk.compat", "transformers", "torch.distributed.fsdp")  # fmt: skip
    assert [m for m in loaded if m.startswith(forbidden)] == []


def test_a_step_with_a_sync_rollout_function_does_not_import_the_compat_layer() -> None:
    loaded = _modules_after(SYNC_ROLLOUT_STEP)
    assert "miles_sdk.trainer" in loaded
    assert [m for m in loaded if m.startswith("miles_sdk.compat")] == []


def _runtime_imports(tree: ast.AST) -> set[str]:
    """Modules a file imports at run time (anywhere but under ``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        found |= _runtime_imports(node)
    return found


def test_the_cli_parser_does_not_import_the_config_module() -> None:
    """config.py imports _cli_args (Config.from_args); the way back is types only, no circle."""
    from miles_sdk import _cli_args

    with open(_cli_args.__file__, encoding="utf-8") as f:
        imported = _runtime_imports(ast.parse(f.read()))
    assert "miles_sdk.config" not in imported
