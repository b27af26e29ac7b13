# A Miles-style multi-turn generate function: model turn, tool observation (loss mask 0), model turn.
from miles.rollout.sglang_rollout import GenerateState
from miles.utils.http_utils import post
from miles.utils.types import Sample

OBSERVATION = " obs: 42 "
TURN_TOKENS = 2


async def generate(args, sample: Sample, sampling_params) -> Sample:
    state = GenerateState(args)
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"

    prompt_ids = state.tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    tokens = list(prompt_ids)
    loss_mask = []
    log_probs = []
    response = ""
    finish = "stop"
    for turn in range(2):
        params = dict(sampling_params)
        params["max_new_tokens"] = TURN_TOKENS
        params["ignore_eos"] = True
        output = await post(url, {"input_ids": tokens, "sampling_params": params, "return_logprob": True})
        turn_tokens = [t for _, t, _ in output["meta_info"]["output_token_logprobs"]]
        tokens += turn_tokens
        loss_mask += [1] * len(turn_tokens)
        log_probs += [lp for lp, _, _ in output["meta_info"]["output_token_logprobs"]]
        response += output["text"]
        finish = output["meta_info"]["finish_reason"]["type"]
        if turn == 0:
            obs_ids = state.tokenizer(OBSERVATION, add_special_tokens=False)["input_ids"]
            tokens += obs_ids
            loss_mask += [0] * len(obs_ids)
            log_probs += [0.0] * len(obs_ids)
            response += OBSERVATION

    sample.tokens = tokens
    sample.response_length = len(tokens) - len(prompt_ids)
    sample.response = response
    sample.loss_mask = loss_mask
    sample.rollout_log_probs = log_probs
    sample.status = Sample.Status.ABORTED if finish == "abort" else Sample.Status.COMPLETED
    return sample
