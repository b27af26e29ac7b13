"""The multi-agent hooks: ``generate`` returns a solver and a critic sample; ``reward_fn`` scores
a whole group of them in one batched call. See the package docstring."""

from __future__ import annotations

from collections.abc import Sequence

from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.hooks import BatchedRewardFn, GenerateFn
from miles_sdk.rollout import generate_with_engine
from miles_sdk.types import RewardValue, Sample

__all__ = [
    "CRITIC_TEMPLATE",
    "critic_group_index",
    "critic_prompt",
    "final_answer",
    "generate",
    "parse_verdict",
    "reward_fn",
]

CRITIC_TEMPLATE = "{question}{answer}\nCorrect? "
"""The critic's prompt: the solver's question and answer, then the question to the critic."""


def final_answer(response: str) -> str:
    """The answer text: the response up to the first special token (``<|im_end|>``), stripped."""
    return response.split("<|", 1)[0].strip()


def parse_verdict(response: str) -> bool | None:
    """``yes`` -> True, ``no`` -> False (first word, any case), anything else -> None."""
    words = final_answer(response).lower().split()
    if not words:
        return None
    return {"yes": True, "no": False}.get(words[0].strip(".,!"))


def critic_group_index(solver_group_index: int | None) -> int | None:
    """The critic's group: a negative id paired with the solver's (``g -> -g - 1``), so reward
    normalisation never mixes the two roles while every group id stays unique."""
    return None if solver_group_index is None else -solver_group_index - 1


def critic_prompt(solver: Sample) -> str:
    """The critic's prompt for a finished solver sample (text prompts only)."""
    if not isinstance(solver.prompt, str):
        raise TypeError(
            f"examples.multi_agent.hooks: sample index={solver.index} has a chat prompt; this example "
            "builds the critic prompt from text prompts only"
        )
    return CRITIC_TEMPLATE.format(question=solver.prompt, answer=final_answer(solver.response))


async def generate(args: Config, sample: Sample, sampling_params: SamplingParams) -> list[Sample]:
    """Solver turn, then critic turn; both samples are returned and trained on."""
    solver = await generate_with_engine(args, sample, sampling_params)
    # Fresh dicts: the data source's metadata must not be shared between the two roles.
    solver.metadata = {**solver.metadata, "role": "solver"}
    if solver.status is Sample.Status.ABORTED:
        return [solver]  # the rollout is being cut short; no point asking the critic
    critic = Sample(
        group_index=critic_group_index(solver.group_index),
        index=solver.index,
        rollout_id=solver.rollout_id,
        prompt=critic_prompt(solver),
        label=solver.label,
        metadata={**sample.metadata, "role": "critic", "solver_answer": final_answer(solver.response)},
    )
    critic = await generate_with_engine(args, critic, sampling_params)
    return [solver, critic]


def _score(sample: Sample) -> float:
    role = sample.metadata.get("role")
    if sample.label is None:
        raise ValueError(f"examples.multi_agent.hooks.reward_fn: sample index={sample.index} has no label")
    truth = str(sample.label).strip()
    if role == "solver":
        return 1.0 if final_answer(sample.response) == truth else 0.0
    if role == "critic":
        verdict = parse_verdict(sample.response)
        solver_correct = sample.metadata.get("solver_answer") == truth
        return 1.0 if verdict is not None and verdict == solver_correct else 0.0
    raise ValueError(
        f"examples.multi_agent.hooks.reward_fn: sample index={sample.index} has metadata role={role!r}; "
        "expected 'solver' or 'critic' (samples must come from examples.multi_agent.hooks.generate)"
    )


async def reward_fn(args: Config, samples: list[Sample]) -> Sequence[RewardValue]:
    """One reward per sample, in order: solver = exact sum; critic = verdict right about its solver."""
    return [_score(s) for s in samples]


# The hooks type-check against the Protocols the Trainer expects (mypy --strict).
_generate: GenerateFn = generate
_reward: BatchedRewardFn = reward_fn
