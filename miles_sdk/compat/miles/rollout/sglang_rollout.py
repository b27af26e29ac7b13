"""Shim of ``miles.rollout.sglang_rollout``: ``GenerateState``, ``generate``, ``generate_and_rm``,
``generate_and_rm_group``, ``generate_rollout``, ``get_model_url``.

Inside a Trainer these run on miles_sdk's rollout: ``generate`` calls the Trainer's engine directly
(the same single-turn generation as the default rollout), ``generate_rollout`` is miles_sdk's
default rollout (generate, reward, dynamic filter, over-sampling, abort, partial rollout) with the
Trainer's hooks. ``GenerateState(args)`` gives a Miles generate function its tokenizer, semaphore
and sampling parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar, cast

from miles_sdk.compat._bridge import run_blocking
from miles_sdk.compat.miles.rollout.rm_hub import async_rm, batched_async_rm
from miles_sdk.compat.miles.utils.http_utils import post
from miles_sdk.compat.miles.utils.misc import load_function
from miles_sdk.config import Config
from miles_sdk.engines.base import SamplingParams
from miles_sdk.hooks import DataSource
from miles_sdk.rollout import generate_rollout as _sdk_generate_rollout
from miles_sdk.rollout import generate_with_engine
from miles_sdk.rollout.context import RolloutContext, RolloutContextError, get_rollout_context
from miles_sdk.types import RolloutFnEvalOutput, RolloutFnTrainOutput, Sample

__all__ = [
    "GenerateState",
    "generate",
    "generate_and_rm",
    "generate_and_rm_group",
    "generate_rollout",
    "get_model_url",
]

logger = logging.getLogger(__name__)

_SAMPLING_KEYS = frozenset(SamplingParams.__annotations__)
# SGLang keys that only shape the returned text; the engine has no slot for them.
_TEXT_ONLY_KEYS = frozenset({"spaces_between_special_tokens"})


def _context() -> RolloutContext | None:
    try:
        return get_rollout_context()
    except RolloutContextError:
        return None


class _OnePerArgs(type):
    """Metaclass: ``Cls(args)`` returns the same instance for the same ``args`` object.

    Miles keeps one global GenerateState per process; keyed by ``args`` instead, two Trainers
    (or tests) in one process do not share tokenizer, semaphore or abort flag.
    """

    _instances: ClassVar[dict[int, tuple[Any, Any]]] = {}

    def __call__(cls, args: Any) -> Any:
        key = id(args)
        entry = _OnePerArgs._instances.get(key)
        if entry is not None and _deref(entry[0]) is args:
            return entry[1]
        instance = super().__call__(args)
        ref = _ref(args)
        if isinstance(ref, weakref.ref):
            # The state refers to args weakly, so args can die; its entry goes with it.
            weakref.finalize(args, _OnePerArgs._instances.pop, key, None)
        _OnePerArgs._instances[key] = (ref, instance)
        return instance


def _ref(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:  # an object without weakref support: keep it alive instead
        return obj


def _deref(ref: Any) -> Any:
    return ref() if isinstance(ref, weakref.ref) else ref


class GenerateState(metaclass=_OnePerArgs):
    """Per-``args`` generation state, as Miles's ``GenerateState(args)``.

    - ``tokenizer``: the running Trainer's tokenizer; outside a Trainer,
      ``AutoTokenizer.from_pretrained(args.hf_checkpoint)``.
    - ``semaphore``: ``sglang_server_concurrency`` slots, for generate functions that throttle
      themselves (the default rollout already bounds concurrency).
    - ``sampling_params``: the SGLang dict Miles builds from the ``rollout_*`` settings.
    - ``aborted`` / ``reset()``: Miles's abort flag. The default rollout aborts through the engine
      (in-flight requests return ``finish_reason=abort``), so the flag stays False unless set here.
    """

    def __init__(self, args: Config) -> None:
        self._args_ref: Any = _ref(args)
        self._tokenizer: Any = None
        self.processor: Any = None
        self.semaphore = asyncio.Semaphore(int(args.sglang_server_concurrency))
        self.sampling_params: dict[str, Any] = {
            "temperature": args.rollout_temperature,
            "top_p": args.rollout_top_p,
            "top_k": args.rollout_top_k,
            "max_new_tokens": args.rollout_max_response_len,
            "stop": args.rollout_stop,
            "stop_token_ids": args.rollout_stop_token_ids,
            "skip_special_tokens": args.rollout_skip_special_tokens,
            "no_stop_trim": True,
            "spaces_between_special_tokens": False,
        }
        if getattr(args, "sglang_enable_deterministic_inference", False):
            self.group_sampling_seeds = [args.rollout_seed + i for i in range(args.n_samples_per_prompt)]
        self.dp_rank = 0
        self.reset()

    @property
    def args(self) -> Config:
        """The ``args`` this state was built for."""
        args: Config | None = _deref(self._args_ref)
        if args is None:
            raise RuntimeError("GenerateState: its args object no longer exists")
        return args

    @property
    def tokenizer(self) -> Any:
        """Resolved on first use, so a state built outside a rollout still finds the Trainer's."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer(self.args)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._tokenizer = value

    @staticmethod
    def _load_tokenizer(args: Config) -> Any:
        ctx = _context()
        if ctx is not None and ctx.tokenizer is not None:
            return ctx.tokenizer
        checkpoint = getattr(args, "hf_checkpoint", None)
        if not checkpoint:
            raise ValueError(
                "GenerateState(args) needs a tokenizer: run inside a Trainer, or set args.hf_checkpoint"
            )
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)

    def reset(self) -> None:
        """Clear the abort flag and the pending bookkeeping."""
        self.remaining_batch_size = 0
        self.pendings: set[asyncio.Task[Any]] = set()
        self.aborted = False

    @contextlib.contextmanager
    def dp_rank_context(self) -> Iterator[int]:
        """Miles balances requests over data-parallel ranks; one engine here, so always rank 0."""
        yield 0

    @staticmethod
    def clear_instances() -> None:
        """Forget every GenerateState (tests)."""
        _OnePerArgs._instances.clear()


def get_model_url(args: Any, model_name: str, endpoint: str = "/generate") -> str:
    """The router URL of ``model_name`` from ``args.sglang_model_routers``, else the default router."""
    routers = getattr(args, "sglang_model_routers", None)
    if routers and model_name in routers:
        ip, port = routers[model_name]
        return f"http://{ip}:{port}{endpoint}"
    return f"http://{args.sglang_router_ip}:{args.sglang_router_port}{endpoint}"


def _engine_params(sampling_params: dict[str, Any]) -> SamplingParams:
    params: dict[str, Any] = {}
    for key, value in sampling_params.items():
        if value is None or key in _TEXT_ONLY_KEYS:
            continue
        if key not in _SAMPLING_KEYS:
            raise ValueError(
                f"generate(): sampling_params key {key!r} is not supported by the miles_sdk engine "
                f"(supported: {sorted(_SAMPLING_KEYS)})"
            )
        params[key] = value
    return cast(SamplingParams, params)


async def generate(args: Config, sample: Sample, sampling_params: dict[str, Any]) -> Sample:
    """Miles's default single-turn generate: continue ``sample`` on the engine and append the new
    tokens, text, log-probs and status. Inside a Trainer the engine is called directly; outside
    one, ``/generate`` on ``args.sglang_router_ip:port`` is POSTed as Miles does."""
    if sample.status not in (Sample.Status.PENDING, Sample.Status.ABORTED):
        raise ValueError(
            f"generate(): sample index={sample.index} has status {sample.status.value}; "
            "expected pending or aborted"
        )
    if _context() is not None:
        return await generate_with_engine(args, sample, _engine_params(sampling_params))
    return await _generate_over_http(args, sample, dict(sampling_params))


async def _generate_over_http(args: Config, sample: Sample, sampling_params: dict[str, Any]) -> Sample:
    if not sample.tokens:
        tokenizer = GenerateState(args).tokenizer
        sample.tokens = list(tokenizer.encode(sample.prompt, add_special_tokens=False))
        sample.response_length = 0
    budget = (
        int(sampling_params.get("max_new_tokens", args.rollout_max_response_len)) - sample.response_length
    )
    if budget <= 0:
        sample.status = Sample.Status.TRUNCATED
        return sample
    sampling_params["max_new_tokens"] = budget
    payload = {"input_ids": sample.tokens, "sampling_params": sampling_params, "return_logprob": True}
    output = await post(get_model_url(args, "default"), payload)
    pairs = output["meta_info"].get("output_token_logprobs") or []
    new_tokens = [int(p[1]) for p in pairs]
    sample.tokens = sample.tokens + new_tokens
    sample.response_length += len(new_tokens)
    sample.response += output.get("text", "")
    if sample.loss_mask is not None:
        sample.loss_mask = sample.loss_mask + [1] * len(new_tokens)
    sample.rollout_log_probs = (sample.rollout_log_probs or []) + [float(p[0]) for p in pairs]
    version = output["meta_info"].get("weight_version")
    if version is not None and str(version).isdigit():
        sample.weight_versions.append(int(version))
    finish = output["meta_info"]["finish_reason"]["type"]
    sample.status = {"length": Sample.Status.TRUNCATED, "abort": Sample.Status.ABORTED}.get(
        finish, Sample.Status.COMPLETED
    )
    return sample


async def generate_and_rm(
    args: Config, sample: Sample, sampling_params: dict[str, Any], evaluation: bool = False
) -> Sample | list[Sample]:
    """Generate one sample (per-sample ``generate_function_path``, else the custom generate
    function, else :func:`generate`) under the state's semaphore, then score it unless
    ``group_rm`` (the group is scored together) or it was aborted."""
    if sample.status in (Sample.Status.COMPLETED, Sample.Status.TRUNCATED):
        return sample
    state = GenerateState(args)
    async with state.semaphore:
        if state.aborted:
            sample.status = Sample.Status.ABORTED
            return sample
        path = sample.generate_function_path or getattr(args, "custom_generate_function_path", None)
        ctx = _context()
        fn: Any = load_function(path) if path else (ctx.generate_fn if ctx is not None else None) or generate
        result: Sample | list[Sample] = await fn(args, sample, sampling_params)
    if args.group_rm:
        return result
    if isinstance(result, list):
        if any(s.status is Sample.Status.ABORTED for s in result):
            return result
        need = [s for s in result if s.reward is None]
        rewards = await batched_async_rm(args, need) if need else []
        for s, reward in zip(need, rewards or [], strict=True):
            s.reward = reward
        return result
    if result.status is not Sample.Status.ABORTED and result.reward is None:
        result.reward = await async_rm(args, result)
    return result


async def generate_and_rm_group(
    args: Config, group: list[Sample], sampling_params: dict[str, Any], evaluation: bool = False
) -> list[Sample]:
    """:func:`generate_and_rm` for every sample of a group, concurrently (seeded per index in
    deterministic mode); with ``group_rm`` the group is then scored in one batched call."""
    state = GenerateState(args)
    if state.aborted:
        return group
    seeds = getattr(state, "group_sampling_seeds", None)

    def params_for(i: int) -> dict[str, Any]:
        params = dict(sampling_params)
        if seeds is not None:
            params["sampling_seed"] = seeds[i]
        return params

    results = await asyncio.gather(
        *(generate_and_rm(args, s, params_for(i), evaluation=evaluation) for i, s in enumerate(group))
    )
    out = [s for r in results for s in (r if isinstance(r, list) else [r])]
    if not state.aborted and args.group_rm:
        rewards = await batched_async_rm(args, out)
        for s, reward in zip(out, rewards or [], strict=True):
            s.reward = reward
    return out


def generate_rollout(
    args: Config, rollout_id: int, data_source: DataSource, evaluation: bool = False
) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """Miles's default rollout, called synchronously as Miles's is: miles_sdk's default rollout
    (with the Trainer's generate, reward and filter hooks) run to completion.

    Call it from a plain ``def`` rollout function (the Trainer runs those off its event loop); from
    ``async def`` code, ``await miles_sdk.rollout.generate_rollout(...)`` instead.
    """
    return run_blocking(_sdk_generate_rollout(args, rollout_id, data_source, evaluation))
