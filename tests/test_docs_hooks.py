"""docs/hooks.md names every hook Protocol with its exact signature, so the doc cannot drift."""

from __future__ import annotations

import inspect
from pathlib import Path

from miles_sdk import hooks
from miles_sdk.config import HOOK_PATH_FIELDS

DOC = (Path(__file__).parents[1] / "docs" / "hooks.md").read_text(encoding="utf-8")


def _call_protocols() -> dict[str, type]:
    out: dict[str, type] = {}
    for name in hooks.__all__:
        obj = getattr(hooks, name)
        if inspect.isclass(obj) and obj.__name__ == name and name != "DataSource":
            out[name] = obj
    return out


def test_every_protocol_documented_with_exact_signature() -> None:
    protocols = _call_protocols()
    assert len(protocols) >= 22
    for name, proto in protocols.items():
        sig = str(inspect.signature(proto.__call__)).replace("(self, ", "(", 1).replace("'", "")
        assert f"### `{name}`" in DOC, f"docs/hooks.md has no section for {name}"
        assert f"{name}{sig}" in DOC, f"docs/hooks.md: signature of {name} differs from hooks.py: {name}{sig}"


def test_data_source_methods_documented() -> None:
    for method in ("get_samples", "add_samples", "save", "load"):
        sig = str(inspect.signature(getattr(hooks.DataSource, method))).replace("(self, ", "(self, ", 1)
        assert f"def {method}{sig.replace(chr(39), '')}" in DOC, method


def test_every_flag_in_the_table() -> None:
    for field in HOOK_PATH_FIELDS:
        assert "--" + field.replace("_", "-") in DOC, field
