"""The embedded inference engine: generation in-process, on the policy's own live weights.

Concurrent ``generate`` calls are gathered by a scheduler task on the running event loop into
one batch of at most ``max_batch_size`` slots. Each scheduler tick runs one model step (prefill of
newly admitted prompts, or one decode token for every running slot) in a worker thread, so the
loop (the Trainer's, or Jupyter's) stays responsive; finished slots are refilled from the queue
on the next tick. Stop strings, stop ids and budgets are checked on the host after every step.

The engine shares the trainer's ``nn.Module``. On the generic path an optimizer step changes what
it samples at once; the fast path (CUDA, Llama-style models) keeps fused copies of the q/k/v and
gate/up weights, so it samples from the new weights only after :meth:`EmbeddedEngine.update_weights`
(which re-fuses them in about 1 ms for a 0.5B model). Call it after every optimizer step, as the
loop's weight-sync stage does. Each step runs under ``torch.inference_mode`` with dropout off, and the
module's train/eval flags are restored afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import heapq
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from miles_sdk.engines._fast import FastRunner, fast_path_unsupported
from miles_sdk.engines._requests import (
    Batch,
    OnDone,
    ParsedParams,
    Request,
    check_prompt,
    decode_texts,
    new_request,
    parse_params,
)
from miles_sdk.engines._runner import HFRunner, ModelRunner, StepResult
from miles_sdk.engines.base import EngineOutput, FinishReason, SamplingParams

__all__ = ["EmbeddedEngine"]


class EmbeddedEngine:
    """In-process :class:`~miles_sdk.engines.base.InferenceEngine` over a transformers causal LM.

    Args:
        model: the policy. Its parameters are read live (no copy) when ``device`` is its device.
        tokenizer: used for EOS ids, stop strings and the returned text.
        max_batch_size: the most requests decoded together; the rest wait in FIFO order.
        device: where to generate. Defaults to the model's device. A different device keeps a
            copy of the model there, refreshed by :meth:`update_weights`.
        dtype: the inference dtype. Defaults to the model's. A different one also keeps a copy,
            e.g. bf16 decoding for a policy trained with fp32 master weights; the copy is
            refreshed (and cast) by :meth:`update_weights`.
        own_weights: keep a copy even on the same device and dtype, so the engine samples from
            the weights of the last :meth:`update_weights` only (``update_weights_interval > 1``).
        seed: seeds requests that carry no ``sampling_seed`` (request ``i`` gets ``seed + i``).
        default_max_new_tokens: the budget when ``max_new_tokens`` is unset (SGLang's is 128).
        fast_path: use the static-cache runner with fused kernels and CUDA graphs. ``None``
            picks it on CUDA when the architecture is supported (Qwen2/Qwen3/Llama/Mistral),
            else the generic transformers path; ``True`` insists (error if unsupported).
        max_seq_len: the fast path's initial per-slot cache length (prompt + response); the
            cache grows when an admitted request needs more, up to the model's context.
        decode_chunk: fast-path decode steps run per host sync; stops are checked after each
            chunk (tokens past a stop are discarded, so output is unchanged).
        pipeline: on the fast path, launch the next decode chunk before the host reads the
            previous one, so the GPU keeps working during stop checks and slot refills (same
            output; off: one chunk at a time).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 64,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        own_weights: bool = False,
        seed: int = 0,
        default_max_new_tokens: int = 128,
        fast_path: bool | None = None,
        max_seq_len: int = 4096,
        decode_chunk: int = 16,
        pipeline: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"EmbeddedEngine: max_batch_size must be >= 1, got {max_batch_size}")
        self._source = model
        first = next(model.parameters())
        self.device = device if device is not None else first.device
        if self.device == first.device and (dtype is None or dtype == first.dtype) and not own_weights:
            self._model = model
        else:
            self._model = copy.deepcopy(model)
            torch.nn.Module.to(self._model, device=self.device, dtype=dtype or first.dtype)
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.default_max_new_tokens = default_max_new_tokens
        self._eos_ids = _eos_ids(model, tokenizer)
        self._vocab = int(model.config.get_text_config(decoder=True).vocab_size)
        self._runner: ModelRunner
        unsupported = fast_path_unsupported(self._model)
        if fast_path and unsupported:
            raise ValueError(f"EmbeddedEngine(fast_path=True): {unsupported}")
        if fast_path or (fast_path is None and self.device.type == "cuda" and unsupported is None):
            self._runner = FastRunner(
                self._model, self.device, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                decode_chunk=decode_chunk, pipeline=pipeline,
            )  # fmt: skip
        else:
            self._runner = HFRunner(self._model, self.device)
        self.fast_path = isinstance(self._runner, FastRunner)
        self._lock = threading.Lock()
        # One long-lived worker thread for every model step, whatever event loop calls us:
        # cuBLAS/cuDNN handles are per thread, and a fresh thread per asyncio.run (to_thread's
        # default executor) re-creates them, measured at ~65 ms per call on an H200.
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="miles-engine")
        weakref.finalize(self, self._worker.shutdown, wait=False)
        self.stats: dict[str, float] = defaultdict(float)
        """Scheduler timings: ``step_wall_s`` (model steps, worker thread included) and
        ``absorb_s`` (host stop checks). The fast runner adds its own in ``runner_stats``."""
        self._version = 0
        self._next_seed = seed
        # Event-loop state, rebuilt when generate() is first called from a new loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._waiting: deque[Request] = deque()
        self._active: dict[int, Request] = {}
        self._free: list[int] = list(range(max_batch_size))
        """A heap: the lowest free slot goes first, so the fast path's batch stays dense."""
        self._to_release: list[int] = []
        self._stepping: asyncio.Future[StepResult] | None = None

    # -- InferenceEngine -----------------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        """Monotonic version of the weights the engine samples from."""
        return self._version

    def close(self) -> None:
        """Join the worker thread (after the step in flight, if any). Call it once the event loop
        that drives the scheduler has stopped; the Trainer's close() does. Idempotent."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    def update_weights(self, version: int | None = None) -> None:
        """Sample from the trainer's current weights from the next step on; bump the version.

        With the live module shared this is a version bump; a copy on another device is refreshed.
        """
        if version is not None and version < self._version:
            raise ValueError(f"EmbeddedEngine.update_weights: version {version} < current {self._version}")
        with self._lock:
            if self._model is not self._source:
                with torch.no_grad():
                    for dst, src in zip(self._model.parameters(), self._source.parameters(), strict=True):
                        dst.copy_(src)
            self._runner.weights_updated()
        self._version = self._version + 1 if version is None else version

    def release_memory_occupation(self) -> None:
        """SGLang's name: free the fast path's KV cache, fused weight copies and CUDA graphs until
        the next request (``offload_rollout``: the Trainer calls it after each rollout, so training
        has that memory). The next request rebuilds them from the weights of that moment and
        captures graphs again. A no-op on the generic path, which keeps no cache between requests.
        Refused while a request is running."""
        live = [r for r in [*self._waiting, *self._active.values()] if not (r.cancelled or r.done)]
        if live:
            raise RuntimeError(
                f"EmbeddedEngine.release_memory_occupation: {len(live)} requests are still running"
            )
        release = getattr(self._runner, "release_memory", None)
        if callable(release):
            with self._lock:
                release()

    def get_weights_by_name(self, name: str, truncate_size: int = 100) -> list[Any]:
        """SGLang's ``get_weights_by_name``: the first rows of a parameter of the module the engine
        samples from (its copy, when it keeps one). The Trainer's sync check compares them."""
        from miles_sdk.engines.weight_sync import weights_by_name

        with self._lock:
            return weights_by_name(self._model, name, truncate_size)

    def load_weights_from_disk(self, model_path: str) -> None:
        """Load a ``save_pretrained`` directory into the engine's source module (for a server that
        owns its model); :meth:`update_weights` then publishes them."""
        from miles_sdk.engines.weight_sync import load_into_module

        with self._lock:
            load_into_module(self._source, model_path)

    @property
    def weights_device(self) -> torch.device:
        """Where the engine's source weights live (a weight-update group receives them there)."""
        return next(self._source.parameters()).device

    def load_named_weights(self, tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(name, tensor)`` pairs into the engine's source module by parameter name (cast
        to its dtype and device): SGLang's ``/update_weights_from_distributed`` on a server that
        owns its model; :meth:`update_weights` then publishes them. Raises KeyError naming a name
        or shape the module does not have (before copying anything)."""
        with self._lock:
            targets = dict(self._source.state_dict(keep_vars=True))
            for name, tensor in tensors:
                dst = targets.get(name)
                if dst is None:
                    raise KeyError(f"{name!r} is not a parameter of {type(self._source).__name__}")
                if tuple(dst.shape) != tuple(tensor.shape):
                    raise KeyError(f"{name!r} has shape {tuple(tensor.shape)}, the engine's is {tuple(dst.shape)}")
            with torch.no_grad():
                for name, tensor in tensors:
                    targets[name].copy_(tensor.to(device=targets[name].device, dtype=targets[name].dtype))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume sampling exactly: the next default request seed, the
        weight version and, when the engine keeps its own copy of the weights, that copy. With
        ``update_weights_interval > 1`` the copy lags the trained weights, and a resumed run must
        sample from the same stale copy as the uninterrupted one (refreshing it from the loaded
        policy would sample from weights that run never used)."""
        state: dict[str, Any] = {"next_seed": self._next_seed, "weight_version": self._version}
        if self._model is not self._source:
            with self._lock:
                state["weights"] = {
                    name: tensor.detach().to("cpu", copy=True) for name, tensor in self._model.state_dict().items()
                }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Saved weights load into the engine's own copy (cast to its
        device and dtype); an engine reading the live policy has no copy to restore and ignores them."""
        self._next_seed = int(state["next_seed"])
        weights = state.get("weights")
        if weights is not None and self._model is not self._source:
            with self._lock:
                self._model.load_state_dict(weights)
                self._runner.weights_updated()
        # The version never goes back: samples are labelled with it.
        self._version = max(self._version, int(state.get("weight_version", 0)))

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        """Continue ``input_ids``; batched with every other request in flight on this loop."""
        return (await self.generate_batch([input_ids], [sampling_params]))[0]

    async def generate_batch(
        self,
        input_ids: Sequence[Sequence[int]],
        sampling_params: Sequence[SamplingParams],
        *,
        on_done: OnDone | None = None,
    ) -> list[EngineOutput]:
        """:meth:`generate` for several requests at once (SGLang's batch form of ``generate``):
        ``sampling_params[i]`` goes with ``input_ids[i]``; the outputs come back in that order.

        The same as that many concurrent :meth:`generate` calls made in this order (default seeds
        are handed out in it), queued in one call and answered in one wake-up once the last one
        finishes. ``on_done(i, output)``, if given, is called as each request finishes (e.g. to
        free a concurrency slot at once). A request that fails validation raises before any is
        queued. Cancelling the call cancels every request still running.
        """
        batch, requests = self._submit(input_ids, sampling_params, progress=None, on_done=on_done)
        try:
            return await batch.future
        finally:
            live = [r for r in requests if not r.done]
            if live:
                for req in live:
                    req.cancelled = True
                self._wake.set()

    async def generate_stream(
        self, input_ids: Sequence[int], sampling_params: SamplingParams
    ) -> AsyncIterator[list[int] | EngineOutput]:
        """:meth:`generate`, reporting tokens as the scheduler receives them: yields lists of new
        token ids (after each model step that produced some for this request; a step decodes one
        token, or a chunk of them on the fast path), then the finished :class:`EngineOutput`, whose
        ``token_ids`` are everything yielded plus any tail. Closing the iterator early cancels the
        request, as cancelling :meth:`generate` does."""
        progress = asyncio.Event()
        batch, requests = self._submit([input_ids], [sampling_params], progress=progress)
        if not requests:  # answered without running (no budget, or no room for a response)
            yield (await batch.future)[0]
            return
        req = requests[0]
        sent = 0
        try:
            while not batch.future.done():
                waiter: asyncio.Future[Any] = asyncio.ensure_future(progress.wait())
                either: list[asyncio.Future[Any]] = [waiter, batch.future]
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                progress.clear()
                if batch.future.done():
                    break
                if len(req.tokens) > sent:
                    new = list(req.tokens[sent:])
                    sent += len(new)
                    yield new
            yield (await batch.future)[0]
        finally:
            req.cancelled = not req.done
            if req.cancelled:
                self._wake.set()

    def _submit(
        self,
        input_ids: Sequence[Sequence[int]],
        sampling_params: Sequence[SamplingParams],
        progress: asyncio.Event | None,
        on_done: OnDone | None = None,
    ) -> tuple[Batch, list[Request]]:
        """Queue requests (the scheduler picks them up); those with nothing to run are answered
        at once. Returns the batch and the queued requests."""
        n = len(input_ids)
        if len(sampling_params) != n:
            raise ValueError(
                f"generate_batch: {n} input_ids but {len(sampling_params)} sampling_params; pass one per request"
            )
        self._ensure_scheduler()
        batch = Batch(asyncio.get_running_loop().create_future(), n, on_done)
        limit = self._runner.max_context
        queued: list[Request] = []
        answered: list[tuple[int, EngineOutput]] = []
        parsed: dict[int, ParsedParams] = {}  # by id: a batch often shares one params dict
        for i, (ids, params) in enumerate(zip(input_ids, sampling_params, strict=True)):
            seed = self._next_seed
            self._next_seed += 1
            if len(ids) >= limit:
                # As SGLang answers: this request alone is aborted, with the reason; the rollout goes on.
                answered.append((i, self._too_long(len(ids), limit)))
                continue
            try:
                prompt = check_prompt(ids, vocab_size=self._vocab, max_context=limit)
                spec = parsed.get(id(params))
                if spec is None:
                    spec = parsed[id(params)] = parse_params(
                        params, eos_ids=self._eos_ids, default_max_new_tokens=self.default_max_new_tokens
                    )
            except (TypeError, ValueError) as exc:
                if n > 1:
                    exc.add_note(f"in request {i} of a generate_batch of {n}")
                raise
            req = new_request(prompt, spec, default_seed=seed, max_context=limit, batch=batch, index=i)
            if req.max_new_tokens == 0:
                answered.append((i, self._output(req, FinishReason.LENGTH)))
                continue
            req.progress = progress
            queued.append(req)
        if queued:
            self._waiting.extend(queued)
            self._wake.set()
        for i, out in answered:
            batch.put(i, out)
        return batch, queued

    def _too_long(self, length: int, limit: int) -> EngineOutput:
        return EngineOutput(
            token_ids=[],
            log_probs=[],
            finish_reason=FinishReason.ABORT,
            weight_version=self._version,
            text="",
            finish_message=(
                f"The input ({length} tokens) is longer than the model's context length "
                f"({limit} tokens): no room for a response."
            ),
        )

    async def abort_all(self) -> None:
        """Resolve every queued and running request now with ABORT and the tokens it has."""
        self._finish_all([(req, FinishReason.ABORT) for req in [*self._waiting, *self._active.values()]])
        self._waiting.clear()
        self._wake.set()
        # The model step already running on the worker thread uses the shared module: let it end
        # before the caller (the trainer) starts using the weights.
        stepping = self._stepping
        if stepping is not None and not stepping.done():
            await asyncio.wait([stepping])

    def reset_stats(self) -> None:
        """Zero :attr:`stats` and the runner's counters (e.g. after a warm-up)."""
        self.stats.clear()
        runner_stats = getattr(self._runner, "stats", None)
        if isinstance(runner_stats, dict):
            runner_stats.clear()

    def runner_stats(self) -> dict[str, float]:
        """The model runner's own counters (prefill/decode seconds, steps), if it keeps any."""
        return dict(getattr(self._runner, "stats", {}))

    # -- scheduler -----------------------------------------------------------------------------

    def _ensure_scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        if self._loop is not loop:
            # The old loop (an earlier asyncio.run) is gone with its requests: start clean.
            self._waiting.clear()
            self._active.clear()
            self._to_release.clear()
            self._free = list(range(self.max_batch_size))
            with self._lock:
                self._runner.reset()
            self._wake = asyncio.Event()
        self._loop = loop
        self._task = loop.create_task(self._schedule(), name="EmbeddedEngine.scheduler")

    async def _schedule(self) -> None:
        try:
            while True:
                self._reap()
                self._admit()
                if not self._active:
                    self._wake.clear()
                    if not self._waiting:
                        await self._wake.wait()
                    continue
                budget = max(r.max_new_tokens - len(r.tokens) for r in self._active.values())
                t0 = time.perf_counter()
                self._stepping = asyncio.get_running_loop().run_in_executor(self._worker, self._step, budget)
                try:
                    result = await self._stepping
                finally:
                    self._stepping = None
                t1 = time.perf_counter()
                self._absorb(result)
                self.stats["step_wall_s"] += t1 - t0
                self.stats["absorb_s"] += time.perf_counter() - t1
        except Exception as exc:  # a model error fails every request instead of hanging them
            for req in [*self._waiting, *self._active.values()]:
                if not req.done:
                    req.done = True
                    req.batch.fail(exc)
            self._waiting.clear()
            self._active.clear()
            raise

    def _step(self, max_tokens: int) -> StepResult:
        with self._lock:
            flipped = [m for m in self._model.modules() if m.training]
            # What Module.train(False) sets, without nn.Module.__setattr__'s parameter/buffer/child
            # lookups: 4x cheaper a module, paid on every step (120 -> 30 us for the demo's policy).
            for m in flipped:
                _set_attr(m, "training", False)
            try:
                with torch.inference_mode():
                    return self._runner.step(max_tokens)
            finally:
                for m in flipped:
                    _set_attr(m, "training", True)

    def _reap(self) -> None:
        """Free slots of finished or cancelled requests (only between steps: the runner is idle)."""
        for slot, req in list(self._active.items()):
            if req.cancelled or req.done:
                del self._active[slot]
                self._to_release.append(slot)
        while self._waiting and (self._waiting[0].cancelled or self._waiting[0].done):
            self._waiting.popleft()
        for slot in self._to_release:
            self._runner.release(slot)
            heapq.heappush(self._free, slot)
        self._to_release.clear()

    def _admit(self) -> None:
        while self._waiting and self._free:
            req = self._waiting.popleft()
            if req.cancelled or req.done:
                continue
            # The fast path's KV cache grows to what this request needs (prompt + budget): a
            # budget is never cut short by a cache sized for other requests.
            need = min(len(req.prompt) + req.max_new_tokens, req.max_context)
            with self._lock:
                room = self._runner.reserve(need)
            if not room:
                capacity = getattr(self._runner, "capacity", None)
                self._finish(
                    req,
                    FinishReason.ABORT,
                    message=(
                        f"the KV cache could not grow to {need} positions per slot (now {capacity}; out "
                        f"of device memory for {self.max_batch_size} slots): lower max_engine_batch_size "
                        "or the response budget"
                    ),
                )
                continue
            slot = heapq.heappop(self._free)
            self._active[slot] = req
            self._runner.admit(slot, req.prompt, req.row)

    def _absorb(self, result: StepResult) -> None:
        finished: list[tuple[Request, FinishReason]] = []
        for slot, (tokens, logps) in result.items():
            req = self._active.get(slot)
            if req is None or req.done or req.cancelled:
                continue  # aborted while the step ran (its answer is already out), or cancelled
            reason = req.accept_many(tokens, logps, self.tokenizer)
            if req.progress is not None:
                req.progress.set()
            if reason is not None:
                finished.append((req, reason))
        self._finish_all(finished)

    def _finish_all(self, finished: list[tuple[Request, FinishReason]]) -> None:
        """Finish requests; those that finish together (a whole GRPO batch, often) are
        detokenized in one call per ``skip_special_tokens`` value."""
        finished = [(req, reason) for req, reason in finished if not (req.done or req.cancelled)]
        for skip in (True, False):
            group = [(req, reason) for req, reason in finished if bool(req.skip_special_tokens) == skip]
            texts = decode_texts(self.tokenizer, [req.tokens for req, _ in group], skip) if group else []
            for (req, reason), text in zip(group, texts, strict=True):
                self._finish(req, reason, text)

    def _finish(
        self, req: Request, reason: FinishReason, text: str | None = None, *, message: str | None = None
    ) -> None:
        if not (req.done or req.cancelled):  # a cancelled request's caller is gone
            req.finish(self._output(req, reason, text, message=message))

    def _output(
        self, req: Request, reason: FinishReason, text: str | None = None, *, message: str | None = None
    ) -> EngineOutput:
        if text is None:
            text = decode_texts(self.tokenizer, [req.tokens], req.skip_special_tokens)[0]
        # The request's own lists, not copies: a finished request is never appended to again.
        return EngineOutput(
            token_ids=req.tokens,
            log_probs=req.log_probs,
            finish_reason=reason,
            weight_version=self._version,
            text=text,
            finish_message=message,
        )


_set_attr = object.__setattr__


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list | tuple):
        ids.update(int(i) for i in gen_eos)
    return frozenset(ids)
