# A Miles-style dynamic sampling filter reading rewards through get_reward_value(args).
from miles.rollout.filter_hub.base_types import DynamicFilterOutput

SEEN = []


def record_reward_spread(args, samples, **kwargs):
    rewards = [sample.get_reward_value(args) for sample in samples]
    SEEN.append(rewards)
    return DynamicFilterOutput(keep=True, reason=None)
