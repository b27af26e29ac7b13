"""Advantage estimators (``Config.advantage_estimator``) and advantage whitening.

Inputs and outputs are lists of per-sample 1-D tensors over the response tokens. Everything
here runs without gradient: advantages and returns are fixed training targets.

- grpo / gspo: the (already group-normalised) reward, broadcast to every token.
- reinforce_plus_plus: token reward ``-kl_coef * kl`` plus the scalar reward at the last trainable
  token, discounted with ``gamma``; advantage = return.
- reinforce_plus_plus_baseline: ``reward - kl_coef * kl`` per token (reward already centred).
- ppo: GAE(gamma, lambd) over the loss-masked positions only; masked positions get 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from miles_sdk.algo.kl import compute_approx_kl
from miles_sdk.algo.params import AdvantageParams

__all__ = ["compute_advantages_and_returns", "normalize_advantages", "reverse_discounted_cumsum"]

_SCAN_CHUNK = 128


def reverse_discounted_cumsum(
    x: torch.Tensor, discount: float, chunk_size: int = _SCAN_CHUNK
) -> torch.Tensor:
    """``y[..., t] = sum_{k >= t} discount**(k - t) * x[..., k]`` along the last dimension.

    A chunked scan: inside a chunk it is one matrix product (parallel on a GPU), across chunks a
    short recurrence. Powers never exceed ``discount**chunk_size``, so it stays stable for long
    sequences where ``discount**T`` would underflow.
    """
    if x.shape[-1] == 0:
        return x.clone()
    lead = x.shape[:-1]
    length = x.shape[-1]
    flat = x.reshape(-1, length)
    pad = (-length) % chunk_size
    if pad:
        # Zeros after the end add nothing to a reverse sum.
        flat = torch.nn.functional.pad(flat, (0, pad))
    n_chunks = flat.shape[-1] // chunk_size
    chunks = flat.view(flat.shape[0], n_chunks, chunk_size)
    idx = torch.arange(chunk_size, device=x.device)
    exponent = idx[:, None] - idx[None, :]  # row j (source), column i (target): j - i
    base = torch.tensor(discount, dtype=x.dtype, device=x.device)
    powers = torch.pow(base, exponent.clamp_min(0).to(x.dtype))
    upper = torch.where(exponent >= 0, powers, torch.zeros((), dtype=x.dtype, device=x.device))
    local = chunks @ upper  # local[b, c, i] = sum_{j >= i in chunk} d**(j-i) x[b, c, j]
    carry_scale = torch.pow(base, (chunk_size - idx).to(x.dtype))  # d**(C - i)
    out = torch.empty_like(local)
    carry = torch.zeros(flat.shape[0], dtype=x.dtype, device=x.device)
    for c in range(n_chunks - 1, -1, -1):
        out[:, c] = local[:, c] + carry[:, None] * carry_scale
        carry = out[:, c, 0]
    return out.reshape(flat.shape[0], -1)[:, :length].reshape(*lead, length)


def _token_kl(
    p: AdvantageParams, log_probs: Sequence[torch.Tensor], ref_log_probs: Sequence[torch.Tensor] | None
) -> list[torch.Tensor]:
    if p.kl_coef == 0:
        return [torch.zeros_like(lp, dtype=torch.float32) for lp in log_probs]
    if ref_log_probs is None:
        raise ValueError(
            f"kl_coef={p.kl_coef} needs ref_log_probs (reward shaping with KL to the reference)"
        )
    if len(ref_log_probs) != len(log_probs):
        raise ValueError(f"{len(ref_log_probs)} ref_log_probs for {len(log_probs)} log_probs")
    return [
        compute_approx_kl(lp.detach(), ref.detach(), p.kl_loss_type).float()
        for lp, ref in zip(log_probs, ref_log_probs, strict=True)
    ]


def _last_trainable(mask: torch.Tensor) -> int | None:
    nz = torch.nonzero(mask, as_tuple=True)[0]
    return int(nz[-1]) if nz.numel() else None


def _reinforce_pp_returns(
    p: AdvantageParams, rewards: Sequence[float], kl: list[torch.Tensor], loss_masks: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for reward, k, mask in zip(rewards, kl, loss_masks, strict=True):
        token_rewards = -p.kl_coef * k
        last = _last_trainable(mask)
        # A fully masked sample (remove_sample) trains on nothing; Miles asserts here instead.
        if last is not None:
            token_rewards[last] += reward
        out.append(reverse_discounted_cumsum(token_rewards, p.gamma))
    return out


def _gae(
    p: AdvantageParams,
    rewards: Sequence[float],
    kl: list[torch.Tensor],
    loss_masks: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    # Masked tokens (tool output) are not MDP steps: GAE runs on the trainable subsequence.
    idx = [torch.nonzero(m, as_tuple=True)[0] for m in loss_masks]
    width = max((int(i.numel()) for i in idx), default=0)
    n = len(values)
    device = values[0].device if n else torch.device("cpu")
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32
    packed_v = torch.zeros(n, width, dtype=dtype, device=device)
    packed_r = torch.zeros(n, width, dtype=dtype, device=device)
    for b in range(n):
        k = int(idx[b].numel())
        if k:
            packed_v[b, :k] = values[b].detach().to(dtype)[idx[b]]
            packed_r[b, :k] = (-p.kl_coef * kl[b]).to(dtype)[idx[b]]
            packed_r[b, k - 1] += rewards[b]
    next_v = torch.nn.functional.pad(packed_v[:, 1:], (0, 1))  # V after the last step is 0
    deltas = packed_r + p.gamma * next_v - packed_v
    packed_adv = reverse_discounted_cumsum(deltas, p.gamma * p.lambd)
    packed_ret = packed_adv + packed_v
    advantages: list[torch.Tensor] = []
    returns: list[torch.Tensor] = []
    for b in range(n):
        k = int(idx[b].numel())
        adv = torch.zeros(values[b].shape[0], dtype=dtype, device=device)
        ret = torch.zeros_like(adv)
        adv[idx[b]] = packed_adv[b, :k]
        ret[idx[b]] = packed_ret[b, :k]
        advantages.append(adv)
        returns.append(ret)
    return advantages, returns


def compute_advantages_and_returns(
    *,
    params: AdvantageParams,
    rewards: list[float],
    log_probs: list[torch.Tensor] | None,
    ref_log_probs: list[torch.Tensor] | None,
    loss_masks: list[torch.Tensor],
    values: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Advantages and returns for ``params.estimator``, one tensor per sample.

    ``rewards`` are the post-processed rewards (group-centred for grpo/gspo/rf++-baseline).
    ``log_probs`` are the old policy's (or rollout's, with ``use_rollout_logprobs``); the KL used
    for reward shaping is ``compute_approx_kl(log_probs, ref_log_probs, params.kl_loss_type)`` and is
    only computed when ``kl_coef != 0``; without it ``log_probs`` may be None (on-policy steps skip
    them). ``values`` (old critic values) are required for ppo. Whitening is separate:
    :func:`normalize_advantages`.
    """
    p = params
    n = len(rewards)
    if log_probs is None:
        if p.kl_coef != 0:
            raise ValueError(f"kl_coef={p.kl_coef} shapes the reward with KL: it needs log_probs")
        log_probs = [torch.zeros_like(m, dtype=torch.float32) for m in loss_masks]
    if not len(log_probs) == len(loss_masks) == n:
        raise ValueError(
            f"compute_advantages_and_returns: {n} rewards, {len(log_probs)} log_probs, "
            f"{len(loss_masks)} loss_masks"
        )
    for i, (lp, m) in enumerate(zip(log_probs, loss_masks, strict=True)):
        if lp.shape != m.shape:
            raise ValueError(f"sample {i}: log_probs {tuple(lp.shape)} but loss_mask {tuple(m.shape)}")
    with torch.no_grad():
        kl = _token_kl(p, log_probs, ref_log_probs)
        est = p.estimator
        if est in ("grpo", "gspo"):
            adv = [torch.full_like(k, float(r)) for k, r in zip(kl, rewards, strict=True)]
            return adv, [a.clone() for a in adv]
        if est == "reinforce_plus_plus":
            ret = _reinforce_pp_returns(p, rewards, kl, loss_masks)
            return ret, [r.clone() for r in ret]
        if est == "reinforce_plus_plus_baseline":
            adv = [float(r) - p.kl_coef * k for k, r in zip(kl, rewards, strict=True)]
            return adv, [a.clone() for a in adv]
        if est == "ppo":
            if values is None:
                raise ValueError("advantage_estimator=ppo needs values (old critic values per token)")
            if len(values) != n:
                raise ValueError(f"ppo: {len(values)} values for {n} samples")
            for i, (v, m) in enumerate(zip(values, loss_masks, strict=True)):
                if v.shape != m.shape:
                    raise ValueError(
                        f"ppo: sample {i} values {tuple(v.shape)} but loss_mask {tuple(m.shape)}"
                    )
            return _gae(p, rewards, kl, loss_masks, values)
        raise ValueError(f"unknown advantage_estimator {est!r}")


def normalize_advantages(
    advantages: list[torch.Tensor], loss_masks: list[torch.Tensor], eps: float = 1e-8
) -> list[torch.Tensor]:
    """Masked whitening across the whole batch: ``(A - mean) / sqrt(var + eps)``.

    Mean and unbiased variance are taken over trainable tokens only, then applied to every
    position. Applied when ``AdvantageParams.normalize`` (``--normalize-advantages``) is set. An empty mask returns the
    input unchanged.
    """
    if len(advantages) != len(loss_masks):
        raise ValueError(f"normalize_advantages: {len(advantages)} advantages, {len(loss_masks)} masks")
    if not advantages:
        return []
    with torch.no_grad():
        flat = torch.cat([a.detach() for a in advantages])
        mask = torch.cat([m.to(device=flat.device, dtype=flat.dtype) for m in loss_masks])
        if flat.shape != mask.shape:
            raise ValueError(
                f"normalize_advantages: {flat.numel()} advantages but {mask.numel()} mask entries"
            )
        count = mask.sum()
        if count == 0:
            return [a.detach().clone() for a in advantages]
        mean = (flat * mask).sum() / count
        var = ((flat - mean).square() * mask).sum() / count
        if count >= 2:  # Bessel's correction, as Miles's distributed_masked_whiten
            var = var * count / (count - 1)
        whitened = (flat - mean) * torch.rsqrt(var + eps)
        return list(torch.split(whitened, [a.numel() for a in advantages]))
