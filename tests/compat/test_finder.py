"""The ``miles`` -> shim import hook: aliases, idempotence, unknown modules, never shadowing Miles."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import miles_sdk.types
from miles_sdk import compat
from miles_sdk.loading import load_hook

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_install() -> object:
    compat.uninstall()
    assert not compat.is_installed()
    yield
    compat.install()  # leave it as load_hook would


def test_install_is_idempotent_and_aliases_the_shim_modules(fresh_install: object) -> None:
    assert compat.install() is True
    assert compat.install() is True
    assert sum(isinstance(f, compat.MilesShimFinder) for f in sys.meta_path) == 1
    import miles.utils.types
    from miles.rollout.sglang_rollout import GenerateState

    from miles_sdk.compat.miles.rollout import sglang_rollout

    # One module under two names: state (GenerateState's registry) exists once.
    assert miles.utils.types.Sample is miles_sdk.types.Sample
    assert sys.modules["miles.rollout.sglang_rollout"] is sglang_rollout
    assert GenerateState is sglang_rollout.GenerateState
    assert sglang_rollout.__spec__ is not None and sglang_rollout.__spec__.name == sglang_rollout.__name__


def test_uninstall_removes_the_finder_and_the_aliases(fresh_install: object) -> None:
    compat.install()
    import miles.utils.misc

    compat.uninstall()
    assert not compat.is_installed()
    assert not any(name == "miles" or name.startswith("miles.") for name in sys.modules)
    with pytest.raises(ModuleNotFoundError):
        import miles.utils.types  # noqa: F401


def test_unknown_miles_module_names_itself_and_what_is_provided() -> None:
    compat.install()
    with pytest.raises(ModuleNotFoundError) as info:
        import miles.ray.actor_group  # noqa: F401
    message = str(info.value)
    assert "'miles.ray'" in message
    assert "miles.utils.http_utils" in message and "miles.rollout.sglang_rollout" in message
    assert info.value.name == "miles.ray"
    with pytest.raises(ModuleNotFoundError, match="miles.rollout.sglang_rollout.nope"):
        import miles.rollout.sglang_rollout.nope  # noqa: F401


def test_provided_modules_lists_every_public_shim() -> None:
    provided = compat.provided_modules()
    assert provided[0] == "miles"
    assert {
        "miles.utils.types",
        "miles.utils.http_utils",
        "miles.utils.misc",
        "miles.utils.async_utils",
        "miles.rollout.sglang_rollout",
        "miles.rollout.base_types",
        "miles.rollout.data_source",
        "miles.rollout.filter_hub.base_types",
        "miles.rollout.filter_hub.dynamic_sampling_filters",
        "miles.rollout.rm_hub",
        "miles.rollout.rm_hub.math_utils",
        "miles.rollout.rm_hub.math_dapo_utils",
    } <= set(provided)


def test_load_hook_installs_the_finder_itself(tmp_path: Path, fresh_install: object) -> None:
    (tmp_path / "user_rm_mod.py").write_text(
        textwrap.dedent("""
        from miles.utils.types import Sample

        async def rm(args, sample: Sample, **kwargs):
            return 1.0
    """)
    )
    sys.path.insert(0, str(tmp_path))
    try:
        hook = load_hook("user_rm_mod.rm", "RewardFn", flag="--custom-rm-path")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("user_rm_mod", None)
    assert compat.is_installed()
    assert inspect.unwrap(hook).__globals__["Sample"] is miles_sdk.types.Sample


def test_a_real_miles_package_is_never_shadowed(tmp_path: Path) -> None:
    fake = tmp_path / "miles"
    (fake / "utils").mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    (fake / "utils" / "__init__.py").write_text("")
    (fake / "utils" / "types.py").write_text("Sample = 'the real one'\n")
    (tmp_path / "user_hook.py").write_text(
        "from miles.utils.types import Sample\n\nasync def rm(args, sample):\n    return Sample\n"
    )
    script = textwrap.dedent("""
        import inspect
        import sys
        import miles_sdk.compat as compat
        from miles_sdk.loading import load_hook
        print(compat.install(), compat.is_installed())
        hook = load_hook("user_hook.rm", "RewardFn")
        import miles.utils.types
        print(miles.utils.types.Sample, inspect.unwrap(hook).__globals__["Sample"], miles.REAL)
    """)
    env_path = f"{tmp_path}:{REPO}"
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": env_path, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["False False", "the real one the real one True"]


def test_miles_default_paths_load_as_their_protocols() -> None:
    from miles_sdk.data import RolloutDataSourceWithBuffer, pop_first
    from miles_sdk.rollout import check_reward_nonzero_std

    assert (
        load_hook("miles.rollout.data_source.RolloutDataSourceWithBuffer", "DataSourceFactory")
        is RolloutDataSourceWithBuffer
    )
    assert load_hook("miles.rollout.data_source.pop_first", "BufferFilterFn") is pop_first
    assert (
        load_hook(
            "miles.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std",
            "DynamicSamplingFilterFn",
        )
        is check_reward_nonzero_std
    )
    load_hook("miles.rollout.sglang_rollout.generate_rollout", "RolloutFn")
    load_hook("miles.rollout.sglang_rollout.generate", "GenerateFn")
    load_hook("miles.rollout.rm_hub.async_rm", "RewardFn")
    load_hook("miles.rollout.rm_hub.batched_async_rm", "BatchedRewardFn")
