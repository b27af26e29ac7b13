"""Miles's TIS hook file (examples/.../mis.py, copied unchanged) loads and trains (issue 15.4)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from miles_sdk.algo.tis import mis_function
from miles_sdk.config import Config
from miles_sdk.loading import HookLoadError, load_hook
from miles_sdk.testing import run_steps, small_config

MIS = "miles_style_hooks.mis.compute_mis_weights_with_cp"


def _inputs(seed: int = 0) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 5]
    train = [-torch.rand(n, generator=g) for n in lengths]
    rollout = [t + 0.3 * torch.randn(t.shape, generator=g) for t in train]
    return {
        "pg_loss": torch.randn(sum(lengths), generator=g),
        "train_log_probs": train,
        "rollout_log_probs": rollout,
        "loss_masks": [torch.ones(n) for n in lengths],
        "total_lengths": [n + 4 for n in lengths],
        "response_lengths": lengths,
    }


@pytest.mark.parametrize("qkv_format", ["thd", "bshd"])
def test_mis_hook_matches_the_builtin_mis(qkv_format: str) -> None:
    # Old code: "No module named 'miles.backends'", then "Config has no setting 'qkv_format'".
    hook = load_hook(MIS, "TISFn", flag="--custom-tis-function-path")
    args = Config(use_tis=True, use_rs=True, tis_mode="clip", tis_upper_bound=1.5, qkv_format=qkv_format)
    inputs = _inputs()
    extra = {"max_seq_lens": [16, 16]} if qkv_format == "bshd" else {}
    pg, masks, metrics = hook(args=args, **inputs, **extra)
    ref_pg, ref_masks, _ = mis_function(args=args, **inputs)  # type: ignore[arg-type]
    torch.testing.assert_close(pg, ref_pg)
    for m, r in zip(masks, ref_masks, strict=True):
        torch.testing.assert_close(m.float(), r.float())
    assert metrics and all(k.startswith("mis_") and v.numel() == 8 for k, v in metrics.items())


def test_qkv_format_is_a_flag() -> None:
    assert Config.from_args(["--qkv-format", "bshd"]).qkv_format == "bshd"


def test_mis_hook_trains_through_the_trainer() -> None:
    cfg = small_config(use_tis=True, custom_tis_function_path=MIS)
    result = run_steps(config=cfg, steps=1)
    (metrics,) = result.metrics
    assert math.isfinite(metrics["train/loss"])
    assert any(k.startswith("train/mis_") for k in metrics), sorted(metrics)


LAZY = '''
from miles.utils.types import Sample


def tis(args, *, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths, response_lengths, **kw):
    from miles.backends.not_a_module import helper

    return helper(pg_loss)
'''


def test_a_missing_import_inside_a_hook_fails_at_load_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "g_lazy_hook.py").write_text(LAZY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "g_lazy_hook", raising=False)
    with pytest.raises(HookLoadError) as err:
        load_hook("g_lazy_hook.tis", "TISFn", flag="--custom-tis-function-path")
    message = str(err.value)
    assert "--custom-tis-function-path=g_lazy_hook.tis" in message
    assert "miles.backends.not_a_module" in message and "g_lazy_hook.py:6" in message
