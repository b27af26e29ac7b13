# Miles-style reward functions: a custom rm, a batched (group) rm, and one built on rm_hub helpers.
from miles.rollout.rm_hub.math_utils import grade_answer_verl
from miles.utils.types import Sample

CALLS = []


async def custom_rm(args, sample: Sample, **kwargs):
    CALLS.append(sample.index)
    # Reward responses of even character length: a signal the tiny policy can vary on.
    return float(len(sample.response) % 2 == 0)


async def group_rm(args, samples: list[Sample], **kwargs):
    CALLS.append([s.index for s in samples])
    return [float(i == 0) for i, _ in enumerate(samples)]


async def boxed_math_rm(args, sample: Sample, **kwargs):
    return 1.0 if grade_answer_verl(sample.response, sample.label) else 0.0
