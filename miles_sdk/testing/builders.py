"""Build consistent Samples for hook tests in one line.

``make_sample`` keeps ``tokens``, ``response_length``, ``loss_mask`` and ``rollout_log_probs``
in agreement, whether prompt and response are given as text (tokenised with the tiny test
tokenizer unless another is passed) or as token ids:

.. code-block:: python

    s = make_sample("What is 2 + 2?", "4", reward=1.0, label="4")
    group = make_group(4, "What is 2 + 2?", responses=["4", "5", "4", "3"], rewards=[1, 0, 1, 0])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from miles_sdk.types import ChatMessage, Prompt, RewardValue, Sample, SampleStatus

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["make_batch", "make_group", "make_sample"]

TextOrIds = str | Sequence[int]
"""Text (tokenised by the builder) or token ids (used as they are)."""


@functools.cache
def _default_tokenizer() -> PreTrainedTokenizerBase:
    # Built on first use only: importing the builders must not pull in transformers.
    from miles_sdk.testing.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _decode(tok: PreTrainedTokenizerBase, ids: list[int]) -> str:
    text = tok.decode(ids)
    if not isinstance(text, str):
        raise TypeError(f"make_sample: tokenizer.decode returned {type(text).__name__}, not str")
    return text


def _prompt_ids(prompt: Prompt | Sequence[int], tok: PreTrainedTokenizerBase) -> tuple[Prompt, list[int]]:
    """(prompt as stored on the Sample, prompt token ids)."""
    if isinstance(prompt, str):
        return prompt, list(tok.encode(prompt, add_special_tokens=False))
    ids: list[int] = []
    messages: list[ChatMessage] = []
    for item in prompt:
        if isinstance(item, dict):
            messages.append(dict(item))
        elif isinstance(item, int) and not isinstance(item, bool):
            ids.append(item)
        else:
            raise TypeError(f"make_sample: prompt items must be token ids or chat messages, got {item!r}")
    if messages and ids:
        raise TypeError("make_sample: prompt mixes token ids and chat messages")
    if not messages:
        return _decode(tok, ids), ids
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"make_sample: the tokenizer's chat template returned {type(text).__name__}, not str")
    return messages, list(tok.encode(text, add_special_tokens=False))


def _per_token(
    name: str, value: float | Sequence[float] | None, length: int, cast: type[float | int]
) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return [cast(value)] * length
    out = [cast(v) for v in value]
    if len(out) != length:
        raise ValueError(f"make_sample: {name} has {len(out)} entries but the response has {length} tokens")
    return out


def make_sample(
    prompt: Prompt | Sequence[int] = "What is 1 + 1?",
    response: TextOrIds = "2",
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    add_eos: bool = False,
    reward: RewardValue | None = None,
    label: str | None = None,
    loss_mask: int | Sequence[int] | None = 1,
    rollout_log_probs: float | Sequence[float] | None = -1.0,
    status: SampleStatus = SampleStatus.COMPLETED,
    index: int = 0,
    group_index: int = 0,
    rollout_id: int = 0,
    weight_version: int = 0,
    metadata: dict[str, Any] | None = None,
    **fields: Any,
) -> Sample:
    """A finished Sample whose token-level fields agree with each other.

    - ``prompt``: text, chat messages (rendered with the chat template and a generation prompt),
      or token ids. ``response``: text or token ids; ``add_eos`` appends the EOS token.
    - ``loss_mask`` / ``rollout_log_probs``: one value repeated over every response token, a
      per-token list (its length is checked), or None to leave the field unset.
    - ``fields``: any other :class:`~miles_sdk.types.Sample` field (``teacher_log_probs``, ...).

    The result passes :meth:`Sample.validate`.
    """
    tok = tokenizer if tokenizer is not None else _default_tokenizer()
    stored_prompt, prompt_ids = _prompt_ids(prompt, tok)
    if isinstance(response, str):
        response_ids = list(tok.encode(response, add_special_tokens=False))
    else:
        response_ids = [int(t) for t in response]
    if add_eos:
        if tok.eos_token_id is None:
            raise ValueError("make_sample: add_eos=True but the tokenizer has no eos_token_id")
        response_ids.append(int(tok.eos_token_id))
    # Decoding the ids (rather than keeping the given text) gives exactly what an engine returns.
    response_text = _decode(tok, response_ids)
    n = len(response_ids)
    sample = Sample(
        group_index=group_index,
        index=index,
        rollout_id=rollout_id,
        prompt=stored_prompt,
        tokens=prompt_ids + response_ids,
        response=response_text,
        response_length=n,
        label=label,
        reward=reward,
        loss_mask=_per_token("loss_mask", loss_mask, n, int),
        rollout_log_probs=_per_token("rollout_log_probs", rollout_log_probs, n, float),
        weight_versions=[weight_version],
        status=status,
        metadata=dict(metadata) if metadata is not None else {},
        **fields,
    )
    sample.validate()
    return sample


def make_group(
    n: int = 4,
    prompt: Prompt | Sequence[int] = "What is 1 + 1?",
    *,
    responses: Sequence[TextOrIds] | None = None,
    rewards: Sequence[RewardValue | None] | None = None,
    group_index: int = 0,
    start_index: int | None = None,
    **sample_kwargs: Any,
) -> list[Sample]:
    """``n`` samples of one prompt, as a rollout returns a group.

    Responses default to ``"0", "1", ...`` so the samples differ. Indices run from
    ``start_index`` (default ``group_index * n``), so groups built with increasing
    ``group_index`` never share an index. Other keyword arguments go to :func:`make_sample`.
    """
    if n < 1:
        raise ValueError(f"make_group: n must be >= 1, got {n}")
    responses = [str(i) for i in range(n)] if responses is None else list(responses)
    if len(responses) != n:
        raise ValueError(f"make_group: {len(responses)} responses for n={n}")
    if rewards is not None and len(rewards) != n:
        raise ValueError(f"make_group: {len(rewards)} rewards for n={n}")
    first = group_index * n if start_index is None else start_index
    return [
        make_sample(
            prompt,
            responses[i],
            reward=None if rewards is None else rewards[i],
            group_index=group_index,
            index=first + i,
            **sample_kwargs,
        )
        for i in range(n)
    ]


def make_batch(
    num_groups: int = 2,
    n: int = 4,
    *,
    prompts: Sequence[Prompt | Sequence[int]] | None = None,
    rewards: Sequence[Sequence[RewardValue | None]] | None = None,
    **sample_kwargs: Any,
) -> list[list[Sample]]:
    """``num_groups`` groups of ``n`` samples (a rollout's ``samples``), indices 0..num_groups*n-1.

    Prompts default to ``"What is {g} + 1?"``; ``rewards`` is one list per group.
    """
    prompts = [f"What is {g} + 1?" for g in range(num_groups)] if prompts is None else list(prompts)
    if len(prompts) != num_groups:
        raise ValueError(f"make_batch: {len(prompts)} prompts for num_groups={num_groups}")
    if rewards is not None and len(rewards) != num_groups:
        raise ValueError(f"make_batch: {len(rewards)} reward lists for num_groups={num_groups}")
    return [
        make_group(
            n, prompts[g], rewards=None if rewards is None else rewards[g], group_index=g, **sample_kwargs
        )
        for g in range(num_groups)
    ]
