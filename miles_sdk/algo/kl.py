"""Per-token KL estimators between the policy and a base policy (reference or rollout).

With ``d = logp - logp_base`` (Schulman, "Approximating KL divergence"):

- ``k1 = d``
- ``k2 = d**2 / 2``
- ``k3 = exp(-d) - 1 + d`` (non-negative, unbiased for KL(pi || base))
- ``low_var_kl``: k3 with ``d`` clamped to +-20 before ``exp`` and the result clamped to +-10.

``importance_ratio`` (``use_unbiased_kl``, DeepSeek-V3.2) multiplies the estimate by
``pi_theta / pi_old`` so a KL measured on samples of the old policy is unbiased for the new one.
"""

from __future__ import annotations

import torch

from miles_sdk.config import KLLossType

__all__ = ["LOG_RATIO_CLAMP", "compute_approx_kl", "safe_log_ratio"]

LOG_RATIO_CLAMP = 20.0
"""|log-ratio| bound applied wherever a ratio is exponentiated (exp(20) ~ 4.9e8, no overflow)."""


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # Half precision loses too much in exp(-d) - 1 + d; float64 stays float64 (gradcheck).
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def safe_log_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """Clamp a log-ratio to +-``LOG_RATIO_CLAMP``, mapping NaN to 0 and +-inf to the bounds."""
    x = torch.nan_to_num(log_ratio, nan=0.0, posinf=LOG_RATIO_CLAMP, neginf=-LOG_RATIO_CLAMP)
    return x.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def compute_approx_kl(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    kl_loss_type: KLLossType | str,
    importance_ratio: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token KL(pi || base) estimate, same shape as ``log_probs``.

    Raises ValueError for an unknown ``kl_loss_type`` or mismatched shapes.
    """
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(
            f"compute_approx_kl: log_probs {tuple(log_probs.shape)} and ref_log_probs "
            f"{tuple(ref_log_probs.shape)} differ in shape"
        )
    dtype = _compute_dtype(log_probs)
    d = log_probs.to(dtype) - ref_log_probs.to(dtype)
    if kl_loss_type == "k1":
        kl = d
    elif kl_loss_type == "k2":
        kl = d.square() / 2.0
    elif kl_loss_type in ("k3", "low_var_kl"):
        neg = -d
        if kl_loss_type == "low_var_kl":
            neg = safe_log_ratio(neg)
        # expm1 keeps precision when d is tiny (the usual case near the reference).
        kl = torch.expm1(neg) - neg
    else:
        raise ValueError(f"unknown kl_loss_type {kl_loss_type!r}; expected k1, k2, k3 or low_var_kl")
    if importance_ratio is not None:
        kl = importance_ratio.to(dtype) * kl
    if kl_loss_type == "low_var_kl":
        kl = kl.clamp(-10.0, 10.0)
    return kl
