"""After ``close()``: stepping says the Trainer is closed, and none of its threads are left (14.9)."""

from __future__ import annotations

import threading
import warnings

import pytest

from miles_sdk import Trainer
from miles_sdk.demo.task import addition_reward
from miles_sdk.testing import small_config, tiny_policy

ROWS = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]


def test_step_after_close_says_the_trainer_is_closed_and_no_thread_outlives_it() -> None:
    before = set(threading.enumerate())
    model, tok = tiny_policy("unit")
    trainer = Trainer(small_config(), model=model, tokenizer=tok, dataset=ROWS, reward_model=addition_reward)
    trainer.step()
    started = [t.name for t in set(threading.enumerate()) - before]
    assert any(name.startswith("miles-engine") for name in started), started
    trainer.close()
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == [], f"threads alive after close(): {left}"

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "coroutine ... was never awaited"
        for call in (trainer.step, trainer.fit, trainer.evaluate):
            with pytest.raises(RuntimeError, match="Trainer is closed"):
                call()
    trainer.close()  # idempotent
