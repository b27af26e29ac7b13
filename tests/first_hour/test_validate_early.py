"""Bad settings and bad data fail before the weights load (issue 14 item 8)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from miles_sdk import Config, ConfigError, Trainer
from miles_sdk.data.dataset import DatasetError
from miles_sdk.demo.task import addition_reward
from miles_sdk.testing import save_tiny_policy, small_config


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("lr", -1e-3, "lr (--lr) must be >= 0"),
        ("lr", math.nan, "lr (--lr) must be a finite number"),
        ("adam_beta2", 1.0, "adam_beta2 (--adam-beta2) must be in [0, 1)"),
        ("weight_decay", -0.1, "weight_decay (--weight-decay) must be >= 0"),
        ("reward_timeout", 0.0, "reward_timeout (--reward-timeout) must be > 0"),
        ("gamma", 1.5, "gamma (--gamma) must be in [0, 1]"),
        ("rollout_top_k", 0, "rollout_top_k (--rollout-top-k) must be -1 (off) or >= 1"),
    ],
)
def test_out_of_range_settings_are_a_config_error(setting: str, value: float, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**{setting: value})
    assert says in str(info.value)


def test_negative_numbers_parse_on_the_command_line() -> None:
    assert Config.from_args(["--entropy-coef", "-1e-3"]).entropy_coef == -1e-3
    assert Config.from_args(["--seed", "-7"]).seed == -7
    # Parsed as a value now, so the error is about the value, not "expected one argument".
    with pytest.raises(ConfigError, match=r"lr \(--lr\) must be >= 0, got -0.001"):
        Config.from_args(["--lr", "-1e-3"])


def test_malformed_data_fails_before_the_weights_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = save_tiny_policy(tmp_path / "policy", "unit")
    data = tmp_path / "train.jsonl"
    data.write_text('{"input": "1+1=", "label": "2"}\n{"input": "2+2=", "label": "4"\n', encoding="utf-8")
    import transformers

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights were loaded before the data was read")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    config = small_config(hf_checkpoint=str(checkpoint), prompt_data=str(data))
    # Old code: AssertionError (the weights loaded first, then the data failed).
    with pytest.raises(DatasetError, match=r"train\.jsonl:2: malformed JSON"):
        Trainer(config, reward_model=addition_reward)
