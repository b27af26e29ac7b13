"""Miles's LoRA flags: parsing, defaults, and the errors that name the flag."""

from __future__ import annotations

import pytest

from miles_sdk import Config
from miles_sdk.config import ConfigError
from miles_sdk.lora import ALL_LINEAR, apply_lora, target_module_names
from miles_sdk.testing import small_config, tiny_policy


def test_miles_flags_and_defaults() -> None:
    c = Config.from_args(
        [
            "--lora-rank",
            "8",
            "--lora-alpha",
            "32",
            "--lora-dropout",
            "0.05",
            "--target-modules",
            "q_proj,v_proj",
        ]
    )
    assert (c.lora_rank, c.lora_alpha, c.lora_dropout, c.target_modules) == (8, 32, 0.05, "q_proj,v_proj")
    d = Config()
    # Miles's defaults (miles/utils/arguments.py add_lora_arguments): rank 0 is off.
    assert (d.lora_rank, d.lora_alpha, d.lora_dropout, d.target_modules, d.lora_adapter_path) == (
        0,
        16,
        0.0,
        None,
        None,
    )


def test_miles_script_flags_parse() -> None:
    """The LoRA flags Miles's example scripts pass (examples/*/run_*.py), --lora-base-cpu-backup too."""
    c = Config.from_args(
        [
            *("--lora-rank", "16", "--lora-alpha", "32", "--lora-dropout", "0.0"),
            *("--target-modules", "all-linear", "--lora-base-cpu-backup"),
        ]
    )
    assert c.lora_base_cpu_backup and c.lora_rank == 16


def test_target_modules_is_required_with_a_rank() -> None:
    with pytest.raises(ConfigError, match="--target-modules"):
        Config(lora_rank=8)


def test_adapter_path_without_a_rank_is_refused() -> None:
    with pytest.raises(ConfigError, match="--lora-adapter-path.*--lora-rank"):
        Config(lora_adapter_path="/some/adapter")


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"train_backend": "fsdp"}, "train_backend"),
        ({"advantage_estimator": "ppo"}, "ppo"),
        ({"lora_dropout": 1.0}, "--lora-dropout"),
        ({"lora_alpha": 0}, "--lora-alpha"),
    ],
)
def test_unsupported_combinations_name_the_flag(overrides: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        Config(lora_rank=4, target_modules="all-linear", **overrides)  # type: ignore[arg-type]


def test_target_module_names_as_miles_parses_them() -> None:
    def names(targets: str, exclude: str | None = None) -> list[str]:
        return target_module_names(Config(lora_rank=4, target_modules=targets, exclude_modules=exclude))

    assert names("all-linear") == list(ALL_LINEAR)
    assert names("all-linear", "gate_proj,up_proj,down_proj") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # Megatron's names stand for the HF modules they fuse.
    assert names("linear_qkv,linear_proj") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert names(" q_proj , v_proj ") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="leaves no module"):
        names("q_proj", "q_proj")


def test_a_module_the_model_lacks_is_named_with_what_it_has() -> None:
    model, _ = tiny_policy("unit")
    with pytest.raises(ConfigError, match=r"--target-modules 'c_attn'.*q_proj"):
        apply_lora(small_config(lora_rank=4, target_modules="c_attn"), model)


def test_the_lm_head_cannot_take_an_adapter() -> None:
    model, _ = tiny_policy("unit")
    with pytest.raises(ConfigError, match="lm_head"):
        apply_lora(small_config(lora_rank=4, target_modules="q_proj,lm_head"), model)
