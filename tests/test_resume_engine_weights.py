"""Resume is exact when the engine samples from a lagging copy (update_weights_interval > 1; issue 13.6).

The uninterrupted run samples from the copy of the last sync, not from the trained weights, so a
checkpoint has to carry that copy: refreshing it from the loaded policy on resume changed the
step-after-resume rollout log-probs by ~2 nats in the issue's run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)  # differs within each group, so every step trains


def _trainer(tmp_path: Path, name: str) -> Trainer:
    model, tok = tiny_policy("unit", seed=3)
    config = small_config(
        output_dir=str(tmp_path / name),
        update_weights_interval=2,  # the engine keeps its own copy, synced after rollouts 1, 3, ...
        rollout_shuffle=True,
        lr=5e-2,  # large steps, so trained and synced weights differ clearly
        num_rollout=4,
    )
    return Trainer(config, model=model, tokenizer=tok, dataset=ROWS, reward_model=_alternating_reward)


def _rollout_log_probs(samples: list[Sample]) -> list[list[float]]:
    return [list(s.rollout_log_probs or []) for s in samples]


def test_resume_samples_from_the_same_stale_engine_copy(tmp_path: Path) -> None:
    straight = _trainer(tmp_path, "straight")
    try:
        for _ in range(3):  # rollouts 0-2: synced after 1; after 2 the copy lags the trained weights
            straight.step()
        straight.save(tmp_path / "ckpt")
        engine_version = straight.engine.weight_version
        straight.step()  # rollout 3, sampled from the copy synced after rollout 1
        expected = straight.last_samples
    finally:
        straight.close()

    resumed = _trainer(tmp_path, "resumed")
    try:
        resumed.load(tmp_path / "ckpt")
        assert resumed.rollout_id == 3
        assert resumed.engine.weight_version == engine_version
        resumed.step()
        got = resumed.last_samples
    finally:
        resumed.close()

    assert [s.tokens for s in got] == [s.tokens for s in expected]
    for mine, theirs in zip(_rollout_log_probs(got), _rollout_log_probs(expected), strict=True):
        assert mine == pytest.approx(theirs, abs=1e-5)
    assert {s.weight_versions[-1] for s in got} == {s.weight_versions[-1] for s in expected}


def test_engine_state_round_trips_its_own_weights() -> None:
    """The engine's state carries its copy only when it has one; loading it restores the copy."""
    from miles_sdk.engines.embedded import EmbeddedEngine

    model, tok = tiny_policy("unit", seed=0)
    shared = EmbeddedEngine(model, tok)
    assert "weights" not in shared.state_dict()  # it reads the live policy: nothing to save

    engine = EmbeddedEngine(model, tok, own_weights=True)
    state = engine.state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    engine.update_weights()  # the copy now holds the moved weights, version 1
    engine.load_state_dict(state)
    restored = dict(engine._model.named_parameters())
    for name, value in state["weights"].items():
        if name in restored:
            torch.testing.assert_close(restored[name], value, msg=name)
    assert engine.weight_version == 1  # versions never go back
