"""Torch training backend over a transformers causal LM: log-probs, AdamW steps, checkpoint state.

Log-probs are computed from the final hidden states in chunks over tokens
(:func:`miles_sdk.algo.log_probs_and_entropy`), so the full ``[tokens x vocab]`` float32 logits
are never materialised, except for a custom ``LossFn``, whose Miles signature takes logits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from miles_sdk._policy import build_reference, disable_dropout
from miles_sdk.algo import compute_loss, log_probs_and_entropy, loss_params
from miles_sdk.algo._device import Rows
from miles_sdk.backends._batching import (
    SequenceRows,
    chunks,
    host_to_device,
    micro_batch,
    micro_batches,
    token_budget_chunks,
)
from miles_sdk.backends._compile import compiled_layers
from miles_sdk.backends._memory import oom_phase, resolve_gradient_checkpointing
from miles_sdk.backends._varlen import attention_implementation, decoder_rows, has_padding, packing_enabled
from miles_sdk.backends.base import LogProbModel
from miles_sdk.backends.critic import Critic
from miles_sdk.backends.lr_schedule import LRSchedule, optimizer_steps_per_rollout
from miles_sdk.backends.offload import OffloadedOptimizer
from miles_sdk.backends.optim import PolicyOptimizer, wants_master_weights
from miles_sdk.config import Config
from miles_sdk.hooks import (
    BeforeLogProbHookFn,
    BeforeTrainStepHookFn,
    LossFn,
    PGLossReducer,
    TISFn,
)
from miles_sdk.lora.base import TrainableAdapter
from miles_sdk.stages import MicroBatch, TrainBatch
from miles_sdk.types import Metrics, TrainData

__all__ = ["TorchBackend"]


class TorchBackend:
    """Single-process torch backend. ``model`` is trained in place (the engine may share it)."""

    def __init__(
        self,
        args: Config,
        model: nn.Module,
        *,
        ref_model: nn.Module | None = None,
        loss_fn: LossFn | None = None,
        tis_fn: TISFn | None = None,
        pg_loss_reducer: PGLossReducer | None = None,
        before_log_prob_hook: BeforeLogProbHookFn | None = None,
        before_train_step_hook: BeforeTrainStepHookFn | None = None,
        adapter: TrainableAdapter | None = None,
        critic: Critic | None = None,
        device: torch.device | None = None,
    ) -> None:
        """``adapter``: with LoRA, the trained adapter (the model's base is frozen): the reference
        is then this model with its adapter off, and checkpoints hold the adapter alone.
        ``critic``: ppo's critic when the caller builds it (FSDP ranks shard theirs); by default
        it is built here from the policy. ``device``: where the passes compute; by default the
        parameters' device (an FSDP rank with CPU offload keeps its parameters in host memory
        but computes on its GPU, so it passes that)."""
        self.args = args
        self.adapter = adapter
        self._model = model
        self.device = device if device is not None else next(model.parameters()).device
        self.ref_model = ref_model
        # Also here for models that did not come through build_policy (a no-op when they did).
        disable_dropout(model)
        if ref_model is None and args.needs_reference_model:
            # Built here only without the Trainer (which passes its Policy.load_reference).
            self.ref_model = model if adapter is not None else build_reference(args, model)
        if self.ref_model is not None:
            disable_dropout(self.ref_model, role="reference")
        self.loss_fn = loss_fn
        self.tis_fn = tis_fn
        self.pg_loss_reducer = pg_loss_reducer
        self.before_log_prob_hook = before_log_prob_hook
        self.before_train_step_hook = before_train_step_hook
        self._loss_params = loss_params(args)
        trained = [p for p in model.parameters() if p.requires_grad]
        self.optim = (
            OffloadedOptimizer(args, trained, lr=args.lr)  # masters + AdamW state in host memory
            if args.optimizer_cpu_offload
            else PolicyOptimizer(args, trained, lr=args.lr, master_weights=wants_master_weights(args, model))
        )
        self.optimizer = self.optim.optimizer
        self.lr_schedule = LRSchedule(args)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_schedule)
        self._pack = packing_enabled(args.pack_sequences, _decoder(model), self.device)
        self._pack_ref = (
            self._pack
            and self.ref_model is not None
            and packing_enabled(args.pack_sequences, _decoder(self.ref_model), self.device)
        )
        if critic is None and args.advantage_estimator == "ppo":
            critic = Critic(args, model, pack=self._pack)
        self.critic = critic
        self.step_id = 0
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        # Gradient checkpointing: around the compiled layers when they are compiled (so the
        # recompute calls them too; see _compile.py), else the model's own. auto is decided here,
        # with the weights, masters and reference resident (_memory.py).
        self.gradient_checkpointing = resolve_gradient_checkpointing(args, model, self.device, optim=self.optim)
        enable_checkpointing = getattr(model, "gradient_checkpointing_enable", None)
        model_checkpointing = (
            enable_checkpointing if self.gradient_checkpointing and callable(enable_checkpointing) else None
        )
        self._compiled = compiled_layers(
            args.compile_model,
            _decoder(model),
            self.device,
            checkpoint=model_checkpointing is not None,
            on_eager=model_checkpointing,
        )
        if model_checkpointing is not None and self._compiled is None:
            model_checkpointing()

    @property
    def model(self) -> nn.Module:
        return self._model

    def set_num_rollout(self, num_rollout: int) -> None:
        """The run's length in rollouts, once the Trainer knows it: the learning-rate decay spans
        its optimizer steps (unless lr_decay_iters is set)."""
        self.lr_schedule.set_total_steps(num_rollout * optimizer_steps_per_rollout(self.args))
        # LambdaLR sets the rate of the coming step only on step(): refresh it for the new length.
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * self.lr_schedule(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # ---- forward passes ------------------------------------------------------------------------

    def _temperature(self) -> float:
        return self.args.rollout_temperature if self.args.rollout_temperature > 0 else 1.0

    def _packs(self, model: nn.Module, tokens: list[list[int]]) -> bool:
        return (self._pack if model is self._model else self._pack_ref) and has_padding(tokens)

    def _forward_hidden(self, model: nn.Module, tokens: list[list[int]]) -> SequenceRows:
        """The last hidden states per token (packed or right-padded, per pack_sequences)."""
        compiled = self._compiled if model is self._model else None
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            return decoder_rows(
                _decoder(model),
                tokens,
                self.device,
                pack=self._packs(model, tokens),
                run=compiled.run if compiled is not None else None,
            )

    @contextlib.contextmanager
    def _train_scope(self, batch: MicroBatch) -> Iterator[None]:
        """Held over a micro-batch's forward and backward: gradient checkpointing recomputes the
        layers in backward, and they must read the same attention implementation and call the
        same compiled layers then as in the forward."""
        with contextlib.ExitStack() as stack:
            if self._packs(self._model, batch.token_lists):
                stack.enter_context(attention_implementation(_decoder(self._model)))
            if self._compiled is not None:
                stack.enter_context(self._compiled.active())
            yield

    def _response_log_probs(
        self, model: nn.Module, tokens: list[list[int]], response_lengths: list[int], *, with_entropy: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        logp, entropy = self._flat_response_log_probs(model, tokens, response_lengths, with_entropy=with_entropy)
        # Rows: the loss joins them again for free (no cat over the samples)
        return Rows(logp, response_lengths), (Rows(entropy, response_lengths) if entropy is not None else None)

    def _flat_response_log_probs(
        self, model: nn.Module, tokens: list[list[int]], response_lengths: list[int], *, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs (and entropy) of every response token, concatenated over the samples."""
        hidden = self._forward_hidden(model, tokens)
        rows = hidden.all_scoring_rows([len(seq) for seq in tokens], response_lengths)
        targets = [t for seq, r in zip(tokens, response_lengths) for t in seq[len(seq) - r :]]
        weight = _lm_head(model).weight
        logp, entropy = log_probs_and_entropy(
            rows,
            weight,
            host_to_device(torch.tensor(targets, dtype=torch.long), self.device),
            temperature=self._temperature(),
            chunk_size=self.args.log_probs_chunk_size,
            with_entropy=with_entropy,
        )
        return logp, entropy

    @torch.no_grad()
    def _forward_batches(self, data: TrainData) -> list[list[int]]:
        """Batches of a forward-only pass: the token budget with use_dynamic_batch_size (no grads,
        so twice the budget fits), else at least 8 samples."""
        everything = list(range(len(data["tokens"])))
        if self.args.use_dynamic_batch_size and self.args.max_tokens_per_gpu:
            lengths = [len(t) for t in data["tokens"]]
            return list(token_budget_chunks(everything, lengths, 2 * self.args.max_tokens_per_gpu))
        return list(chunks(len(everything), max(self.args.micro_batch_size, 8)))

    def compute_log_probs(self, data: TrainData, *, which: LogProbModel) -> list[torch.Tensor]:
        model = self._model if which == "actor" else self.ref_model
        if model is None:
            raise RuntimeError("reference log-probs requested but no reference model is loaded")
        if self.before_log_prob_hook is not None:
            self.before_log_prob_hook(self.args, model, "" if which == "actor" else "ref_")
        was_training = model.training
        model.eval()
        out: list[torch.Tensor] = []
        # No autograd graph: it would hold a whole forward's activations per batch (on W1 this
        # pass set the step's peak memory: 79 GiB against 34 GiB for the rest of the step).
        try:
            for idx in self._forward_batches(data):
                with torch.no_grad(), self._model_scope(which, model):
                    lengths = [data["response_lengths"][i] for i in idx]
                    logp, _ = self._flat_response_log_probs(
                        model, [data["tokens"][i] for i in idx], lengths, with_entropy=False
                    )
                # One device-to-host copy per batch: per sample, each was a stream synchronisation.
                out.extend(torch.split(logp.float().cpu(), lengths))
        finally:
            model.train(was_training)
        return out

    def _model_scope(self, which: LogProbModel, model: nn.Module) -> contextlib.AbstractContextManager[object]:
        """With LoRA the reference is this very model with its adapter off."""
        if which == "ref" and model is self._model and self.adapter is not None:
            return self.adapter.reference()
        return contextlib.nullcontext()

    def compute_values(self, data: TrainData) -> list[torch.Tensor] | None:
        if self.critic is None:
            return None
        out: list[torch.Tensor] = []
        for idx in self._forward_batches(data):
            out.extend(
                self.critic.compute(
                    [data["tokens"][i] for i in idx], [data["response_lengths"][i] for i in idx]
                )
            )
        return out

    # ---- training ------------------------------------------------------------------------------

    def train(
        self, rollout_id: int, batch: TrainBatch, *, step_tokens: Sequence[float] | None = None
    ) -> Metrics:
        """``step_tokens`` (data-parallel FSDP ranks with calculate_per_token_loss): per optimizer
        step, its loss tokens over all ranks divided by the number of ranks, the per-token
        denominator in place of this process's own count (see fsdp_backend.py)."""
        n = len(batch)
        steps = self.args.num_steps_per_rollout
        global_batch = n // steps if steps else min(self.args.effective_global_batch_size, n)
        self._model.train()
        per_step: list[Metrics] = []
        # Trimming makes n a multiple of the global batch; with --disable-rollout-trim-samples the
        # remainder forms a last, smaller step rather than being dropped.
        for step, step_start in enumerate(range(0, n, global_batch)):
            step_idx = list(range(step_start, min(step_start + global_batch, n)))
            tokens = step_tokens[step] if step_tokens is not None else None
            per_step.append(self._optimizer_step(rollout_id, batch, step_idx, tokens))
        return {f"train/{k}": v for k, v in reduce_over_steps(per_step).items()}

    def _optimizer_step(
        self, rollout_id: int, data: TrainBatch, step_idx: list[int], step_tokens: float | None = None
    ) -> Metrics:
        if self.before_train_step_hook is not None:
            self.before_train_step_hook(
                self.args, rollout_id, self.step_id, self._model, self.optimizer, self.scheduler
            )
        metrics: Metrics = {}
        if self.critic is not None:
            critic = self.critic
            metrics |= _accumulate_and_step(
                self.args,
                data,
                step_idx,
                self.device,
                critic.micro_batch_loss,
                critic.optim,
                prefix="critic_",
                scope=critic.train_scope,
                step_tokens=step_tokens,
            )
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step trains with
        if rollout_id >= self.args.num_critic_only_steps:
            actor = _accumulate_and_step(
                self.args,
                data,
                step_idx,
                self.device,
                self._micro_batch_loss,
                self.optim,
                scope=self._train_scope,
                step_tokens=step_tokens,
            )
            if "skipped_nonfinite_grad" not in actor:  # a skipped update does not advance the schedule
                self.scheduler.step()
            metrics |= actor
        self.step_id += 1
        metrics["lr"] = lr
        return metrics

    def _micro_batch_loss(self, batch: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        args = self.args
        if args.loss_type == "custom_loss":
            if self.loss_fn is None:
                raise RuntimeError(
                    "loss_type=custom_loss but no loss_fn / custom_loss_function_path was given"
                )
            from miles_sdk.algo.reducers import get_sum_of_sample_mean, miles_scale

            logits = self._packed_logits(batch)
            # Miles's convention for a custom loss: its reducer sums over samples (or tokens), and
            # the framework divides afterwards; ``scale`` turns the result into this SDK's mean.
            reducer = get_sum_of_sample_mean(
                batch.total_lengths,
                batch.response_lengths,
                batch.loss_masks,
                args.calculate_per_token_loss,
                reduction="sum",
            )
            from miles_sdk.rollout.shapes import check_loss_result, describe_hook

            where = "loss function " + describe_hook(
                self.loss_fn, flag="--custom-loss-function-path", path=args.custom_loss_function_path
            )
            # Miles's LossFn takes the micro-batch as a dict (its own layout).
            loss, metrics = check_loss_result(self.loss_fn(args, batch.as_dict(), logits, reducer), where)
            scale = miles_scale(batch.loss_masks, args.calculate_per_token_loss)
            return loss / scale, {k: v / scale for k, v in metrics.items()}
        with_entropy = args.entropy_coef != 0.0 or args.loss_type == "policy_loss"
        log_probs, entropy = self._response_log_probs(
            self._model, batch.token_lists, batch.response_lengths, with_entropy=with_entropy
        )
        return compute_loss(
            batch,
            log_probs,
            entropy,
            None,
            params=self._loss_params,
            tis_fn=self.tis_fn,
            pg_loss_reducer=self.pg_loss_reducer,
            hook_args=args,
        )

    def _packed_logits(self, batch: MicroBatch) -> torch.Tensor:
        """Miles's packed layout: [1, sum(total_lengths), V] float32 logits."""
        tokens = batch.token_lists
        hidden = self._forward_hidden(self._model, tokens)
        rows = hidden.all_rows([len(seq) for seq in tokens])
        logits: torch.Tensor = _lm_head(self._model)(rows).float() / self._temperature()
        return logits.unsqueeze(0)

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self._model.state_dict() if self.adapter is None else self.adapter.state_dict(),
            "step_id": self.step_id,
            "scheduler": self.scheduler.state_dict(),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        if not self.args.no_save_optim:
            state["optimizer"] = self.optim.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adapter is not None:
            self.adapter.load_state_dict(state["model"])
        else:
            self._model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optim.load_state_dict(state["optimizer"])
        else:
            self.optim.reset_masters()  # masters must follow the loaded weights
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.step_id = int(state["step_id"])


def _decoder(model: nn.Module) -> nn.Module:
    """The transformer body without the LM head (hidden states only)."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        decoder = get_decoder()
        if isinstance(decoder, nn.Module):
            return decoder
    raise TypeError(
        f"{type(model).__name__} has no get_decoder(); the torch backend needs a transformers causal LM"
    )


def _lm_head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__}: expected an nn.Linear LM head, got {type(head).__name__}")
    return head


def _accumulate_and_step(
    args: Config,
    data: TrainBatch,
    step_idx: list[int],
    device: torch.device,
    loss_of: Callable[[MicroBatch], tuple[torch.Tensor, dict[str, Any]]],
    optim: PolicyOptimizer,
    *,
    prefix: str = "",
    scope: Callable[[MicroBatch], contextlib.AbstractContextManager[None]] = lambda _: (
        contextlib.nullcontext()
    ),
    step_tokens: float | None = None,
) -> Metrics:
    """One optimizer step over ``step_idx``: micro-batch losses are weighted so the accumulated
    gradient is that of the mean over the global batch (per sample, or per token with
    ``calculate_per_token_loss``; ``step_tokens`` replaces this process's token count as the
    denominator on data-parallel ranks), then clipped.

    Metrics stay on the device over the micro-batches (weighted sums; running max / min for
    ``*_max`` / ``*_min``) and are read back with the gradient norm in one transfer: on CUDA each
    ``float()`` per micro-batch was a host sync that stalled the launch queue."""
    optim.zero_grad()
    per_token = args.calculate_per_token_loss
    # Token counts from the host copy of the masks (the device copies would cost a sync each).
    tokens_of = {i: _mask_sum(data.loss_masks[i]) for i in step_idx}
    if step_tokens is None:
        step_tokens = sum(tokens_of.values()) or 1
    reduced = _DeviceMetrics(device)
    max_tokens = args.max_tokens_per_gpu if args.use_dynamic_batch_size else None
    for mb in micro_batches(data, step_idx, micro_batch_size=args.micro_batch_size, max_tokens=max_tokens):
        batch = micro_batch(data, mb, device)
        mb_tokens = sum(tokens_of[i] for i in mb)
        weight = mb_tokens / step_tokens if per_token else len(mb) / len(step_idx)
        with scope(batch), oom_phase("train_forward_backward", device):
            loss, metrics = loss_of(batch)
            torch.autograd.backward(loss * weight)
        for k, v in metrics.items():
            reduced.add(prefix + k, v, weight)
    grad_norm_key = prefix + "grad_norm"
    with oom_phase("optimizer", device):
        sums = reduced.read(extra={grad_norm_key: optim.clip(args.clip_grad)})
        optim.step(sums[grad_norm_key])
    if not math.isfinite(sums[grad_norm_key]):
        # A non-finite gradient would poison the weights: the step was skipped; report it.
        sums[prefix + "skipped_nonfinite_grad"] = 1.0
    return sums


def _mask_sum(mask: Any) -> int:
    """Trainable tokens of a host mask (a list, as the rollout stores it, is summed in Python)."""
    return int(sum(mask)) if isinstance(mask, list) else int(torch.as_tensor(mask).sum())


def _extreme(key: str) -> str | None:
    """Whether a metric is an extreme ("max": ``ratio_max``; "min") or a mean (None)."""
    tail = key.rsplit("/", 1)[-1]
    if tail.endswith("_max") or tail == "max":
        return "max"
    if tail.endswith("_min") or tail == "min":
        return "min"
    return None


class _DeviceMetrics:
    """Metrics reduced on the device: weighted sums, or running max / min for extremes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.values: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: torch.Tensor | float, weight: float) -> None:
        # A host number goes up as a tensor without waiting (a blocking copy would sync).
        v = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        v = v.to(self.device, torch.float32, non_blocking=True).reshape(())
        previous = self.values.get(key)
        kind = _extreme(key)
        if kind is None:
            v = v * weight
            self.values[key] = v if previous is None else previous + v
        elif previous is None:
            self.values[key] = v
        else:
            self.values[key] = torch.maximum(previous, v) if kind == "max" else torch.minimum(previous, v)

    def read(self, extra: dict[str, torch.Tensor]) -> Metrics:
        """Every value (and ``extra``'s) in one device-to-host copy."""
        everything = {**self.values, **extra}
        if not everything:
            return {}
        stacked = torch.stack([v.to(self.device, torch.float32).reshape(()) for v in everything.values()])
        return dict(zip(everything, stacked.tolist(), strict=True))


def reduce_over_steps(per_step: list[Metrics]) -> Metrics:
    """The optimizer steps' metrics combined: max / min for extremes, else the mean over steps (a
    key missing from a step counts 0 there: ``skipped_nonfinite_grad`` is the share skipped)."""
    out: Metrics = {}
    for metrics in per_step:
        for k, v in metrics.items():
            kind = _extreme(k)
            if k not in out:
                out[k] = v
            elif kind == "max":
                out[k] = max(out[k], v)
            elif kind == "min":
                out[k] = min(out[k], v)
            else:
                out[k] += v
    return {k: v if _extreme(k) else v / max(len(per_step), 1) for k, v in out.items()}
