"""The algorithms' parameters, and the one place that reads them from a ``Config``.

The math in ``algo/`` takes these frozen values (or plain keywords: ``eps_clip``, ``kl_coef``,
...), never the whole Config, so a test or a notebook calls it with exactly the numbers it
means. :func:`advantage_params` and :func:`loss_params` map Miles's flags to them; defaults
equal the Config's (Miles's) defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

from miles_sdk.config import AdvantageEstimator, KLLossType, LossType

if TYPE_CHECKING:
    from miles_sdk.config import Config

__all__ = [
    "AdvantageParams",
    "LossParams",
    "advantage_params",
    "loss_params",
    "needs_tis",
    "old_log_probs_are_current",
    "old_log_probs_source",
]


@attrs.frozen(kw_only=True)
class AdvantageParams:
    """Stage 6: advantages and returns (``compute_advantages_and_returns``)."""

    estimator: AdvantageEstimator = "grpo"
    """``--advantage-estimator``."""
    kl_coef: float = 0.0
    """``--kl-coef``: reward shaping ``-kl_coef * KL(pi_old || ref)`` per token."""
    kl_loss_type: KLLossType = "k1"
    """``--kl-loss-type``: the KL estimator of that shaping."""
    gamma: float = 1.0
    """``--gamma``: discount (reinforce_plus_plus, ppo)."""
    lambd: float = 1.0
    """``--lambd``: GAE lambda (ppo)."""
    normalize: bool = False
    """``--normalize-advantages``: whiten over the batch's trainable tokens."""


@attrs.frozen(kw_only=True)
class LossParams:
    """Stage 7: the per-micro-batch loss (``compute_loss``)."""

    loss_type: LossType = "policy_loss"
    advantage_estimator: AdvantageEstimator = "grpo"
    """gspo uses the sequence-level ratio."""
    eps_clip: float = 0.2
    eps_clip_high: float = 0.2
    """The upper clip (the Config's ``effective_eps_clip_high``: ``eps_clip`` when unset)."""
    eps_clip_c: float | None = None
    """Dual-clip bound (> 1), or None."""
    value_clip: float = 0.2
    entropy_coef: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: KLLossType = "k1"
    use_unbiased_kl: bool = False
    calculate_per_token_loss: bool = False
    """Mean over tokens of the micro-batch (True) or mean over samples of per-sample means."""
    use_rollout_logprobs: bool = False
    """The engine's log-probs are the old ones (the ratio's denominator)."""
    mismatch_correction: bool = False
    """Run the TIS/MIS function (``use_tis``, ``use_rs`` or ``get_mismatch_metrics``)."""
    use_rs: bool = False
    """The default correction is MIS (rejection sampling) rather than vanilla TIS."""

    @property
    def old_log_probs_key(self) -> Literal["log_probs", "rollout_log_probs"]:
        """Which batch field holds the old policy's log-probs."""
        return "rollout_log_probs" if self.use_rollout_logprobs else "log_probs"


def advantage_params(args: Config) -> AdvantageParams:
    """The advantage stage's parameters from Miles's flags."""
    return AdvantageParams(
        estimator=args.advantage_estimator,
        kl_coef=args.kl_coef,
        kl_loss_type=args.kl_loss_type,
        gamma=args.gamma,
        lambd=args.lambd,
        normalize=args.normalize_advantages,
    )


def loss_params(args: Config) -> LossParams:
    """The loss's parameters from Miles's flags."""
    return LossParams(
        loss_type=args.loss_type,
        advantage_estimator=args.advantage_estimator,
        eps_clip=args.eps_clip,
        eps_clip_high=args.effective_eps_clip_high,
        eps_clip_c=args.eps_clip_c,
        value_clip=args.value_clip,
        entropy_coef=args.entropy_coef,
        use_kl_loss=args.use_kl_loss,
        kl_loss_coef=args.kl_loss_coef,
        kl_loss_type=args.kl_loss_type,
        use_unbiased_kl=args.use_unbiased_kl,
        calculate_per_token_loss=args.calculate_per_token_loss,
        use_rollout_logprobs=args.use_rollout_logprobs,
        mismatch_correction=needs_tis(args),
        use_rs=args.use_rs,
    )


# ---- decisions the loop takes from the Config (which data a step needs) -------------------------


def old_log_probs_source(args: Config) -> Literal["log_probs", "rollout_log_probs"]:
    """Which batch key holds the old policy's log-probs: the engine's with ``use_rollout_logprobs``
    (the backend then skips recomputing them), else the trainer's recomputed ones."""
    return "rollout_log_probs" if args.use_rollout_logprobs else "log_probs"


def old_log_probs_are_current(args: Config, n_samples: int) -> bool:
    """Whether the old log-probs can be left out of the rollout data (``log_probs`` None) because
    the train pass's own, detached, are exactly them: one optimizer step over all ``n_samples``
    (every micro-batch's gradient is taken at the rollout's weights), the trainer's log-probs as
    the old ones (not use_rollout_logprobs), and no KL-shaped reward needing them earlier."""
    if not args.skip_on_policy_old_log_probs or args.use_rollout_logprobs or args.kl_coef != 0:
        return False
    steps = args.num_steps_per_rollout
    return steps == 1 if steps else args.effective_global_batch_size >= n_samples


def needs_tis(args: Config) -> bool:
    """Whether the mismatch correction (TIS/MIS hook) runs: ``use_tis``, ``use_rs`` or
    ``get_mismatch_metrics``. The backend must then provide ``rollout_log_probs``."""
    return bool(args.use_tis or args.use_rs or args.get_mismatch_metrics)
