"""The learning-rate schedule of Megatron's ``OptimizerParamScheduler`` (what Miles trains with).

At optimizer step ``s`` (0 for the first update), with warm-up ``W``, decay length ``D`` and peak
``lr``:

- ``s <= W`` (W > 0): linear warm-up ``lr_warmup_init + (lr - lr_warmup_init) * s / W``;
- ``constant``: ``lr``;
- ``s > D``: ``min_lr``;
- otherwise, with ``r = (s - W) / (D - W)``: ``min_lr + (lr - min_lr) * c`` where ``c = 1 - r``
  (linear) or ``c = (1 + cos(pi r)) / 2`` (cosine).

``D`` is ``lr_decay_iters`` when set, else every optimizer step of the run (Megatron's
``train_iters``): ``num_rollout`` times the optimizer steps per rollout. The run's length may only
be known when ``Trainer.fit`` decides it (from ``num_epoch`` and the dataset size, or
``fit(num_rollout=N)``), so the Trainer tells the schedule then (:meth:`LRSchedule.set_total_steps`).
A decaying schedule that never learns its length stays at ``lr`` and warns loudly once.
"""

from __future__ import annotations

import logging
import math
import warnings

from miles_sdk.config import Config

__all__ = ["LRSchedule", "optimizer_steps_per_rollout"]

log = logging.getLogger(__name__)


def optimizer_steps_per_rollout(args: Config) -> int:
    """Optimizer steps one rollout makes (num_steps_per_rollout, else samples / global batch)."""
    if args.num_steps_per_rollout:
        return args.num_steps_per_rollout
    samples = args.rollout_batch_size * args.n_samples_per_prompt
    return max(samples // args.effective_global_batch_size, 1)


class LRSchedule:
    """A ``LambdaLR`` factor (learning rate / ``lr``) per optimizer step.

    A callable object rather than a closure: ``LambdaLR.state_dict`` saves an object's attributes,
    so a checkpoint keeps the decay length it was trained with (as Megatron's does)."""

    def __init__(self, args: Config) -> None:
        self.peak = float(args.lr)
        self.init = float(args.lr_warmup_init)
        self.floor = float(args.min_lr)
        self.warmup = int(args.lr_warmup_iters)
        self.style = str(args.lr_decay_style)
        self.decay_steps: int | None = args.lr_decay_iters
        self.decay_steps_from_config = args.lr_decay_iters is not None
        self.warned = False
        if self.decay_steps is None and args.num_rollout is not None:
            self.decay_steps = args.num_rollout * optimizer_steps_per_rollout(args)

    def set_total_steps(self, total_steps: int) -> None:
        """The run's optimizer steps, once known; ``lr_decay_iters`` from the Config wins."""
        if not self.decay_steps_from_config:
            self.decay_steps = max(int(total_steps), 1)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (Megatron's ``get_lr`` at ``num_steps``)."""
        if self.warmup > 0 and step <= self.warmup:
            return self.init + (self.peak - self.init) * step / self.warmup
        if self.style == "constant":
            return self.peak
        if self.decay_steps is None:
            if step > self.warmup:  # decay would have begun (step 0 of no warm-up is the peak anyway)
                self._warn_unknown_length()
            return self.peak
        if step > self.decay_steps:
            return self.floor
        span = self.decay_steps - self.warmup
        # Megatron asserts warmup < decay steps; a decay no longer than the warm-up is over.
        ratio = 1.0 if span <= 0 else (step - self.warmup) / span
        if self.style == "linear":
            coeff = 1.0 - ratio
        elif self.style == "cosine":
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        else:
            raise ValueError(f"lr_decay_style={self.style!r}: expected constant, linear or cosine")
        return self.floor + coeff * (self.peak - self.floor)

    def __call__(self, step: int) -> float:
        if self.peak == 0.0:
            return 0.0
        return self.lr_at(step) / self.peak

    def _warn_unknown_length(self) -> None:
        if self.warned:
            return
        self.warned = True
        message = (
            f"lr_decay_style={self.style!r} but the run's length is unknown (no num_rollout, no "
            "lr_decay_iters, and Trainer.fit has not set it): the learning rate stays at lr and "
            "does not decay. Set num_rollout or lr_decay_iters in the Config, or train with fit()."
        )
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
