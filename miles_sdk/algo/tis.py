"""Train/inference mismatch correction: TIS (truncated IS), MIS (masked IS) and their metrics.

The rollout engine and the trainer compute slightly different log-probs for the same tokens.
With ``w = pi_train_old / pi_rollout`` these functions reweight the per-token policy loss and/or
mask tokens out. Both implement ``TISFn``: keyword arguments, flat ``pg_loss`` and per-sample
lists in; ``(pg_loss, masks, metrics)`` out. Metrics are flat per-token tensors that the loss
reduces with the default reducer over the *original* masks (so a metric such as a masked
fraction is not driven to 0 by the masking it measures). Returned masks change only the
reducer's numerator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from miles_sdk.algo._device import join_rows
from miles_sdk.algo.kl import LOG_RATIO_CLAMP, safe_log_ratio
from miles_sdk.config import Config
from miles_sdk.hooks import TISResult

__all__ = ["mis_function", "mismatch_metrics", "vanilla_tis_function"]


def _check(
    train_log_probs: Sequence[torch.Tensor],
    rollout_log_probs: Sequence[torch.Tensor],
    loss_masks: Sequence[torch.Tensor],
    where: str,
) -> None:
    if not len(train_log_probs) == len(rollout_log_probs) == len(loss_masks):
        raise ValueError(
            f"{where}: {len(train_log_probs)} train_log_probs, {len(rollout_log_probs)} rollout_log_probs, "
            f"{len(loss_masks)} loss_masks"
        )
    for i, (t, r, m) in enumerate(zip(train_log_probs, rollout_log_probs, loss_masks, strict=True)):
        if not t.shape == r.shape == m.shape:
            raise ValueError(
                f"{where}: sample {i} shapes differ: train {tuple(t.shape)}, rollout {tuple(r.shape)}, "
                f"mask {tuple(m.shape)}"
            )


def vanilla_tis_function(
    *,
    args: Config,
    pg_loss: torch.Tensor,
    train_log_probs: list[torch.Tensor],
    rollout_log_probs: list[torch.Tensor],
    loss_masks: list[torch.Tensor],
    total_lengths: list[int],
    response_lengths: list[int],
    **kwargs: Any,
) -> TISResult:
    """Truncated IS: ``pg *= clamp(exp(train - rollout), tis_clip_low, tis_clip)``; masks unchanged.

    The weights are applied only with ``use_tis``; with ``get_mismatch_metrics`` alone only the
    metrics are computed.

    Metrics: ``tis`` (ratio before clamping), ``tis_clipfrac`` (clamped), ``tis_abs`` (|ratio - 1|).
    """
    _check(train_log_probs, rollout_log_probs, loss_masks, "vanilla_tis_function")
    with torch.no_grad():
        train = join_rows(train_log_probs, dtype=pg_loss.dtype).detach()
        rollout = join_rows(rollout_log_probs, dtype=train.dtype, device=train.device).detach()
        ratio = torch.exp(safe_log_ratio(train - rollout))
        weights = ratio.clamp(args.tis_clip_low, args.tis_clip)
        metrics = {
            "tis": ratio,
            "tis_clipfrac": (weights != ratio).to(ratio.dtype),
            "tis_abs": (ratio - 1.0).abs(),
        }
    if not args.use_tis:  # get_mismatch_metrics alone: measure, do not reweight
        return pg_loss, list(loss_masks), metrics
    return pg_loss * weights, list(loss_masks), metrics


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / torch.clamp_min(mask.sum(), 1.0)


def _level_log_ratio(diff: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    if level == "token":
        return diff
    if level == "sequence":
        return (diff * mask).sum().expand_as(diff)
    if level == "geometric":
        return _masked_mean(diff, mask).expand_as(diff)
    raise ValueError(f"unknown importance-sampling level {level!r}; expected token, sequence or geometric")


def mismatch_metrics(
    train_log_probs: Sequence[torch.Tensor],
    rollout_log_probs: Sequence[torch.Tensor],
    loss_masks: Sequence[torch.Tensor],
    modified_masks: Sequence[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token diagnostics of the train/rollout mismatch (flat, to be reduced by the caller).

    ``kl`` (rollout - train, k1 of KL(rollout || train)), ``k3_kl``, ``training_log_ppl``,
    ``rollout_log_ppl``, ``log_ppl_abs_diff``, ``training_ppl``, ``rollout_ppl``, ``log_ppl_diff``
    (training minus rollout log-ppl), ``ppl_ratio``, ``chi2_token`` (E[w^2] - 1 per sample),
    ``chi2_seq`` ((prod w)^2 - 1) and, with ``modified_masks``, ``masked_fraction`` (share of
    trainable tokens that the correction masked out).
    """
    _check(train_log_probs, rollout_log_probs, loss_masks, "mismatch_metrics")
    parts: dict[str, list[torch.Tensor]] = {}

    def put(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value)

    with torch.no_grad():
        for i, (t, r, m) in enumerate(zip(train_log_probs, rollout_log_probs, loss_masks, strict=True)):
            t = t.detach().float()
            r = r.detach().to(device=t.device, dtype=t.dtype)
            mf = m.to(device=t.device, dtype=t.dtype)
            diff = t - r
            safe = safe_log_ratio(diff)
            train_ppl = -_masked_mean(t, mf)
            rollout_ppl = -_masked_mean(r, mf)
            put("kl", -diff)
            put("k3_kl", torch.expm1(safe) - safe)
            put("training_log_ppl", train_ppl.expand_as(t))
            put("rollout_log_ppl", rollout_ppl.expand_as(t))
            put("log_ppl_abs_diff", (train_ppl - rollout_ppl).abs().expand_as(t))
            # The plain-ppl forms Miles also logs (log_ppl_diff = log(training_ppl / rollout_ppl)).
            put("training_ppl", torch.exp(train_ppl).expand_as(t))
            put("rollout_ppl", torch.exp(rollout_ppl).expand_as(t))
            put("log_ppl_diff", (train_ppl - rollout_ppl).expand_as(t))
            put("ppl_ratio", torch.exp(train_ppl - rollout_ppl).expand_as(t))
            put("chi2_token", (_masked_mean(torch.exp(2.0 * safe), mf) - 1.0).expand_as(t))
            seq = ((diff * mf).sum()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            put("chi2_seq", torch.expm1(2.0 * seq).expand_as(t))
            if modified_masks is not None:
                kept = modified_masks[i].to(device=t.device, dtype=t.dtype)
                put("masked_fraction", ((mf != 0) & (kept == 0)).to(t.dtype))
        return {k: torch.cat(v) for k, v in parts.items()}


def _bounded(
    weights: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    lower: float,
    upper: float,
    prefix: str,
    put: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one IS mode; returns (weights, mask)."""
    if mode == "truncate":
        put(f"{prefix}truncate_fraction", (weights > upper).to(weights.dtype))
        return weights.clamp(0.0, upper) * mask, mask
    if not lower < upper:
        raise ValueError(f"MIS {prefix.rstrip('_')}: lower bound {lower} must be < upper bound {upper}")
    if mode == "clip":
        put(f"{prefix}clip_fraction_low", (weights < lower).to(weights.dtype))
        put(f"{prefix}clip_fraction_high", (weights > upper).to(weights.dtype))
        return weights.clamp(lower, upper) * mask, mask
    if mode == "mask":
        put(f"{prefix}mask_fraction_low", (weights < lower).to(weights.dtype))
        put(f"{prefix}mask_fraction_high", (weights > upper).to(weights.dtype))
        in_range = ((weights >= lower) & (weights <= upper)).to(weights.dtype)
        return weights * mask, mask * in_range
    raise ValueError(f"unknown tis_mode {mode!r}; expected truncate, clip or mask")


def mis_function(
    *,
    args: Config,
    pg_loss: torch.Tensor,
    train_log_probs: list[torch.Tensor],
    rollout_log_probs: list[torch.Tensor],
    loss_masks: list[torch.Tensor],
    total_lengths: list[int],
    response_lengths: list[int],
    **kwargs: Any,
) -> TISResult:
    """Masked importance sampling (Miles's ``mis.py`` semantics).

    With ``use_tis``: weights ``exp(log_ratio)`` at ``tis_level`` (token; sequence = product;
    geometric = geometric mean), bounded by ``tis_mode`` (truncate: cap at ``tis_upper_bound``;
    clip: into [lower, upper]; mask: weights kept, out-of-range tokens masked), optionally
    normalised to batch mean 1 (``tis_batch_normalize``), multiplied into ``pg_loss``. With
    ``use_rs``: tokens whose ratio at ``rs_level`` is outside [rs_lower, rs_upper] are masked, and
    ``rs_veto_threshold`` masks a whole sequence if any token's ratio is below it. Bounds default
    as in Miles: tis lower = 1 / tis_upper, rs bounds = tis bounds. Metrics are prefixed ``mis_``.
    """
    _check(train_log_probs, rollout_log_probs, loss_masks, "mis_function")
    tis_upper = float(args.tis_upper_bound)
    tis_lower = float(args.tis_lower_bound) if args.tis_lower_bound is not None else 1.0 / tis_upper
    rs_lower = float(args.rs_lower_bound) if args.rs_lower_bound is not None else tis_lower
    rs_upper = float(args.rs_upper_bound) if args.rs_upper_bound is not None else tis_upper

    parts: dict[str, list[torch.Tensor]] = {}

    def put(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value)

    all_weights: list[torch.Tensor] = []
    new_masks: list[torch.Tensor] = []
    with torch.no_grad():
        for t, r, m in zip(train_log_probs, rollout_log_probs, loss_masks, strict=True):
            t = t.detach().to(pg_loss.dtype)
            r = r.detach().to(device=t.device, dtype=t.dtype)
            mf = m.to(device=t.device, dtype=t.dtype)
            diff = t - r
            mask = mf.clone()
            weights = torch.ones_like(diff)
            if args.use_tis:
                weights = torch.exp(safe_log_ratio(_level_log_ratio(diff, mf, args.tis_level)))
                put("tis_weight_before_bound", weights)
                weights, mask = _bounded(weights, mf, args.tis_mode, tis_lower, tis_upper, "tis_", put)
                put("tis_weight_after_bound", weights)
            if args.use_rs:
                rs_w = torch.exp(safe_log_ratio(_level_log_ratio(diff, mf, args.rs_level)))
                _, mask = _bounded(rs_w, mask, "mask", rs_lower, rs_upper, "rs_", put)
                if args.rs_veto_threshold is not None:
                    bad = (diff < torch.log(torch.tensor(float(args.rs_veto_threshold)))) & (mf != 0)
                    vetoed = bool(bad.any())
                    put("rs_catastrophic_token_fraction", bad.to(t.dtype))
                    put("rs_catastrophic_seq_fraction", torch.full_like(t, float(vetoed)))
                    if vetoed:
                        mask = torch.zeros_like(mask)
            all_weights.append(weights)
            new_masks.append(mask)

        if args.use_tis and args.tis_batch_normalize and all_weights:
            if args.tis_level == "token":
                total = sum((w * m.to(w.dtype)).sum() for w, m in zip(all_weights, loss_masks, strict=True))
                count = sum(m.sum() for m in loss_masks)
                mean = torch.as_tensor(total) / max(float(count), 1.0)
            else:  # one weight per sequence: average the sequences' weights
                seq = [_masked_mean(w, m.to(w.dtype)) for w, m in zip(all_weights, loss_masks, strict=True)]
                mean = torch.stack(seq).mean()
            factor = mean if float(mean) > 1e-8 else torch.ones(())
            all_weights = [w / factor for w in all_weights]
            for w in all_weights:
                put("batch_norm_factor", torch.full_like(w, float(factor)))
        for w, m in zip(all_weights, loss_masks, strict=True):
            put("is_ratio_final", w)
            # Per-sample summaries of the final weights, expanded to tokens (Miles's names).
            active = m.to(device=w.device) != 0
            kept = w[active]
            put("is_ratio_mean_final", _masked_mean(w, active.to(w.dtype)).expand_as(w))
            put("is_ratio_min_final", (kept.min() if kept.numel() else w.new_zeros(())).expand_as(w))
            put("is_ratio_max_final", (kept.max() if kept.numel() else w.new_zeros(())).expand_as(w))

        base = mismatch_metrics(train_log_probs, rollout_log_probs, loss_masks, new_masks)
        metrics = {f"mis_{k}": v for k, v in base.items()}
        metrics.update({f"mis_{k}": torch.cat(v) for k, v in parts.items()})
    flat_w = torch.cat(all_weights) if all_weights else pg_loss.new_ones(0)
    out = pg_loss * flat_w.to(device=pg_loss.device, dtype=pg_loss.dtype) if args.use_tis else pg_loss
    return out, new_masks, metrics
