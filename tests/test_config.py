"""Config parsing (Miles flags) and validation."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from miles_sdk import Config, ConfigError


def test_defaults_match_miles() -> None:
    c = Config()
    assert (c.rollout_temperature, c.rollout_top_p, c.rollout_top_k, c.rollout_seed) == (1.0, 1.0, -1, 42)
    assert (c.eps_clip, c.effective_eps_clip_high, c.lr, c.clip_grad) == (0.2, 0.2, 1e-6, 1.0)
    assert (c.tis_clip, c.tis_clip_low, c.kl_loss_type, c.advantage_estimator) == (2.0, 0.0, "k1", "grpo")
    assert c.rewards_normalization and c.grpo_std_normalization


def test_from_args_parses_miles_flags() -> None:
    c = Config.from_args(
        [
            "--rollout-batch-size",
            "4",
            "--n-samples-per-prompt",
            "8",
            "--over-sampling-batch-size",
            "6",
            "--rollout-stop",
            "</answer>",
            "###",
            "--rollout-stop-token-ids",
            "1",
            "2",
            "--disable-rewards-normalization",
            "--disable-grpo-std-normalization",
            "--use-kl-loss",
            "--kl-loss-type",
            "low_var_kl",
            "--apply-chat-template-kwargs",
            '{"enable_thinking": false}',
            "--eps-clip-high",
            "0.28",
            "--advantage-estimator",
            "gspo",
            "--eval-prompt-data",
            "aime",
            "a.jsonl",
        ]
    )
    assert c.rollout_batch_size == 4 and c.n_samples_per_prompt == 8 and c.over_sampling_batch_size == 6
    assert c.rollout_stop == ["</answer>", "###"] and c.rollout_stop_token_ids == [1, 2]
    assert not c.rewards_normalization and not c.grpo_std_normalization
    assert c.use_kl_loss and c.kl_loss_type == "low_var_kl" and c.advantage_estimator == "gspo"
    assert c.apply_chat_template_kwargs == {"enable_thinking": False}
    assert c.effective_eps_clip_high == 0.28
    assert c.eval_prompt_data == ["aime", "a.jsonl"]


def test_unknown_flag_names_it_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"--rollout-bach-size.*did you mean --rollout-batch-size"):
        Config.from_args(["--rollout-bach-size", "3"])


def test_unknown_flags_kept_for_hooks_when_allowed() -> None:
    c = Config.from_args(["--tensor-model-parallel-size", "2", "--sequence-parallel"], allow_unknown=True)
    assert c.tensor_model_parallel_size == "2"
    assert c.sequence_parallel is True
    with pytest.raises(AttributeError, match="no setting 'nope'"):
        _ = c.nope


def test_bad_choice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="advantage-estimator"):
        Config.from_args(["--advantage-estimator", "dpo"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rollout_batch_size": 4, "over_sampling_batch_size": 2}, "over_sampling_batch_size"),
        ({"rollout_batch_size": 3, "n_samples_per_prompt": 2, "num_steps_per_rollout": 4}, "not divisible"),
        ({"global_batch_size": 6, "micro_batch_size": 4}, "micro_batch_size"),
        ({"advantage_estimator": "ppo", "kl_coef": 0.1}, "kl_coef"),
        ({"rm_type": "remote_rm"}, "rm_url"),
        ({"debug_train_only": True}, "load_debug_rollout_data"),
        ({"eval_prompt_data": ["a", "b.jsonl", "c"]}, "pairs"),
        ({"save_interval": 2}, "save_interval is set"),
        ({"rm_type": "maths"}, "did you mean math"),
        ({"eps_clip_c": 0.5}, "eps_clip_c"),
    ],
)
def test_contradictions_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen_and_keyword_only() -> None:
    c = Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config(1)  # type: ignore[misc]
    assert c.replace(lr=0.5).lr == 0.5


def test_custom_config_path_overrides_settings_like_miles(tmp_path: Path) -> None:
    yaml_file = tmp_path / "mis.yaml"
    yaml_file.write_text(
        "use_tis: true\ntis_mode: mask\ntis_upper_bound: 2.0\nuse_rs: true\nmy_hook_knob: 7\n"
    )
    c = Config.from_args(["--custom-config-path", str(yaml_file), "--tis-upper-bound", "5.0"])
    assert c.use_tis and c.use_rs and c.tis_mode == "mask"
    assert c.tis_upper_bound == 2.0  # the file wins, as in Miles
    assert c.my_hook_knob == 7


def test_custom_config_path_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml"):
        Config(custom_config_path=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        Config(custom_config_path=str(bad))


def test_custom_config_values_are_typed_and_replace_does_not_reapply(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 1e-5\neps_clip: 0.3\nkl_loss_type: k3\n")
    c = Config(custom_config_path=str(yaml_file))
    assert c.lr == 1e-5 and isinstance(c.lr, float)  # PyYAML reads 1e-5 as a string
    assert c.replace(eps_clip=0.1).eps_clip == 0.1
    yaml_file.write_text("kl_loss_type: k9\n")
    with pytest.raises(ConfigError, match="kl_loss_type='k9'"):
        Config(custom_config_path=str(yaml_file))
    yaml_file.write_text("use_tis: yes please\n")
    with pytest.raises(ConfigError, match="use_tis"):
        Config(custom_config_path=str(yaml_file))


def test_misspelled_setting_in_python_names_the_closest_one() -> None:
    with pytest.raises(TypeError, match="did you mean n_samples_per_prompt"):
        Config(n_sample_per_prompt=4)  # type: ignore[call-arg]
