"""Hook loading from Miles-style paths, and the runtime signature check."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from miles_sdk import HookLoadError, HookSignatureError, load_hook
from miles_sdk.loading import check_hook_signature


@pytest.fixture()
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_hooks.py").write_text(
        textwrap.dedent("""
        async def custom_rm(args, sample):
            return 1.0
        def sync_rm(args, sample):
            return 1.0
        async def too_few(args):
            return 1.0
        async def needs_more(args, sample, extra):
            return 1.0
        def filter_fn(args, samples, **kwargs):
            return True
        def reducer(total_lengths, response_lengths, loss_masks, calculate_per_token_loss=False):
            return lambda x: x.sum()
        def tis(args, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths,
                response_lengths, **kwargs):
            return pg_loss, loss_masks, {}
        def tis_missing_kw(args, pg_loss):
            return pg_loss
        class Source:
            def __init__(self, args): pass
            def get_samples(self, n): return []
            def add_samples(self, s): pass
            def save(self, r): pass
            def load(self, r=None): pass
        class NotASource:
            def __init__(self, args): pass
        def generate_rollout(args, rollout_id, data_source, evaluation=False):
            return None
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_hooks", None)
    return "user_hooks"


def test_dotted_and_colon_paths_load(hook_module: str) -> None:
    assert load_hook(f"{hook_module}.custom_rm", "RewardFn").__name__ == "custom_rm"
    assert load_hook(f"{hook_module}:custom_rm", "RewardFn").__name__ == "custom_rm"
    assert load_hook(f"{hook_module}.reducer", "PGLossReducer").__name__ == "reducer"
    assert load_hook(f"{hook_module}.tis", "TISFn").__name__ == "tis"
    assert load_hook(f"{hook_module}.Source", "DataSourceFactory").__name__ == "Source"
    assert load_hook(f"{hook_module}.filter_fn", "DynamicSamplingFilterFn").__name__ == "filter_fn"
    assert load_hook(f"{hook_module}.generate_rollout", "RolloutFn").__name__ == "generate_rollout"


def test_missing_module_names_flag_and_path() -> None:
    with pytest.raises(HookLoadError, match=r"--custom-rm-path: cannot import module 'no_such_mod'"):
        load_hook("no_such_mod.rm", "RewardFn", flag="--custom-rm-path")


def test_missing_attribute(hook_module: str) -> None:
    with pytest.raises(HookLoadError, match=r"has no attribute 'nope'"):
        load_hook(f"{hook_module}.nope", "RewardFn", flag="--custom-rm-path")


def test_bad_format() -> None:
    with pytest.raises(HookLoadError, match="not of the form"):
        load_hook("justname", "RewardFn")


def test_sync_where_async_needed(hook_module: str) -> None:
    flag = "--miles-router-middleware-paths"
    with pytest.raises(HookSignatureError, match=rf"{flag}=.*sync_rm.*must be an async function"):
        load_hook(f"{hook_module}.sync_rm", "RouterMiddleware", flag=flag)


def test_plain_def_rewards_are_accepted(hook_module: str) -> None:
    # As in TRL: a plain function scores in a thread pool (issue 14.6).
    assert load_hook(f"{hook_module}.sync_rm", "RewardFn", flag="--custom-rm-path").__name__ == "sync_rm"
    assert load_hook(f"{hook_module}.sync_rm", "BatchedRewardFn").__name__ == "sync_rm"


def test_async_where_sync_needed(hook_module: str) -> None:
    with pytest.raises(HookSignatureError, match="must be a plain \\(sync\\) function"):
        load_hook(f"{hook_module}.custom_rm", "DynamicSamplingFilterFn")


def test_wrong_parameter_count(hook_module: str) -> None:
    with pytest.raises(HookSignatureError, match="takes 1 positional parameter.*passes 2"):
        load_hook(f"{hook_module}.too_few", "RewardFn")
    with pytest.raises(HookSignatureError, match="extra have no default"):
        load_hook(f"{hook_module}.needs_more", "RewardFn")


def test_tis_keywords_checked(hook_module: str) -> None:
    with pytest.raises(HookSignatureError, match="keyword argument"):
        load_hook(f"{hook_module}.tis_missing_kw", "TISFn")


def test_data_source_class_must_have_methods(hook_module: str) -> None:
    with pytest.raises(HookSignatureError, match="lacks DataSource method"):
        load_hook(f"{hook_module}.NotASource", "DataSourceFactory")


def test_not_callable() -> None:
    with pytest.raises(HookSignatureError, match="not callable"):
        check_hook_signature(42, "RewardFn", name="reward_model")


def test_trainer_rejects_custom_loss_without_a_loss_function() -> None:
    from miles_sdk import Config, ConfigError
    from miles_sdk._hookset import resolve_hooks

    with pytest.raises(ConfigError, match="custom_loss needs a loss function"):
        resolve_hooks(Config(loss_type="custom_loss"), {})
    with pytest.raises(ConfigError, match="set loss_type='custom_loss'"):
        resolve_hooks(Config(), {"loss_fn": lambda args, batch, logits, reducer: (logits.sum(), {})})


def test_miles_one_argument_rollout_data_postprocess_is_accepted() -> None:
    from miles_sdk import Config
    from miles_sdk._hookset import resolve_hooks

    seen: list[object] = []

    def postprocess(args: object) -> None:  # Miles calls it with args only
        seen.append(args)

    hooks = resolve_hooks(Config(), {"rollout_data_postprocess": postprocess})
    assert hooks.rollout_data_postprocess is not None
    hooks.rollout_data_postprocess(Config(), {})
    assert len(seen) == 1
