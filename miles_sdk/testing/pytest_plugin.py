"""pytest plugin of the miles_sdk test kit, loaded automatically (``pytest11`` entry point).

Fixtures:

- ``miles_config``: a small valid :class:`~miles_sdk.config.Config` (CPU, float32, short responses).
- ``tiny_policy``: a seeded tiny causal LM and its tokenizer, built once per test session.
- ``tiny_tokenizer``: the byte-level test tokenizer alone (cheap, built once per session).
- ``tiny_checkpoint``: a saved tiny model + tokenizer directory (``Config.hf_checkpoint``).
- ``scripted_engine``: a :class:`~miles_sdk.testing.engine.ScriptedEngine` that answers every
  prompt with ``"42"`` (tests wanting other answers build their own).

Everything heavy (torch, transformers) is imported inside the fixtures: this module is imported by
every pytest session in an environment where miles_sdk is installed, so it must stay cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from miles_sdk.config import Config
    from miles_sdk.testing.engine import ScriptedEngine

__all__ = ["miles_config", "scripted_engine", "tiny_checkpoint", "tiny_policy", "tiny_tokenizer"]


@pytest.fixture
def miles_config() -> Config:
    """A small, valid Config: 2 prompts x 2 samples, 16-token responses, CPU float32."""
    from miles_sdk.config import Config

    return Config(
        rollout_batch_size=2,
        n_samples_per_prompt=2,
        rollout_max_response_len=16,
        global_batch_size=4,
        micro_batch_size=2,
        num_rollout=2,
        device="cpu",
        dtype="float32",
        lr=1e-3,
        seed=0,
        progress_bar=False,
        sglang_server_concurrency=8,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer of :func:`miles_sdk.testing.tiny.tiny_tokenizer`."""
    from miles_sdk.testing.tiny import tiny_tokenizer as build

    return build()


@pytest.fixture(scope="session")
def tiny_policy() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """``(model, tokenizer)``: :func:`miles_sdk.testing.tiny.tiny_policy` ``("unit", seed=0)``.

    Session-scoped to keep the suite fast: a test that trains the model must copy it first
    (``copy.deepcopy(model)``) so it does not leak weights into other tests.
    """
    from miles_sdk.testing.tiny import tiny_policy as build

    return build("unit", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the ``"unit"`` tiny policy saved with ``save_pretrained`` (model and
    tokenizer), for tests of the real loading path: ``Config(hf_checkpoint=str(tiny_checkpoint))``."""
    from miles_sdk.testing.tiny import save_tiny_policy

    return save_tiny_policy(tmp_path_factory.mktemp("tiny_checkpoint"), "unit", seed=0)


@pytest.fixture
def scripted_engine(tiny_tokenizer: PreTrainedTokenizerFast) -> ScriptedEngine:
    """A ScriptedEngine (with the tiny tokenizer) that answers every prompt with ``"42"``."""
    from miles_sdk.testing.engine import ScriptedEngine

    # rollout's TokenizerLike Protocol is narrower than transformers' annotated signatures,
    # though the tokenizer satisfies it at run time.
    tokenizer: Any = tiny_tokenizer
    return ScriptedEngine("42", tokenizer=tokenizer)


def pytest_configure(config: pytest.Config) -> None:
    """Hook files written for Miles (``from miles.utils.types import Sample``) import in tests as
    they do under the Trainer: install the ``miles.*`` shims (a no-op when real Miles is installed).
    Every Trainer in a test also checks each weight sync (version and weights on the engine)."""
    import os

    from miles_sdk.compat import install

    install()
    os.environ.setdefault("MILES_SDK_CHECK_WEIGHT_SYNC", "1")
