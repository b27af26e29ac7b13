"""Make the repository root importable, so ``import examples`` works however pytest is started
(``python -m pytest`` adds the cwd to sys.path, the ``pytest`` script does not)."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
