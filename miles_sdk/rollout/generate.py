"""Single-turn generation on the inference engine, plus the building blocks of multi-turn generate fns.

:func:`generate_with_engine` is the default ``GenerateFn``. A multi-turn (tool-use) GenerateFn
calls it once per model turn, with :func:`append_tokens` in between for the tool's output:

.. code-block:: python

    async def generate(args, sample, sampling_params):
        params = stop_at_markers(sampling_params, "</tool_call>")
        for _ in range(max_turns):
            sample = await generate_with_engine(args, sample, params)
            call = extract_tool_call(sample.response)
            if call is None or sample.status is not Sample.Status.COMPLETED:
                break
            append_tokens(sample, tok.encode(run_tool(call)), loss_mask_value=0, text=...)
        return sample

``max_new_tokens`` is the budget of the whole response: each call gets what is left of it after
the tokens the sample already has (earlier turns, tool output, or a partial rollout's tokens).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence, Sized

from miles_sdk.config import Config
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams
from miles_sdk.rollout.context import RolloutContext, TokenizerLike, get_rollout_context
from miles_sdk.types import Sample, SampleStatus

__all__ = [
    "append_tokens",
    "extract_tool_call",
    "generate_with_engine",
    "sampling_params_from_args",
    "status_from_finish_reason",
    "stop_at_markers",
    "tokenize_prompt",
]

_STATUS_OF_FINISH = {
    FinishReason.STOP: Sample.Status.COMPLETED,
    FinishReason.LENGTH: Sample.Status.TRUNCATED,
    FinishReason.ABORT: Sample.Status.ABORTED,
}


def status_from_finish_reason(reason: FinishReason) -> SampleStatus:
    """length -> TRUNCATED, abort -> ABORTED, stop -> COMPLETED (Miles's mapping)."""
    status = _STATUS_OF_FINISH.get(reason)  # a FinishReason, or its string value (a str enum)
    return status if status is not None else _STATUS_OF_FINISH[FinishReason(reason)]


def sampling_params_from_args(args: Config, evaluation: bool = False) -> SamplingParams:
    """The SGLang sampling parameters the default rollout sends (Miles's GenerateState defaults).

    With ``evaluation=True`` the ``eval_*`` settings override their ``rollout_*`` counterparts
    when set. Stop strings stay in the output (``no_stop_trim``) so a multi-turn generate fn
    sees the tool-call marker that stopped the turn.
    """

    def pick(eval_value: float | None, value: float) -> float | int:
        return eval_value if evaluation and eval_value is not None else value

    params = SamplingParams(
        temperature=float(pick(args.eval_temperature, args.rollout_temperature)),
        top_p=float(pick(args.eval_top_p, args.rollout_top_p)),
        top_k=int(pick(args.eval_top_k, args.rollout_top_k)),
        max_new_tokens=int(pick(args.eval_max_response_len, args.rollout_max_response_len)),
        skip_special_tokens=args.rollout_skip_special_tokens,
        no_stop_trim=True,
    )
    if args.rollout_stop:
        params["stop"] = list(args.rollout_stop)
    if args.rollout_stop_token_ids:
        params["stop_token_ids"] = list(args.rollout_stop_token_ids)
    return params


def tokenize_prompt(args: Config, sample: Sample, ctx: RolloutContext) -> list[int]:
    """Token ids of ``sample.prompt``: chat messages go through the chat template first."""
    tok = ctx.tokenizer
    where = f"sample index={sample.index} group={sample.group_index}"
    if tok is None:
        raise ValueError(
            f"{where} has no tokens and RolloutContext.tokenizer is None: pass a tokenizer or "
            "tokenise prompts in the data source"
        )
    prompt = sample.prompt
    if isinstance(prompt, list):
        if not args.apply_chat_template:
            raise ValueError(
                f"{where}: prompt is a list of chat messages but apply_chat_template is off; "
                "set apply_chat_template=True (--apply-chat-template) or give text prompts"
            )
        rendered = tok.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **args.apply_chat_template_kwargs
        )
        if not isinstance(rendered, str):
            raise TypeError(
                f"{where}: tokenizer.apply_chat_template(tokenize=False) returned {type(rendered)}"
            )
        prompt = rendered
    return _encode(tok, prompt)


_ENCODED: weakref.WeakKeyDictionary[object, dict[tuple[int, str], tuple[int, ...]]] = (
    weakref.WeakKeyDictionary()
)
"""Per tokenizer: (vocabulary size with added tokens, prompt text) -> token ids. The samples of a
group share their prompt, so a GRPO step tokenised each prompt n_samples_per_prompt times (the
demo: 512 encodes a step for 32 prompts). The size in the key keeps a tokenizer that gains tokens
(``add_tokens``) from reusing ids it would now produce differently."""

_ENCODED_MAX = 4096
"""Prompts kept per tokenizer; the cache starts afresh past this (prompts rarely repeat across steps)."""


def _encode(tok: TokenizerLike, text: str) -> list[int]:
    try:
        cache = _ENCODED.setdefault(tok, {})
    except TypeError:  # a tokenizer that takes no weak references: no cache
        return list(tok.encode(text, add_special_tokens=False))
    size = len(tok) if isinstance(tok, Sized) else -1
    ids = cache.get((size, text))
    if ids is None:
        if len(cache) >= _ENCODED_MAX:
            cache.clear()
        ids = cache[size, text] = tuple(tok.encode(text, add_special_tokens=False))
    return list(ids)  # a fresh list: the caller extends it with the response


async def generate_with_engine(args: Config, sample: Sample, sampling_params: SamplingParams) -> Sample:
    """One engine call for ``sample`` (the default GenerateFn). Edits and returns the sample.

    - Empty ``sample.tokens``: the prompt is tokenised (chat template when
      ``apply_chat_template``). Otherwise generation continues from ``sample.tokens``
      (a resumed partial rollout, or the next turn of a multi-turn sample).
    - The budget is ``max_new_tokens`` minus the response tokens the sample already has,
      capped by ``rollout_max_context_len - len(tokens)``. A budget <= 0 sets TRUNCATED
      without calling the engine.
    - New tokens, log-probs (aligned with the response) and the engine's weight version are
      appended; ``loss_mask``, when set, gets 1 per new token; ``status`` follows the finish
      reason.
    """
    ctx = get_rollout_context()
    call = engine_call(args, sample, sampling_params, ctx)
    if call is None:
        return sample
    input_ids, params = call
    return apply_engine_output(sample, input_ids, await ctx.engine.generate(input_ids, params), ctx)


def engine_call(
    args: Config, sample: Sample, sampling_params: SamplingParams, ctx: RolloutContext
) -> tuple[list[int], SamplingParams] | None:
    """What :func:`generate_with_engine` sends the engine for ``sample``: its input ids and the
    params with the remaining budget; None (the sample set TRUNCATED) when no budget is left.
    The default rollout's batched path calls it too, so both send the same requests."""
    if not sample.tokens:
        sample.tokens = tokenize_prompt(args, sample, ctx)
        sample.response_length = 0
    input_ids = list(sample.tokens)

    max_new = sampling_params.get("max_new_tokens", args.rollout_max_response_len)
    budget = max_new - sample.response_length
    if args.rollout_max_context_len is not None:
        budget = min(budget, args.rollout_max_context_len - len(input_ids))
    if budget <= 0:
        sample.status = Sample.Status.TRUNCATED
        return None

    params = SamplingParams(**sampling_params)
    params["max_new_tokens"] = budget
    return input_ids, params


def apply_engine_output(
    sample: Sample, input_ids: list[int], out: EngineOutput, ctx: RolloutContext
) -> Sample:
    """Append the engine's answer to the request :func:`engine_call` built from ``sample``."""
    if len(out.log_probs) != len(out.token_ids):
        raise ValueError(
            f"engine {type(ctx.engine).__name__} returned {len(out.token_ids)} tokens but "
            f"{len(out.log_probs)} log-probs for sample index={sample.index}"
        )
    new_ids = list(out.token_ids)
    text = out.text if out.text is not None else (ctx.decode(new_ids) if new_ids else "")

    previous = sample.response_length
    sample.tokens = input_ids + new_ids
    sample.response_length = previous + len(new_ids)
    sample.response += text
    if sample.loss_mask is not None:
        sample.loss_mask = list(sample.loss_mask) + [1] * len(new_ids)
    # Tokens the engine did not produce (tool output appended without log-probs) get 0.0, so
    # the list always has one entry per response token.
    old_lp = sample.rollout_log_probs if sample.rollout_log_probs is not None else [0.0] * previous
    sample.rollout_log_probs = list(old_lp) + [float(x) for x in out.log_probs]
    sample.weight_versions.append(out.weight_version)
    sample.status = status_from_finish_reason(out.finish_reason)
    if out.finish_message is not None:  # e.g. why the engine aborted it (a prompt over the context)
        sample.metadata["finish_message"] = out.finish_message
    return sample


def append_tokens(
    sample: Sample,
    token_ids: Sequence[int],
    *,
    loss_mask_value: int,
    log_probs: Sequence[float] | None = None,
    text: str | None = None,
) -> Sample:
    """Append non-generated tokens (tool or environment output) to the response.

    ``loss_mask_value`` is 0 for tokens the policy must not be trained on (tool output), 1 for
    tokens it should. The loss mask is materialised (earlier tokens keep 1) and
    ``rollout_log_probs`` stays aligned: ``log_probs`` when given, else 0.0 per token. ``text``
    is appended to ``sample.response`` when given.
    """
    if loss_mask_value not in (0, 1):
        raise ValueError(f"loss_mask_value must be 0 or 1, got {loss_mask_value!r}")
    n = len(token_ids)
    if log_probs is not None and len(log_probs) != n:
        raise ValueError(
            f"append_tokens: {n} token ids but {len(log_probs)} log_probs (sample index={sample.index})"
        )
    previous = sample.response_length
    mask = sample.loss_mask if sample.loss_mask is not None else [1] * previous
    sample.loss_mask = list(mask) + [loss_mask_value] * n
    if sample.rollout_log_probs is not None or log_probs is not None:
        old = sample.rollout_log_probs if sample.rollout_log_probs is not None else [0.0] * previous
        new = [float(x) for x in log_probs] if log_probs is not None else [0.0] * n
        sample.rollout_log_probs = list(old) + new
    sample.tokens = list(sample.tokens) + [int(t) for t in token_ids]
    sample.response_length = previous + n
    if text is not None:
        sample.response += text
    return sample


def stop_at_markers(sampling_params: SamplingParams, *markers: str) -> SamplingParams:
    """A copy of ``sampling_params`` that also stops at each marker (e.g. ``"</tool_call>"``).

    The marker stays in the response (``no_stop_trim``), so :func:`extract_tool_call` can find it.
    """
    params = SamplingParams(**sampling_params)
    stops = list(params.get("stop", []))
    stops.extend(m for m in markers if m not in stops)
    params["stop"] = stops
    params["no_stop_trim"] = True
    return params


def extract_tool_call(
    text: str, open_marker: str = "<tool_call>", close_marker: str = "</tool_call>"
) -> str | None:
    """The payload of the tool call that ends ``text`` (trailing whitespace aside), else None.

    Only a call at the very end counts: that is what a turn stopped by :func:`stop_at_markers`
    looks like; a call quoted earlier in the response is not an instruction to run a tool.
    """
    stripped = text.rstrip()
    if not stripped.endswith(close_marker):
        return None
    body = stripped[: len(stripped) - len(close_marker)]
    start = body.rfind(open_marker)
    if start < 0:
        return None
    return body[start + len(open_marker) :].strip()
