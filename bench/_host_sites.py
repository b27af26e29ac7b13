"""Host time of torch calls by call site: where a step waits on the GPU (a sync shows as a long
host call) or spends its Python, which neither the profiler's op table (no call sites from the
Trainer's worker threads) nor cProfile (no CUDA waits by name) shows.

    with HostSites() as sites:
        run_some_steps()
    print(sites.table(steps))
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from typing import Any, Self

import torch

# Calls that may synchronise with the GPU or run per sample.
WATCHED: tuple[tuple[Any, str], ...] = (
    (torch, "repeat_interleave"),
    (torch.Tensor, "repeat_interleave"),
    (torch, "cat"),
    (torch, "split"),
    (torch.Tensor, "split"),
    (torch, "nonzero"),
    (torch.Tensor, "nonzero"),
    (torch.Tensor, "item"),
    (torch.Tensor, "tolist"),
    (torch.Tensor, "cpu"),
    (torch.Tensor, "to"),
    (torch.Tensor, "__bool__"),
    (torch.Tensor, "__float__"),
    (torch.Tensor, "__int__"),
    (torch.Tensor, "pin_memory"),
)
_OURS = ("miles_sdk", "transformers", "bench")


def _site() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if any(part in name for part in _OURS) and not name.endswith("_host_sites.py"):
            short = name.split("site-packages/")[-1].split("/main/")[-1]
            return f"{short}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


class HostSites:
    """Patches :data:`WATCHED` while entered; ``table`` lists the sites by host time."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str) -> Callable[..., Any]:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            key = (name, _site())
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1

        return timed

    def __enter__(self) -> Self:
        for owner, name in WATCHED:
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, self._wrap(owner, name))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def table(self, steps: int, rows: int = 25) -> str:
        lines = ["| call | site | calls/step | host ms/step |", "|---|---|---|---|"]
        for (name, site), sec in self.seconds.most_common(rows):
            lines.append(f"| {name} | {site} | {self.calls[(name, site)] / steps:.0f} | {sec * 1e3 / steps:.2f} |")
        return "\n".join(lines)
