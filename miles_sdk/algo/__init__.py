"""RL training math: reward post-processing, samples -> train data, advantages, KL, losses,
reducers, TIS/MIS and chunked log-probs/entropy. Pure tensor code, no model or engine.

The math takes explicit parameters (``AdvantageParams``, ``LossParams``, keywords such as
``eps_clip``); :func:`advantage_params` and :func:`loss_params` are the one place that reads them
from a ``Config``. The samples -> train data step and the TIS/MIS functions keep Miles's hook
signature ``(args, ...)``, since users replace them with their own hooks.

Formulas and the Config options that select them: docs/algorithms.md.
"""

from miles_sdk.algo.advantages import (
    compute_advantages_and_returns,
    normalize_advantages,
    reverse_discounted_cumsum,
)
from miles_sdk.algo.convert import TrimError, convert_samples_to_train_data, flatten_and_trim
from miles_sdk.algo.entropy import log_probs_and_entropy, log_probs_and_entropy_from_logits
from miles_sdk.algo.kl import compute_approx_kl
from miles_sdk.algo.loss import compute_loss
from miles_sdk.algo.params import (
    AdvantageParams,
    LossParams,
    advantage_params,
    loss_params,
    needs_tis,
    old_log_probs_are_current,
    old_log_probs_source,
)
from miles_sdk.algo.policy_loss import (
    compute_policy_loss,
    compute_sft_loss,
    compute_value_loss,
    gspo_sequence_kl,
    policy_ratio_metrics,
)
from miles_sdk.algo.reducers import (
    constant_divisor_reducer,
    get_mean_of_sample_mean,
    get_sum_of_sample_mean,
)
from miles_sdk.algo.reward_post import MissingRewardError, grpo_reward_post_process, raw_rewards
from miles_sdk.algo.tis import mis_function, mismatch_metrics, vanilla_tis_function

__all__ = [
    "AdvantageParams",
    "LossParams",
    "MissingRewardError",
    "TrimError",
    "advantage_params",
    "compute_advantages_and_returns",
    "compute_approx_kl",
    "compute_loss",
    "compute_policy_loss",
    "compute_sft_loss",
    "compute_value_loss",
    "constant_divisor_reducer",
    "convert_samples_to_train_data",
    "flatten_and_trim",
    "get_mean_of_sample_mean",
    "get_sum_of_sample_mean",
    "grpo_reward_post_process",
    "gspo_sequence_kl",
    "log_probs_and_entropy",
    "log_probs_and_entropy_from_logits",
    "loss_params",
    "mis_function",
    "mismatch_metrics",
    "needs_tis",
    "normalize_advantages",
    "old_log_probs_are_current",
    "old_log_probs_source",
    "policy_ratio_metrics",
    "raw_rewards",
    "reverse_discounted_cumsum",
    "vanilla_tis_function",
]
