"""Make ``miles_style_hooks`` importable as a top-level package, as a user's hook package would be
(their ``--*-path`` values name it from the repository root of their project)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
