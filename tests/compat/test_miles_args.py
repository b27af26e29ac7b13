"""Miles-style hooks get a mutable, shared ``args``; typed hooks keep the frozen Config (issue 15.6)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import attrs
import pytest

from miles_sdk.compat import install
from miles_sdk.compat._args import MilesArgs, is_miles_style, miles_args
from miles_sdk.config import Config
from miles_sdk.loading import load_hook
from miles_sdk.testing import run_steps, small_config
from miles_sdk.types import Sample

install()

from miles_style_hooks import args_state  # noqa: E402

MILES_STYLE = '''
from miles.utils.types import Sample

async def set_it(args, sample, **kwargs):
    args.sampling_params = {"temperature": 0.5}
    args.num_parallel = 5
    return 1.0

def read_it(args, samples):
    return args.sampling_params, args.num_parallel, args.rm_type
'''

TYPED = '''
from miles.utils.types import Sample
from miles_sdk.config import Config

async def typed(args: Config, sample: Sample) -> float:
    args.sampling_params = {"temperature": 0.5}
    return 1.0
'''


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_attribute_set_by_one_hook_is_read_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch, "g_miles_style_hooks", MILES_STYLE)
    set_it = load_hook(f"{name}.set_it", "RewardFn", flag="--custom-rm-path")
    read_it = load_hook(f"{name}.read_it", "RewardPostProcessFn", flag="--custom-reward-post-process-path")
    cfg = Config(rm_type="math")
    # Old code: the hook got the frozen Config -> attrs.exceptions.FrozenInstanceError.
    assert asyncio.run(set_it(cfg, Sample())) == 1.0
    assert read_it(cfg, []) == ({"temperature": 0.5}, 5, "math")
    assert not hasattr(cfg, "sampling_params") or cfg.extra.get("sampling_params") is None
    # Another Config (another run) has its own namespace.
    with pytest.raises(AttributeError, match="sampling_params"):
        read_it(Config(rm_type="math"), [])


def test_typed_hook_keeps_the_frozen_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch, "g_typed_hooks", TYPED)
    typed = load_hook(f"{name}.typed", "RewardFn")
    assert not is_miles_style(typed)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        asyncio.run(typed(Config(), Sample()))


def test_miles_args_reads_like_the_config_and_is_shared() -> None:
    cfg = Config(rm_type="dapo", reward_key="score")
    a, b = miles_args(cfg), miles_args(cfg)
    assert isinstance(a, MilesArgs) and a.config is cfg
    a.rollout_max_context_len = 99
    assert b.rollout_max_context_len == 99 and cfg.rollout_max_context_len != 99
    assert b.reward_key == "score"
    with pytest.raises(AttributeError, match="Config has no setting 'nope'"):
        _ = b.nope
    del a.rollout_max_context_len
    assert b.rollout_max_context_len == cfg.rollout_max_context_len


def test_multi_agent_style_generate_sets_args_for_the_reward_in_a_trainer_run() -> None:
    args_state.SEEN.clear()
    cfg = small_config(
        custom_generate_function_path="miles_style_hooks.args_state.generate",
        custom_rm_path="miles_style_hooks.args_state.custom_rm",
    )
    result = run_steps(config=cfg, steps=1)
    assert len(args_state.SEEN) == len(result.samples[0])
    calls, params, context_len = args_state.SEEN[-1]
    assert calls == len(result.samples[0]) and context_len == 123
    assert params["max_new_tokens"] == cfg.rollout_max_response_len
