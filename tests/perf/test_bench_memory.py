"""bench/memory.py's CPU mode: the computed column from shapes, and a real tiny step whose owners
are counted (the smoke test keeps the bench running as the Trainer changes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.memory import SHAPES, main


@pytest.mark.parametrize(
    ("model", "params"), [("0.5b", 494_032_768), ("3b", 3_085_938_688), ("7b", 7_615_616_512)]
)
def test_shapes_count_qwen25_parameters(model: str, params: int) -> None:
    assert SHAPES[model].params() == params  # Qwen2.5's published sizes


def test_w2_does_not_fit_without_offload_and_fits_with(capsys: pytest.CaptureFixture[str]) -> None:
    h200 = 141e9
    plain = main(["--model", "7b", "--w2", "--computed-only"])["computed"]
    offloaded = main(["--model", "7b", "--w2", "--computed-only", "--optimizer-cpu-offload"])["computed"]
    device = [k for k in plain if not k.startswith("host")]
    assert sum(plain[k] for k in device) > h200
    assert sum(offloaded[k] for k in device) < 0.7 * h200
    assert "| optimizer state |" in capsys.readouterr().out


def test_tiny_step_on_cpu_measures_the_owners(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    main(["--model", "tiny", "--device", "cpu", "--steps", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    computed, measured = result["computed"], result["measured"]
    # bf16 weights, fp32 masters and AdamW's two moments: what the shapes say (AdamW adds a step
    # counter per tensor).
    for owner in ("weights (policy)", "fp32 master weights"):
        assert measured[owner] == computed[owner], owner
    assert measured["optimizer state"] == pytest.approx(computed["optimizer state"], rel=1e-3)
    assert measured["gradients"] == computed["gradients"]  # fp32 accumulators, counted as clipping starts
    assert set(result["phases"]) >= {"rollout", "train"}
    assert len(result["step_s"]) == 2


def test_w2_step_runs_tiny_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.w2_step import main as w2_main

    out = tmp_path / "w2.json"
    w2_main(["--model", "tiny", "--device", "cpu", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["offload"] is True and len(result["step_s"]) == 2
    assert "| of which optimizer step |" in capsys.readouterr().out


def test_token_budget_is_sized_from_the_card() -> None:
    from bench.memory import W2, Settings, computed, suggested_max_tokens

    comp = computed(SHAPES["7b"], W2, Settings(optimizer_cpu_offload=True, engine_slots=64))
    assert suggested_max_tokens(comp, W2, 139.8 * 2**30) > W2.micro_batch_size * W2.seq_len
    assert suggested_max_tokens(comp, W2, 40 * 2**30) == 0  # the resident owners alone do not fit


def test_activation_bytes_match_what_autograd_saves() -> None:
    import torch

    from bench.memory import Settings, Shape, Workload, build_model, computed

    shape = Shape(hidden=128, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=256, tied=True)
    model = build_model(shape, torch.device("cpu"))
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in weights:
            seen.add(key)
            saved += t.untyped_storage().nbytes()
        return t

    tokens = 2 * 64
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=torch.randint(0, 250, (2, 64)))
    work = Workload(prompts=1, samples=2, prompt_len=32, response_len=32, micro_batch_size=2)
    expected = computed(shape, work, Settings())["activations (train, one micro-batch)"]
    assert tokens == work.micro_batch_size * work.seq_len
    assert abs(saved - expected) <= 0.15 * expected, (saved, expected)
