"""The worked example's hooks: ``generate`` (``--custom-generate-function-path``) and ``reward_fn``
(``--custom-rm-path``). See the package docstring."""

from __future__ import annotations

from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.hooks import GenerateFn, RewardFn
from miles_sdk.rewards import f1_score, squad_normalize
from miles_sdk.rollout import append_tokens, generate_with_engine, get_rollout_context
from miles_sdk.types import Sample

__all__ = ["ANSWER_CUE", "UNGROUNDED_FACTOR", "extract_answer", "generate", "is_grounded", "reward_fn"]

ANSWER_CUE = "\nAnswer:"
"""Appended (loss mask 0) when the model stops without an answer line."""
UNGROUNDED_FACTOR = 0.5
"""The F1 of an answer using words absent from the passage is multiplied by this."""


async def generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    """Generate; if the model finished without ``Answer:``, hand it the cue and continue once."""
    sample = await generate_with_engine(args, sample, sampling_params)
    if sample.status is not Sample.Status.COMPLETED or "Answer:" in sample.response:
        return sample
    tokenizer = get_rollout_context().tokenizer
    if tokenizer is None:
        raise ValueError(
            "examples.custom_generate_and_rm.hooks.generate: the RolloutContext has no tokenizer, which "
            "it needs to encode the answer cue"
        )
    append_tokens(
        sample, tokenizer.encode(ANSWER_CUE, add_special_tokens=False), loss_mask_value=0, text=ANSWER_CUE
    )
    # The cue counts against max_new_tokens; generate_with_engine gives the rest to this turn.
    return await generate_with_engine(args, sample, sampling_params)


def extract_answer(response: str) -> str:
    """The text after the last ``Answer:`` up to the end of its line; without ``Answer:``, the
    whole response. Either way it stops at the first special token (``<|im_end|>``)."""
    cue = response.rfind("Answer:")
    if cue >= 0:
        return response[cue + len("Answer:") :].split("<|", 1)[0].split("\n", 1)[0].strip()
    return response.split("<|", 1)[0].strip()


def is_grounded(answer: str, context: str) -> bool:
    """Every normalised answer word occurs in the normalised passage (an empty answer is not)."""
    words = squad_normalize(answer).split()
    passage = set(squad_normalize(context).split())
    return bool(words) and all(w in passage for w in words)


async def reward_fn(args: Config, sample: Sample) -> float:
    """F1 of the answer against the label, times :data:`UNGROUNDED_FACTOR` when the answer is not
    grounded in ``metadata["context"]``. A missing label or context is an error, never 0."""
    if sample.label is None:
        raise ValueError(
            f"examples.custom_generate_and_rm.hooks.reward_fn: sample index={sample.index} has no label; "
            "set --label-key"
        )
    context = sample.metadata.get("context")
    where = f"examples.custom_generate_and_rm.hooks.reward_fn: sample index={sample.index}"
    if context is None:
        raise ValueError(
            f"{where} has no metadata['context'] (metadata keys: {sorted(sample.metadata)}); set --metadata-key"
        )
    if not isinstance(context, str):
        raise TypeError(
            f"{where}: metadata['context'] is a {type(context).__name__}, expected the passage text"
        )
    answer = extract_answer(sample.response)
    f1 = f1_score(answer, str(sample.label))[0]
    return f1 if is_grounded(answer, context) else f1 * UNGROUNDED_FACTOR


# The hooks type-check against the Protocols the Trainer expects (mypy --strict).
_generate: GenerateFn = generate
_reward: RewardFn = reward_fn
