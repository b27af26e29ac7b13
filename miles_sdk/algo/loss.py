"""The per-micro-batch loss the training backend calls: policy, SFT or value loss, plus metrics.

``compute_loss(batch, log_probs, entropy, values, params=LossParams(...))`` takes the current
policy's per-sample log-probs (with gradient) and entropy, and the micro-batch's stored tensors
(a :class:`~miles_sdk.stages.MicroBatch`: ``loss_masks``, ``advantages``, ``returns``,
``log_probs`` (old), ``ref_log_probs``, ``rollout_log_probs``, ``values`` (old) -- lists of
per-sample 1-D tensors). It returns ``(loss, metrics)``; metric names follow Miles (``loss``,
``pg_loss``, ``pg_clipfrac``, ``ppo_kl``, ``entropy_loss``, ``kl_loss``, ``tis``...), each a
detached 0-d tensor.

``loss_type=custom_loss`` is not handled here: the backend calls the user's ``LossFn`` with the
logits and :func:`~miles_sdk.algo.reducers.get_mean_of_sample_mean`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from miles_sdk.algo._device import Rows, detach_rows, join_rows
from miles_sdk.algo.kl import compute_approx_kl
from miles_sdk.algo.params import LossParams
from miles_sdk.algo.policy_loss import (
    compute_policy_loss,
    compute_sft_loss,
    compute_value_loss,
    gspo_sequence_kl,
    policy_ratio_metrics,
)
from miles_sdk.algo.reducers import get_mean_of_sample_mean, miles_scale, sample_sums
from miles_sdk.algo.tis import mis_function, vanilla_tis_function
from miles_sdk.hooks import LossReducer, PGLossReducer, TISFn
from miles_sdk.stages import MicroBatch

if TYPE_CHECKING:
    from miles_sdk.config import Config

__all__ = ["compute_loss"]


def _tensors(values: Sequence[torch.Tensor] | None, key: str, *, like: torch.Tensor | None = None) -> list[torch.Tensor]:
    if values is None:
        raise KeyError(f"compute_loss: batch has no {key!r}")
    if isinstance(values, Rows) and values.intact():
        joined = values.joined
        if (like is None or joined.device == like.device) and not joined.requires_grad:
            return values  # already per-sample views of one flat tensor: keep them joinable
    out: list[torch.Tensor] = []
    for v in values:
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        if like is not None and t.device != like.device:
            t = t.to(device=like.device)
        out.append(t.detach() if t.requires_grad else t)
    return out


def _masks(batch: MicroBatch, response_lengths: Sequence[int], device: torch.device) -> list[torch.Tensor]:
    given = _tensors(batch.loss_masks, "loss_masks")
    if isinstance(given, Rows) and given.joined.device == device and given.joined.dtype == torch.float32:
        masks: list[torch.Tensor] = given
    else:
        masks = [m.to(device=device, dtype=torch.float32) for m in given]
    for i, (m, n) in enumerate(zip(masks, response_lengths, strict=True)):
        if m.numel() != n:
            raise ValueError(
                f"compute_loss: loss_masks[{i}] has {m.numel()} entries, response_lengths says {n}"
            )
    return masks


def _flat(parts: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return join_rows(parts, dtype=dtype, device=device)


def _anchor(x: torch.Tensor) -> torch.Tensor:
    """A zero that depends on ``x``: an all-masked micro-batch still gives every parameter a
    (zero) gradient, keeping data-parallel ranks in step. An empty slice, unlike ``0 * x.sum()``,
    stays 0 even if a masked position holds NaN or -inf."""
    return x[:0].sum()


def _active_only(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    # Masked tokens may hold garbage (NaN from a padded position); they must not reach the loss.
    return torch.where(active, torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), x.new_zeros(()))


def _policy_loss(
    p: LossParams,
    batch: MicroBatch,
    log_probs: list[torch.Tensor],
    entropy: list[torch.Tensor] | None,
    tis_fn: TISFn | None,
    pg_loss_reducer: PGLossReducer | None,
    hook_args: Config | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    response_lengths = list(batch.response_lengths)
    total_lengths = list(batch.total_lengths)
    device = log_probs[0].device if log_probs else torch.device("cpu")
    dtype = log_probs[0].dtype if log_probs else torch.float32
    masks = _masks(batch, response_lengths, device)
    if len(log_probs) != len(masks):
        raise ValueError(f"compute_loss: {len(log_probs)} log_probs for {len(masks)} samples")
    for i, (lp, m) in enumerate(zip(log_probs, masks, strict=True)):
        if lp.shape != m.shape:
            raise ValueError(f"compute_loss: log_probs[{i}] {tuple(lp.shape)} but loss_mask {tuple(m.shape)}")
    reducer = get_mean_of_sample_mean(total_lengths, response_lengths, masks, p.calculate_per_token_loss)

    if not p.use_rollout_logprobs and batch.log_probs is None:
        # On-policy (see old_log_probs_are_current): the old log-probs are these, detached.
        old = detach_rows(log_probs)
    elif batch.rollout_log_probs is None and p.use_rollout_logprobs:
        raise KeyError(
            "compute_loss: policy loss needs old log-probs in batch.rollout_log_probs (use_rollout_logprobs is set)"
        )
    else:
        old_values = batch.rollout_log_probs if p.use_rollout_logprobs else batch.log_probs
        old = _tensors(old_values, p.old_log_probs_key, like=log_probs[0] if log_probs else None)
    advantages = _flat(_tensors(batch.advantages, "advantages"), dtype, device)
    cur = _flat(log_probs, dtype, device)
    old_flat = _flat(old, dtype, device)
    active = _flat(masks, dtype, device) != 0

    if p.advantage_estimator == "gspo":
        ppo_kl = gspo_sequence_kl(log_probs, [o.to(dtype) for o in old], masks).to(device)
    else:
        ppo_kl = old_flat - cur
    ppo_kl = _active_only(ppo_kl, active)
    advantages = _active_only(advantages, active)
    eps_high = p.eps_clip_high
    pg_loss, pg_clipfrac = compute_policy_loss(ppo_kl, advantages, p.eps_clip, eps_high, p.eps_clip_c)

    metrics: dict[str, torch.Tensor] = {}
    pg_masks: list[torch.Tensor] = masks
    pg_reducer: LossReducer = reducer
    if p.mismatch_correction:
        if batch.rollout_log_probs is None:
            raise KeyError(
                "compute_loss: use_tis/use_rs/get_mismatch_metrics need batch.rollout_log_probs"
            )
        if hook_args is None:
            raise ValueError(
                "compute_loss: the TIS/MIS function (a Miles-signature hook) needs hook_args=<the Config>"
            )
        rollout = _tensors(batch.rollout_log_probs, "rollout_log_probs", like=cur)
        # The IS weight compares the trainer's *old* log-probs with the engine's. With
        # use_rollout_logprobs the stored old log-probs ARE the engine's, so the trainer's current
        # ones (detached; equal to recomputed old ones on the first optimizer step) stand in.
        train_old = (
            detach_rows(log_probs)
            if p.use_rollout_logprobs or batch.log_probs is None
            else _tensors(batch.log_probs, "log_probs", like=cur)
        )
        fn: TISFn = tis_fn if tis_fn is not None else (mis_function if p.use_rs else vanilla_tis_function)
        tis_result = fn(
            args=hook_args,
            pg_loss=pg_loss,
            train_log_probs=train_old,
            rollout_log_probs=rollout,
            loss_masks=masks,
            total_lengths=total_lengths,
            response_lengths=response_lengths,
        )
        if tis_fn is not None:  # a user hook: its result is checked where it is received
            from miles_sdk.rollout.shapes import check_tis_result, describe_hook

            where = "TIS function " + describe_hook(
                tis_fn, flag="--custom-tis-function-path", path=hook_args.custom_tis_function_path
            )
            tis_result = check_tis_result(tis_result, len(masks), where)
        pg_loss, pg_masks, tis_metrics = tis_result
        pg_masks = [m.to(device=device, dtype=torch.float32) for m in pg_masks]
        # Modified masks change the numerator only; denominators stay the original token counts.
        pg_reducer = get_mean_of_sample_mean(
            total_lengths,
            response_lengths,
            pg_masks,
            p.calculate_per_token_loss,
            denominators=sample_sums(masks, response_lengths),
        )
        n_tokens = sum(response_lengths)
        for key, value in tis_metrics.items():
            if value.dim() == 1 and value.numel() == n_tokens:
                metrics[key] = reducer(value.detach().to(device=device, dtype=dtype))
            elif value.dim() == 0:
                metrics[key] = value.detach()
            else:
                raise ValueError(
                    f"compute_loss: TIS metric {key!r} has shape {tuple(value.shape)}; expected a scalar or "
                    f"one value per response token ({n_tokens})"
                )
        metrics["ois"] = reducer(torch.exp(-ppo_kl.detach()))
    # As in Miles, tokens that TIS/RS masks out (pg_masks) also leave the entropy and KL terms and
    # the clip/KL metrics: ``pg_reducer`` carries the modified masks, the mismatch metrics do not.
    if pg_loss_reducer is None:
        pg = pg_reducer(pg_loss)
    else:
        # A user reducer follows Miles's convention (a sum over samples): bring it to the mean.
        from miles_sdk.rollout.shapes import HookResultError, check_reducer_result, describe_hook

        where = "pg_loss_reducer " + describe_hook(
            pg_loss_reducer,
            flag="--custom-pg-loss-reducer-function-path",
            path=hook_args.custom_pg_loss_reducer_function_path if hook_args is not None else None,
        )
        user_reducer = pg_loss_reducer(
            total_lengths, response_lengths, pg_masks, p.calculate_per_token_loss
        )
        if not callable(user_reducer):
            raise HookResultError(
                f"{where} returned {type(user_reducer).__name__}; expected a callable reducing the flat "
                "per-token pg loss to a scalar (e.g. miles_sdk.algo.get_sum_of_sample_mean(...))"
            )
        reduced = check_reducer_result(user_reducer(pg_loss), where)
        pg = reduced / miles_scale(masks, p.calculate_per_token_loss)
    loss = pg
    entropy_loss = pg.new_zeros(())
    if entropy is not None:
        entropy_loss = pg_reducer(_active_only(_flat(entropy, dtype, device), active))
        if p.entropy_coef != 0:
            loss = loss - p.entropy_coef * entropy_loss
    elif p.entropy_coef != 0:
        raise ValueError(f"compute_loss: entropy_coef={p.entropy_coef} but no entropy was passed")

    if p.use_kl_loss:
        if batch.ref_log_probs is None:
            raise KeyError("compute_loss: use_kl_loss needs batch.ref_log_probs (a reference model)")
        ref = _flat(_tensors(batch.ref_log_probs, "ref_log_probs"), dtype, device)
        ratio = torch.exp(cur - old_flat) if p.use_unbiased_kl else None
        kl = _active_only(compute_approx_kl(cur, ref, p.kl_loss_type, importance_ratio=ratio), active)
        kl_loss = pg_reducer(kl.to(dtype))
        if p.kl_loss_coef != 0:
            loss = loss + p.kl_loss_coef * kl_loss
        metrics["kl_loss"] = kl_loss.detach()

    if batch.rollout_log_probs is not None and not p.use_rollout_logprobs:
        rollout_flat = _flat(_tensors(batch.rollout_log_probs, "rollout_log_probs"), dtype, device)
        metrics["train_rollout_logprob_abs_diff"] = reducer(
            _active_only((old_flat - rollout_flat).abs(), active)
        )

    loss = loss + _anchor(cur)
    metrics.update(
        policy_ratio_metrics(
            ppo_kl, advantages, _flat(masks, dtype, device), p.eps_clip, eps_high, reducer
        )
    )
    metrics.update(
        {
            "loss": loss.detach(),
            "pg_loss": pg.detach(),
            "entropy_loss": entropy_loss.detach(),
            "pg_clipfrac": pg_reducer(pg_clipfrac).detach(),
            "ppo_kl": pg_reducer(ppo_kl).detach(),
        }
    )
    return loss, metrics


def compute_loss(
    batch: MicroBatch,
    log_probs: list[torch.Tensor],
    entropy: list[torch.Tensor] | None,
    values: list[torch.Tensor] | None = None,
    *,
    params: LossParams,
    tis_fn: TISFn | None = None,
    pg_loss_reducer: PGLossReducer | None = None,
    hook_args: Config | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one micro-batch for ``params.loss_type`` and its metrics.

    - ``policy_loss``: PPO clip (``eps_clip``/``eps_clip_high``, dual clip ``eps_clip_c``), GSPO
      sequence ratio for ``advantage_estimator=gspo``, TIS/MIS through ``tis_fn`` (default:
      vanilla TIS, or MIS when ``use_rs``) when ``mismatch_correction``,
      ``pg_loss_reducer`` for the pg term only, ``- entropy_coef * entropy`` and
      ``+ kl_loss_coef * KL(pi || ref)`` with ``use_kl_loss``.
    - ``sft_loss``: ``-mean log-prob``.
    - ``value_loss``: clipped value loss of ``values`` (current critic) against
      ``batch.returns`` with ``batch.values`` as the old values.

    ``hook_args`` is the Config handed to the TIS function, a Miles-signature hook (the default
    ones read their bounds from it), and named in hook errors; the loss itself reads ``params``.
    """
    p = params
    if p.loss_type == "policy_loss":
        return _policy_loss(p, batch, log_probs, entropy, tis_fn, pg_loss_reducer, hook_args)
    response_lengths = list(batch.response_lengths)
    total_lengths = list(batch.total_lengths)
    if p.loss_type == "sft_loss":
        device = log_probs[0].device if log_probs else torch.device("cpu")
        dtype = log_probs[0].dtype if log_probs else torch.float32
        masks = _masks(batch, response_lengths, device)
        reducer = get_mean_of_sample_mean(total_lengths, response_lengths, masks, p.calculate_per_token_loss)
        cur = _flat(log_probs, dtype, device)
        loss = compute_sft_loss(cur, reducer) + _anchor(cur)
        return loss, {"loss": loss.detach()}
    if p.loss_type == "value_loss":
        if values is None:
            raise ValueError("compute_loss: loss_type=value_loss needs values (the critic's current values)")
        device = values[0].device if values else torch.device("cpu")
        dtype = values[0].dtype if values else torch.float32
        masks = _masks(batch, response_lengths, device)
        reducer = get_mean_of_sample_mean(total_lengths, response_lengths, masks, p.calculate_per_token_loss)
        cur = _flat(values, dtype, device)
        old = _flat(_tensors(batch.values, "values"), dtype, device)
        returns = _flat(_tensors(batch.returns, "returns"), dtype, device)
        per_token, clipfrac = compute_value_loss(cur, old, returns, p.value_clip)
        loss = reducer(per_token) + _anchor(cur)
        return loss, {"value_loss": loss.detach(), "value_clipfrac": reducer(clipfrac).detach()}
    if p.loss_type == "custom_loss":
        raise ValueError(
            "compute_loss: loss_type=custom_loss is computed by the user's LossFn "
            "(custom_loss_function_path), which the backend calls with the logits"
        )
    raise ValueError(f"compute_loss: unknown loss_type {p.loss_type!r}")
