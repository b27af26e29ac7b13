"""The Search-R1 hooks: ``generate`` (``--custom-generate-function-path``) and ``reward_fn``
(``--custom-rm-path``). Plain functions with Miles's signatures; see the package docstring."""

from __future__ import annotations

import re
import time

from examples.search_r1.retriever import BM25, CORPUS
from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.hooks import GenerateFn, RewardFn
from miles_sdk.rewards import squad_normalize
from miles_sdk.rollout import (
    append_tokens,
    extract_tool_call,
    generate_with_engine,
    get_rollout_context,
    stop_at_markers,
)
from miles_sdk.types import Sample

__all__ = [
    "PROMPT_TEMPLATE",
    "SEARCH_R1_CONFIGS",
    "extract_answer",
    "format_information",
    "generate",
    "make_prompt",
    "retriever",
    "reward_fn",
]

SEARCH_R1_CONFIGS: dict[str, int] = {
    "max_turns": 3,  # model turns per sample; the last one gets no search results
    "topk": 2,  # documents per search
}
"""Knobs of the example, as Miles's search-r1 example keeps them: a module-level dict."""

PROMPT_TEMPLATE = (
    "Search with <search>query</search>; results come back in <information></information>. "
    "Then answer with <answer>text</answer>.\nQuestion: {question}\n"
)

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INFORMATION = re.compile(r"<information>.*?</information>", re.DOTALL)

_RETRIEVER: BM25 | None = None


def make_prompt(question: str) -> str:
    """The prompt the policy sees for ``question``."""
    return PROMPT_TEMPLATE.format(question=question)


def retriever() -> BM25:
    """The BM25 index over :data:`CORPUS`, built on first use and shared by every sample."""
    global _RETRIEVER
    if _RETRIEVER is None:
        _RETRIEVER = BM25(CORPUS)
    return _RETRIEVER


def format_information(documents: list[str]) -> str:
    """The text appended after a search (Search-R1's layout, blank lines around the block)."""
    body = "".join(f"Doc {i}: {doc}\n" for i, doc in enumerate(documents, start=1)) or "No results.\n"
    return f"\n\n<information>{body}</information>\n\n"


async def generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    """Alternate model turns and searches until an answer, a stop, the budget or ``max_turns``."""
    tokenizer = get_rollout_context().tokenizer
    if tokenizer is None:
        raise ValueError(
            "examples.search_r1.hooks.generate: the RolloutContext has no tokenizer, which it needs "
            "to encode the retrieved <information> text"
        )
    params = stop_at_markers(sampling_params, "</search>", "</answer>")
    max_turns = SEARCH_R1_CONFIGS["max_turns"]
    for turn in range(max_turns):
        # generate_with_engine gives each turn what is left of max_new_tokens, and marks the
        # sample TRUNCATED without calling the engine once nothing is left.
        sample = await generate_with_engine(args, sample, params)
        if sample.status is not Sample.Status.COMPLETED or turn == max_turns - 1:
            break
        query = extract_tool_call(sample.response, "<search>", "</search>")
        if query is None:  # an answer, or EOS: the episode is over
            break
        start = time.perf_counter()
        hits = retriever().search(query, k=SEARCH_R1_CONFIGS["topk"])
        information = format_information([CORPUS[i] for i, _ in hits])
        sample.non_generation_time += time.perf_counter() - start
        append_tokens(
            sample,
            tokenizer.encode(information, add_special_tokens=False),
            loss_mask_value=0,
            text=information,
        )
    return sample


def extract_answer(response: str) -> str | None:
    """The last ``<answer>...</answer>`` the model wrote (retrieved text is ignored), else None."""
    matches = _ANSWER.findall(_INFORMATION.sub("", response))
    return matches[-1].strip() if matches else None


async def reward_fn(args: Config, sample: Sample) -> float:
    """1.0 when the answer equals the label after SQuAD normalisation (case, punctuation,
    articles), else 0.0. A sample without a label is an error (set ``--label-key``), never 0."""
    if sample.label is None:
        raise ValueError(
            f"examples.search_r1.hooks.reward_fn: sample index={sample.index} has no label; set --label-key"
        )
    answer = extract_answer(sample.response)
    return 1.0 if answer is not None and squad_normalize(answer) == squad_normalize(str(sample.label)) else 0.0


# The hooks type-check against the Protocols the Trainer expects (mypy --strict).
_generate: GenerateFn = generate
_reward: RewardFn = reward_fn
