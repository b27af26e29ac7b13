"""Full garbage collections during training skip the setup's objects (issue 21): a Trainer that
trains freezes the tracked objects after the first full collection, and the last one closed
unfreezes them, so Trainers built one after another (a notebook) keep no cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from miles_sdk import Config, Sample, Trainer, _gc
from miles_sdk._gc import GcFreeze
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


async def _reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


@pytest.fixture(autouse=True)
def _fresh_gc_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with nothing frozen and no Trainer training (an unclosed Trainer of an
    earlier test may have frozen the process), and leaves the process as it found it."""
    was_frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    for name, fresh in (("_holders", 0), ("_frozen", False), ("_full_collections", 0)):
        monkeypatch.setattr(_gc, name, fresh)
    had_callback = _gc._on_collection in gc.callbacks
    if had_callback:  # gc.callbacks is the collector's own list: changed in place, never replaced
        gc.callbacks.remove(_gc._on_collection)
    yield
    gc.unfreeze()  # a failed test must not leave the process frozen
    if was_frozen:
        gc.freeze()
    if _gc._on_collection in gc.callbacks:
        gc.callbacks.remove(_gc._on_collection)
    if had_callback:
        gc.callbacks.append(_gc._on_collection)


def _trainer(tmp_path: Path, name: str) -> Trainer:
    model, tok = tiny_policy("unit", seed=1)
    cfg = small_config(output_dir=str(tmp_path / name))
    return Trainer(cfg, model=model, tokenizer=tok, dataset=ROWS, reward_model=_reward)


def test_trainers_freeze_after_a_full_collection_and_the_last_one_closed_unfreezes(tmp_path: Path) -> None:
    """Fails on the old code: nothing was ever frozen (gc.get_freeze_count() stayed 0)."""
    first = _trainer(tmp_path, "first")
    second = _trainer(tmp_path, "second")
    try:
        first.step()
        assert gc.get_freeze_count() == 0  # no full collection yet: nothing frozen, none forced
        gc.collect()  # the full collection the interpreter runs every ~20 demo steps
        first.step()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # torch, the models, the Trainers: the setup's objects
        second.step()
        first.close()
        assert gc.get_freeze_count() > frozen // 2  # the second Trainer still trains: still frozen
    finally:
        first.close()
        second.close()
    assert gc.get_freeze_count() == 0 and _gc._on_collection not in gc.callbacks


def test_a_cycle_dropped_while_frozen_is_collected_after_close(tmp_path: Path) -> None:
    """A notebook drops a Trainer's objects; once the last Trainer closed, a collection frees them."""

    class Node:
        def __init__(self) -> None:
            self.me = self

    trainer = _trainer(tmp_path, "only")
    try:
        trainer.step()
        cycle = Node()
        gc.collect()
        trainer.step()  # freezes, with the cycle among the frozen objects
        assert gc.get_freeze_count() > 0
        alive = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: collections skip it
    finally:
        trainer.close()
    gc.collect()
    assert alive() is None


def test_objects_frozen_before_do_not_stop_the_freeze_and_close_unfreezes_all() -> None:
    """CPython 3.12 starts with a few hundred objects frozen of its own: a count above zero before
    the Trainer must not turn the freeze off (the device's Python would never freeze), and close
    must still unfreeze (else the Trainers' cycles outlive them)."""
    gc.freeze()  # as the interpreter (3.12) or the user did before the Trainer
    before = gc.get_freeze_count()
    made_after = [[i] for i in range(1000)]  # tracked objects the Trainer's freeze takes in
    holder = GcFreeze()
    holder.step()
    gc.collect()
    holder.step()
    assert gc.get_freeze_count() >= before + len(made_after)
    holder.release()
    assert gc.get_freeze_count() == 0


def test_release_without_a_step_and_twice_is_harmless() -> None:
    holder = GcFreeze()
    holder.release()
    holder.step()
    gc.collect()
    holder.step()
    assert gc.get_freeze_count() > 0
    holder.release()
    holder.release()
    assert gc.get_freeze_count() == 0
