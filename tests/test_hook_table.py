"""Every row of Miles's hook table has its Protocol, Config field and CLI flag; __all__ is exact."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import miles_sdk
from miles_sdk import Config, hooks
from miles_sdk.config import HOOK_PATH_FIELDS
from miles_sdk.loading import HOOK_SPECS

DOC = (Path(__file__).parent / "data" / "miles-hooks-doc.txt").read_text(encoding="utf-8")


def _table_flags() -> list[str]:
    glance = DOC.split("At a glance", 1)[1].split("Rollout\n\n--rollout-function-path", 1)[0]
    return sorted(set(re.findall(r"--[a-z-]+-paths?", glance)))


def test_table_parsed() -> None:
    flags = _table_flags()
    assert len(flags) == 22, flags
    assert "--custom-pg-loss-reducer-function-path" in flags


def test_every_table_flag_has_a_field_and_a_protocol() -> None:
    for flag in _table_flags():
        field = flag[2:].replace("-", "_")
        assert field in HOOK_PATH_FIELDS, f"{flag}: no Config field"
        proto = HOOK_PATH_FIELDS[field]
        assert hasattr(hooks, proto), f"{flag}: hooks.{proto} missing"
        assert proto in HOOK_SPECS, f"{flag}: no runtime check for {proto}"


def test_from_args_accepts_every_table_flag() -> None:
    argv: list[str] = []
    for flag in _table_flags():
        argv += [flag, "pkg.mod.fn"] if not flag.endswith("paths") else [flag, "a.b.c", "d.e.f"]
    c = Config.from_args(argv + ["--loss-type", "custom_loss"])
    for flag in _table_flags():
        assert getattr(c, flag[2:].replace("-", "_")) is not None


def test_every_protocol_has_a_docstring_saying_when_it_runs() -> None:
    for name in hooks.__all__:
        obj = getattr(hooks, name)
        if inspect.isclass(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_public_names_are_exactly_all() -> None:
    public = {n for n in dir(miles_sdk) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(miles_sdk, n))}
    assert public - modules == set(miles_sdk.__all__)
    for name in [
        "Trainer",
        "Config",
        "Sample",
        "RolloutFn",
        "GenerateFn",
        "DataSource",
        "RewardModel",
        "BatchedRewardModel",
        "LossFn",
        "PGLossReducer",
        "TISFn",
    ]:
        assert name in miles_sdk.__all__


def test_import_pulls_no_heavy_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, miles_sdk; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('megatron', 'sglang', 'ray', 'wandb', 'hypothesis')]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
