# A Miles custom generate function, as written against Miles: POST to the router, read logprobs.
from miles.rollout.sglang_rollout import GenerateState
from miles.utils.http_utils import post
from miles.utils.types import Sample


async def generate(args, sample: Sample, sampling_params) -> Sample:
    state = GenerateState(args)
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"

    prompt_ids = state.tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    payload = {
        "input_ids": prompt_ids,
        "sampling_params": sampling_params,
        "return_logprob": True,
    }
    output = await post(url, payload)

    new_tokens = [item[1] for item in output["meta_info"]["output_token_logprobs"]]
    new_log_probs = [item[0] for item in output["meta_info"]["output_token_logprobs"]]
    sample.tokens = prompt_ids + new_tokens
    sample.response_length = len(new_tokens)
    sample.response = output["text"]
    sample.rollout_log_probs = new_log_probs
    sample.metadata["served_by"] = url

    match output["meta_info"]["finish_reason"]["type"]:
        case "length":
            sample.status = Sample.Status.TRUNCATED
        case "abort":
            sample.status = Sample.Status.ABORTED
        case "stop":
            sample.status = Sample.Status.COMPLETED
    return sample
