"""On-policy distillation (OPD): the teacher's log-probs as a per-token advantage term (issue 15.7).

As Miles's ``apply_opd_kl_to_advantages``: after the advantage estimator,

    advantage_t -= opd_kl_coef * (old_student_logp_t - teacher_logp_t)

so tokens the teacher finds likelier than the student are pushed up, the others down; it works
on top of any estimator (pure distillation uses zero task rewards). Top-k OPD precomputes the
reverse-KL estimate per token on the sample (``opd_reverse_kl``), which is then used as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["OPDError", "apply_opd_kl"]


class OPDError(ValueError):
    """use_opd is set but the samples carry no teacher signal, or its shape does not match."""


def apply_opd_kl(
    advantages: Sequence[torch.Tensor],
    student_log_probs: Sequence[torch.Tensor] | None,
    *,
    kl_coef: float,
    teacher_log_probs: Sequence[Sequence[float]] | None = None,
    reverse_kl: Sequence[Sequence[float]] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(advantages - kl_coef * reverse_kl, reverse_kl)`` per sample; the inputs are not modified.

    ``reverse_kl`` (precomputed) wins; else it is ``old student log-prob - teacher log-prob``.
    """
    if reverse_kl is not None:
        kls = [torch.as_tensor(list(k), dtype=torch.float32) for k in reverse_kl]
    elif teacher_log_probs is None:
        raise OPDError(
            "use_opd is set but the samples have no teacher_log_probs: the reward must score the teacher "
            "and its post-process store them (e.g. --custom-rm-path miles.rollout.on_policy_distillation.reward_func "
            "--custom-reward-post-process-path miles.rollout.on_policy_distillation.post_process_rewards)"
        )
    elif student_log_probs is None:
        raise OPDError("use_opd needs the old student log-probs (they were not computed)")
    else:
        if len(teacher_log_probs) != len(student_log_probs):
            raise OPDError(
                f"OPD: {len(teacher_log_probs)} teacher_log_probs for {len(student_log_probs)} samples"
            )
        kls = []
        for i, (student, teacher) in enumerate(zip(student_log_probs, teacher_log_probs, strict=True)):
            t = torch.as_tensor(list(teacher), dtype=torch.float32, device=student.device)
            if t.shape != student.shape:
                raise OPDError(
                    f"OPD: sample {i} has {t.numel()} teacher log-probs for {student.numel()} response tokens"
                )
            kls.append(student.detach().float() - t)
    if len(kls) != len(advantages):
        raise OPDError(f"OPD: {len(kls)} reverse-KL rows for {len(advantages)} samples")
    out = []
    for i, (adv, kl) in enumerate(zip(advantages, kls, strict=True)):
        kl = kl.to(device=adv.device, dtype=adv.dtype)
        if kl.shape != adv.shape:
            raise OPDError(
                f"OPD: sample {i}: advantages {tuple(adv.shape)} vs reverse KL {tuple(kl.shape)} (per-token expected)"
            )
        out.append(adv - kl_coef * kl)
    return out, kls
