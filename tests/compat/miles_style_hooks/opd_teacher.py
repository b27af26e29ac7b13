# A stand-in teacher server for on-policy distillation tests: the reply has the shape of SGLang's
# /generate scoring reply (meta_info.input_token_logprobs, first entry a placeholder), for a
# teacher that puts 99% of its mass on the even token ids and 1% on the odd ones.
import math

from miles.utils.types import Sample

TEACHER = {"vocab": 2}


def teacher_log_prob(token: int) -> float:
    vocab = TEACHER["vocab"]
    n_even = (vocab + 1) // 2
    if token % 2 == 0:
        return math.log(0.99 / n_even)
    return math.log(0.01 / (vocab - n_even))


async def teacher_reply(args, sample: Sample, **kwargs):
    rows = [[None, sample.tokens[0], None]]
    rows += [[teacher_log_prob(t), t, None] for t in sample.tokens[1:]]
    return {"meta_info": {"input_token_logprobs": rows}}
