"""Check the imports a hook makes inside its body when it is loaded, not at its first call.

Miles hook files often import lazily (``mis.py`` imports ``miles.backends.training_utils.cp_utils``
inside ``compute_mis_weights_with_cp`` so the file loads without Megatron). A missing module then
surfaced only at the first train step, after a whole rollout. :func:`check_body_imports` runs those
import statements' targets once at load time and names the hook, file and line of one that fails.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap

__all__ = ["BodyImportError", "check_body_imports"]


class BodyImportError(ImportError):
    """An import inside a hook's body that cannot succeed."""


def _body_imports(fn: object) -> tuple[str, int, list[ast.Import | ast.ImportFrom]]:
    target = inspect.unwrap(fn) if callable(fn) else fn
    try:
        lines, first_line = inspect.getsourcelines(target)  # type: ignore[arg-type]
        path = inspect.getsourcefile(target) or "<unknown>"  # type: ignore[arg-type]
    except (OSError, TypeError):
        return "<unknown>", 0, []
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return path, first_line, []
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    return path, first_line, [n for n in found if not (isinstance(n, ast.ImportFrom) and n.level)]


def _problem(node: ast.Import | ast.ImportFrom) -> str | None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            try:
                importlib.import_module(alias.name)
            except ImportError as exc:
                return f"`import {alias.name}` fails: {exc}"
        return None
    module_name = node.module or ""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"`from {module_name} import ...` fails: {exc}"
    for alias in node.names:
        if alias.name == "*" or hasattr(module, alias.name):
            continue
        try:
            importlib.import_module(f"{module_name}.{alias.name}")
        except ImportError:
            return f"`from {module_name} import {alias.name}` fails: {module_name} has no {alias.name!r}"
    return None


def check_body_imports(fn: object, label: str) -> None:
    """Import what ``fn``'s body imports; raise :class:`BodyImportError` naming ``label`` (the flag
    and path), the file and line, and the failing import. Module-level imports already ran."""
    path, first_line, nodes = _body_imports(fn)
    for node in nodes:
        problem = _problem(node)
        if problem is not None:
            line = first_line + node.lineno - 1
            raise BodyImportError(
                f"{label}: {problem} ({path}:{line}, inside the hook, so it would fail at its first call "
                "after a whole rollout). See docs/miles-compat.md for the miles.* modules provided."
            )
