"""Warnings for a run that cannot learn, said while it runs rather than found in the plots later.

Three signals, each checked on every step and logged the first time it shows, then every
``WARN_EVERY`` steps on which it shows again (a persistent problem stays visible without
flooding the log):

- no reward spread: every prompt group of the step has identical rewards, so a group-centred
  estimator (grpo, gspo, reinforce_plus_plus_baseline) gives every sample a zero advantage (with
  other estimators: every reward of the step is the same);
- every response hit ``rollout_max_response_len``: no response ended by itself, so the reward
  (an answer after the end?) and the stop token are never seen;
- a flat reward: ``rollout/reward_mean`` has not moved for ``FLAT_STEPS`` steps.

The step's metrics also get ``rollout/zero_spread_groups_frac``.
"""

from __future__ import annotations

import logging
from collections import deque

from miles_sdk.config import Config
from miles_sdk.types import Metrics, Sample

__all__ = ["FLAT_STEPS", "WARN_EVERY", "LearningSignalMonitor"]

logger = logging.getLogger("miles_sdk.health")

WARN_EVERY = 20
"""A signal seen again is logged every this many occurrences after the first."""
FLAT_STEPS = 10
"""Steps with the same mean reward after which the reward counts as flat."""

_CENTRED = ("grpo", "gspo", "reinforce_plus_plus_baseline")
_SAME = 1e-8


class LearningSignalMonitor:
    """Watches each step's samples for the signals of a run that cannot learn (see the module doc)."""

    def __init__(self, args: Config) -> None:
        self.args = args
        self.seen: dict[str, int] = {}
        self._means: deque[float] = deque(maxlen=FLAT_STEPS)

    def observe(self, rollout_id: int, samples: list[Sample], metrics: Metrics) -> list[str]:
        """Check one step; adds metrics, logs what is due and returns every signal seen this step."""
        signals: list[str] = []
        rewards = _rewards_by_group(self.args, samples)
        if rewards:
            zero_spread = sum(1 for group in rewards if max(group) - min(group) <= _SAME)
            metrics["rollout/zero_spread_groups_frac"] = zero_spread / len(rewards)
            centred = self.args.advantage_estimator in _CENTRED and self.args.rewards_normalization
            flat = [r for group in rewards for r in group]
            if centred and zero_spread == len(rewards):
                signals.append(
                    self._say(
                        "no_spread",
                        f"rollout {rollout_id}: every prompt group has identical rewards (e.g. {rewards[0][0]:g} "
                        f"in all {len(rewards[0])} samples of a group), so every {self.args.advantage_estimator} "
                        "advantage is 0 and this step teaches nothing. With groups of one sample (n_samples_per_prompt=1 "
                        "or a custom data source) this never changes; otherwise check the reward (sample.response keeps "
                        "special tokens: compare sample.response_text()) and whether the policy can ever produce the "
                        "answer format (docs/first-run.md: a format warm-up)",
                    )
                )
            elif not centred and max(flat) - min(flat) <= _SAME:
                signals.append(
                    self._say(
                        "no_spread",
                        f"rollout {rollout_id}: every sample has the same reward {flat[0]:g}; the policy gets no "
                        "signal to tell better answers from worse ones",
                    )
                )
            self._means.append(sum(flat) / len(flat))
            if len(self._means) == FLAT_STEPS and max(self._means) - min(self._means) <= _SAME:
                signals.append(
                    self._say(
                        "flat_reward",
                        f"rollout {rollout_id}: the mean reward has stayed at {self._means[-1]:g} for {FLAT_STEPS} "
                        "steps; the run is not learning. Look at sample responses (trainer.last_samples) and the reward",
                    )
                )
        if samples and all(s.status is Sample.Status.TRUNCATED for s in samples):
            signals.append(
                self._say(
                    "all_truncated",
                    f"rollout {rollout_id}: every response hit rollout_max_response_len="
                    f"{self.args.rollout_max_response_len} without stopping; raise it, or teach the policy to stop "
                    "(docs/first-run.md: a format warm-up)",
                )
            )
        return signals

    def _say(self, signal: str, message: str) -> str:
        count = self.seen.get(signal, 0) + 1
        self.seen[signal] = count
        if count % WARN_EVERY == 1 or WARN_EVERY == 1:
            again = f" (seen on {count} steps so far; repeated every {WARN_EVERY})" if count > 1 else ""
            logger.warning("%s%s", message, again)
        return signal


def _rewards_by_group(args: Config, samples: list[Sample]) -> list[list[float]]:
    """The scalar rewards of the scored samples, grouped by ``group_index`` (else by position)."""
    groups: dict[object, list[float]] = {}
    size = max(args.n_samples_per_prompt, 1)
    for pos, sample in enumerate(samples):
        if sample.reward is None or sample.status is Sample.Status.FAILED:
            continue
        try:
            value = sample.get_reward_value(args.reward_key)
        except (KeyError, ValueError):
            continue
        key = sample.group_index if sample.group_index is not None else ("pos", pos // size)
        groups.setdefault(key, []).append(value)
    return list(groups.values())
