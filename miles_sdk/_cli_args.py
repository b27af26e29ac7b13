"""Miles-style command-line flags -> Config.

The parser is generated from Config's fields, so every field has its ``--dashed-name`` flag and a
new field can never be forgotten on the command line.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import inspect
import itertools
import json
import re
import sys
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from miles_sdk._errors import ConfigError

if TYPE_CHECKING:
    # Types only: the parser gets the Config class from its caller, so this module never imports
    # config.py at run time (config.py imports this one, in Config.from_args).
    from miles_sdk.config import Config


class _ErrorRaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _bool_or_literal(tp: Any) -> list[str] | None:
    """The literal's values of a ``bool | Literal[...]`` type, else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(tp)
    literals = [a for a in args if typing.get_origin(a) is typing.Literal]
    if bool not in args or not literals or len(args) != 1 + len(literals):
        return None
    return [str(v) for a in literals for v in typing.get_args(a)]


def _bool_or_choice(text: str, *, choices: list[str]) -> bool | str:
    if text in choices:
        return text
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false or one of {choices}, got {text!r}")


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected JSON, got {text!r} ({exc})") from exc


def field_docstrings(config_cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal under it in the class's source); attrs
    keeps none at run time, and the CLI help and docs/config.md both need them."""
    return dict(_field_docstrings(config_cls.__module__, config_cls.__name__))


@functools.cache
def _field_docstrings(module_name: str, name: str) -> dict[str, str]:
    source = inspect.getsource(sys.modules[module_name])
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(cls.body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _argparse_safe(text: str | None) -> str | None:
    """Escape ``%`` for argparse, which %-formats every help string when it renders --help (a
    docstring saying "16-28% faster" would crash ``--help``). Done here, once, so docstrings stay
    plain text for docs/config.md."""
    return None if text is None else text.replace("%", "%%")


def _add_field(
    parser: argparse.ArgumentParser, field: attrs.Attribute[Any], tp: Any, docs: dict[str, str]
) -> None:
    name = field.name
    flag = field.metadata.get("flag", "--" + name.replace("_", "-"))
    help_text = _argparse_safe(docs.get(name))
    base = _strip_optional(tp)
    origin = typing.get_origin(base)
    choices = _bool_or_literal(base)
    if choices is not None:
        # bool | Literal["auto"]: the bare flag is on (Miles's store_true), --no-... off, and
        # the literal's values may follow the flag (--gradient-checkpointing auto).
        parser.add_argument(
            flag,
            dest=name,
            nargs="?",
            const=True,
            default=field.default,
            type=functools.partial(_bool_or_choice, choices=choices),
            metavar="{" + ",".join(["true", "false", *choices]) + "}",
            help=help_text,
        )
        parser.add_argument("--no-" + flag[2:], dest=name, action="store_false", help=argparse.SUPPRESS)
        return
    if base is bool:
        if flag.startswith("--disable-"):
            parser.add_argument(flag, dest=name, action="store_false", default=field.default, help=help_text)
        else:
            parser.add_argument(flag, dest=name, action="store_true", default=field.default, help=help_text)
            if not flag.startswith("--no-"):  # an explicit off switch, for flags that default to on
                parser.add_argument(
                    "--no-" + flag[2:], dest=name, action="store_false", help=argparse.SUPPRESS
                )
        return
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs.Factory is a class at run time
        default = default.factory()
    if origin is list:
        (item,) = typing.get_args(base)
        parser.add_argument(flag, dest=name, nargs="+", type=item, default=default, help=help_text)
    elif origin is dict:
        parser.add_argument(flag, dest=name, type=_json_value, default=default, help=help_text)
    elif origin is typing.Literal:
        choices = list(typing.get_args(base))
        parser.add_argument(flag, dest=name, choices=choices, default=default, help=help_text)
    else:
        parser.add_argument(flag, dest=name, type=base, default=default, help=help_text)


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$")
"""A value such as ``-1e-3``: argparse's own pattern (``-1``, ``-0.5``) misses exponents, so
``--lr -1e-3`` was read as an unknown flag instead of a value (Config then says what is wrong)."""


def build_parser(cls: type[Config]) -> argparse.ArgumentParser:
    parser = _ErrorRaisingParser(prog="miles-sdk train", allow_abbrev=False)
    # No flag of ours looks like a number, so argparse takes a token matching this as a value.
    parser._negative_number_matcher = _NEGATIVE_NUMBER
    hints = cls.field_types()
    docs = field_docstrings(cls)
    for field in attrs.fields(cls):
        if field.name == "extra":
            continue
        _add_field(parser, field, hints[field.name], docs)
    return parser


def _unknown_to_extra(unknown: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    key: str | None = None
    for token in unknown:
        if token.startswith("--"):
            key = token[2:].replace("-", "_")
            extra[key] = True
        elif key is not None:
            prev = extra[key]
            extra[key] = token if prev is True else (prev if isinstance(prev, list) else [prev]) + [token]
    return extra


def parse_config_args(cls: type[Config], argv: Sequence[str] | None, *, allow_unknown: bool) -> Config:
    parser = build_parser(cls)
    namespace, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    if unknown and not allow_unknown:
        flags = [u for u in unknown if u.startswith("-")] or unknown
        known_flags = [s for a in parser._actions for s in a.option_strings]
        listed = ", ".join(
            f + (f" (did you mean {h[0]}?)" if (h := difflib.get_close_matches(f, known_flags, n=1)) else "")
            for f in flags
        )
        raise ConfigError(
            f"unknown flag(s): {listed}; pass --allow-unknown-flags (Python: allow_unknown=True) to keep "
            "them in Config.extra for hooks"
        )
    values = vars(namespace)
    return cls(**values, extra=_unknown_to_extra(unknown))
