# Miles-style hooks that use args as shared state, as Miles's multi-agent rollout does: the
# generate function sets attributes, the reward reads them back.
from miles.rollout.sglang_rollout import generate as _generate
from miles.utils.types import Sample

SEEN = []


async def generate(args, sample: Sample, sampling_params):
    args.sampling_params = sampling_params
    args.rollout_max_context_len = 123  # a Config field: Miles-style hooks see the new value
    args.generate_calls = getattr(args, "generate_calls", 0) + 1
    return await _generate(args, sample, sampling_params)


async def custom_rm(args, sample: Sample, **kwargs):
    SEEN.append((args.generate_calls, dict(args.sampling_params), args.rollout_max_context_len))
    return float(len(sample.response) % 2 == 0)
