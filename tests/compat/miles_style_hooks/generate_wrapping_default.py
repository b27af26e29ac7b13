# A custom generate that post-processes Miles's default single-turn generate.
from miles.rollout.sglang_rollout import generate as _generate


async def generate(args, sample, sampling_params):
    sample = await _generate(args, sample, sampling_params)
    sample.metadata["wrapped_default"] = len(sample.tokens)
    return sample
