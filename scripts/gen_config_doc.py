"""Write docs/config.md from Config's fields: flag, type, default and the field's docstring.

python scripts/gen_config_doc.py          # rewrite docs/config.md
python scripts/gen_config_doc.py --check  # exit 1 if docs/config.md is out of date (tests run this)
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import attrs

from miles_sdk._cli_args import field_docstrings
from miles_sdk.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "config.md"


def _sections_and_docstrings() -> tuple[dict[str, str], dict[str, str]]:
    """Field -> section title (from the ``# ---- title ----`` comments) and field -> docstring."""
    source = (ROOT / "miles_sdk" / "config.py").read_text(encoding="utf-8")
    section_of: dict[str, str] = {}
    current = ""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("# ----"):
            current = stripped.strip("# -").strip()
        elif (
            ":" in stripped
            and not stripped.startswith(("#", '"', "def ", "@"))
            and line.startswith("    ")
            and not line.startswith("     ")
        ):
            section_of.setdefault(stripped.split(":", 1)[0], current)
    docs = field_docstrings(Config)
    return section_of, docs


def _type_name(tp: object) -> str:
    # Pipes inside table cells must be escaped, even within code spans.
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("|", "\\|")


def render() -> str:
    section_of, docs = _sections_and_docstrings()
    hints = typing.get_type_hints(Config)
    lines = [
        "# Config reference",
        "",
        "Generated from `miles_sdk/config.py` by `python scripts/gen_config_doc.py`; a test keeps it current.",
        "Every field is also a command-line flag (`Config.from_args`, `miles-sdk train`), under Miles's name; a `--disable-*` flag sets its field to False.",
        "",
    ]
    current = None
    for field in attrs.fields(Config):
        if field.name == "extra":
            continue
        section = section_of.get(field.name, "")
        if section != current:
            lines += [
                "",
                f"## {section[:1].upper() + section[1:]}",
                "",
                "| flag | `Config` field | type | default | meaning |",
                "|---|---|---|---|---|",
            ]
            current = section
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default  # type: ignore[arg-type]
        meaning = docs.get(field.name, "").replace("|", "\\|")
        lines.append(
            f"| `{flag}` | `{field.name}` | `{_type_name(hints[field.name])}` | `{default!r}` | {meaning} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print("docs/config.md is out of date: run python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
