"""Device memory as a figure: who holds it (weights, masters, optimizer state, gradients, engine
cache and weight copies), and an out-of-memory during a step reported with its phase, that table
and the flags that would help, instead of a bare CUDA OOM trace.

How an OOM becomes a report: code that knows a finer phase than the Trainer's (the backend's
forward/backward vs optimizer step) wraps it in :func:`oom_phase`, which only tags the exception
with the phase and the allocator's numbers at that moment and re-raises it. The Trainer wraps its
whole step in :func:`oom_report`, which adds the owners it can see and the helpful flags, and
raises :class:`StepOutOfMemoryError` (a ``torch.OutOfMemoryError``, so ``except`` clauses written
for a CUDA OOM still catch it) from the original.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from miles_sdk.config import Config

__all__ = [
    "MemoryTable",
    "StepOutOfMemoryError",
    "device_memory",
    "helpful_flags",
    "oom_phase",
    "oom_report",
    "owner_bytes",
    "resolve_gradient_checkpointing",
]

log = logging.getLogger(__name__)

GiB = float(2**30)

PHASES = {
    "rollout": "generate (rollout: engine prefill/decode, rewards)",
    "train_data": "train data (samples -> tensors)",
    "log_prob": "old/ref log-probs (forward without grad)",
    "advantages": "advantages",
    "train": "train",
    "train_forward_backward": "train forward/backward",
    "optimizer": "optimizer step (clip + AdamW + masters -> weights)",
    "sync": "weight sync (trainer -> engine)",
}
"""Phase keys (the Trainer's PhaseTimer names and the backend's finer ones) -> what they do."""


@dataclass
class MemoryTable:
    """The device's memory at one moment, in bytes. ``allocated``/``reserved``/``peak`` are the
    caching allocator's (None off CUDA); ``owners`` are computed from the tensors each part of the
    run holds (deduplicated by storage), ``other`` is what the allocator holds beyond them:
    activations, temporaries, CUDA-graph pools."""

    device: str
    allocated: int | None = None
    reserved: int | None = None
    peak: int | None = None
    free: int | None = None
    total: int | None = None
    owners: dict[str, int] = field(default_factory=dict)

    @property
    def other(self) -> int | None:
        if self.allocated is None:
            return None
        return max(self.allocated - sum(self.owners.values()), 0)

    def rows(self) -> list[tuple[str, int | None]]:
        rows: list[tuple[str, int | None]] = [(name, n) for name, n in self.owners.items()]
        if self.allocated is not None:
            rows.append(("other (activations, temporaries, CUDA-graph pools)", self.other))
        rows += [
            ("allocated (PyTorch)", self.allocated),
            ("reserved (allocator cache)", self.reserved),
            ("peak allocated", self.peak),
            ("free on the device", self.free),
            ("device total", self.total),
        ]
        return rows

    def render(self) -> str:
        lines = [f"memory on {self.device} (GiB):"]
        for name, n in self.rows():
            if n is not None:  # the allocator's rows exist on CUDA only
                lines.append(f"  {name:<52} {n / GiB:8.3f}")
        return "\n".join(lines)


def device_memory(device: torch.device | str) -> MemoryTable:
    """The allocator's numbers for ``device`` (owners left empty; see :func:`owner_bytes`)."""
    device = torch.device(device)
    table = MemoryTable(device=str(device))
    if device.type == "cuda" and torch.cuda.is_available():
        table.allocated = torch.cuda.memory_allocated(device)
        table.reserved = torch.cuda.memory_reserved(device)
        table.peak = torch.cuda.max_memory_allocated(device)
        with contextlib.suppress(RuntimeError):  # mem_get_info needs a live context
            table.free, table.total = torch.cuda.mem_get_info(device)
    return table


class _Counter:
    """Bytes of tensors on one device, each storage counted once across every owner."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seen: set[int] = set()

    def __call__(self, tensors: Iterable[torch.Tensor | None]) -> int:
        total = 0
        for t in tensors:
            if t is None or not isinstance(t, torch.Tensor) or t.device.type != self.device.type:
                continue
            if self.device.index is not None and t.device.index not in (None, self.device.index):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self.seen:
                continue
            self.seen.add(key)
            total += storage.nbytes()
        return total


def _params(module: Any) -> list[torch.Tensor]:
    params = getattr(module, "parameters", None)
    return list(params()) if callable(params) else []


def _state_tensors(optimizer: Any) -> list[torch.Tensor]:
    state = getattr(optimizer, "state", {})
    return [v for per_param in state.values() for v in per_param.values() if isinstance(v, torch.Tensor)]


def owner_bytes(
    device: torch.device | str,
    *,
    model: Any = None,
    optim: Any = None,
    ref_model: Any = None,
    engine: Any = None,
) -> dict[str, int]:
    """Bytes on ``device`` per owner, from the objects of a run (any may be None). Duck-typed
    (``PolicyOptimizer``'s ``masters``/``optimizer``, the embedded engine's ``_model``/``_runner``)
    so an unknown backend or engine just contributes nothing rather than failing a report."""
    count = _Counter(torch.device(device))
    out: dict[str, int] = {}
    params = _params(model)
    out["weights (policy)"] = count(params)
    masters = list(getattr(optim, "masters", None) or [])
    out["fp32 master weights"] = count(masters)
    grads = [p.grad for p in params] + [m.grad for m in masters]
    grads += list(getattr(optim, "grad_buffers", None) or [])  # the offloaded optimizer's fp32 grads
    out["gradients"] = count(grads)
    out["optimizer state"] = count(_state_tensors(getattr(optim, "optimizer", None)))
    if ref_model is not None:
        out["reference model"] = count(_params(ref_model))
    if engine is not None:
        inner = getattr(engine, "_model", None)
        copies: list[torch.Tensor | None] = []
        if inner is not None and inner is not model:
            copies += _params(inner)
        runner = getattr(engine, "_runner", None)
        for layer in getattr(runner, "_layers", None) or []:
            copies += [getattr(layer, name, None) for name in ("qkv_w", "qkv_b", "gate_up_w")]  # fused copies
        out["engine weight copies"] = count(copies)
        out["engine KV cache"] = count([getattr(runner, "_k_all", None), getattr(runner, "_v_all", None)])
    return {k: v for k, v in out.items() if v or k == "weights (policy)"}


def helpful_flags(phase: str, args: Config) -> list[str]:
    """The settings that lower the memory of ``phase``, with their current values."""
    dyn = args.use_dynamic_batch_size
    token_budget = (
        f"--max-tokens-per-gpu (now {args.max_tokens_per_gpu}) lower"
        if dyn
        else "--use-dynamic-batch-size --max-tokens-per-gpu N (micro-batches by token count)"
    )
    flags: list[str] = []
    if phase == "rollout":
        if args.rollout_engine == "embedded":
            flags.append(
                f"--max-engine-batch-size (now {args.max_engine_batch_size}) lower: fewer KV-cache slots"
            )
        flags.append(
            f"--rollout-max-response-len (now {args.rollout_max_response_len}) / --rollout-max-context-len"
            f" (now {args.rollout_max_context_len}) lower: a shorter KV cache per slot"
        )
    elif phase == "log_prob":
        flags.append(
            f"{token_budget}: forward batches of twice the budget instead of max(micro_batch_size, 8)"
        )
        flags.append(f"--log-probs-chunk-size (now {args.log_probs_chunk_size}) lower: smaller logits chunks")
    elif phase in ("train", "train_forward_backward"):
        flags.append(f"--micro-batch-size (now {args.micro_batch_size}) lower, or {token_budget}")
        if args.gradient_checkpointing is not True:  # auto may have left it off
            flags.append(
                f"--gradient-checkpointing (now {args.gradient_checkpointing!r}): recompute activations in backward"
            )
        flags.append(f"--log-probs-chunk-size (now {args.log_probs_chunk_size}) lower: smaller logits chunks")
    if phase in ("train", "optimizer", "sync"):
        if args.train_backend == "fsdp" and not args.fsdp_cpu_offload:
            flags.append(
                "--fsdp-cpu-offload: sharded parameters, gradients and optimizer state in host memory"
            )
        elif args.train_backend == "torch" and not getattr(args, "optimizer_cpu_offload", False):
            flags.append(
                "--optimizer-cpu-offload: fp32 masters and AdamW state in host memory, stepped there"
            )
    if args.dtype == "float32" and torch.cuda.is_available():
        flags.append("--dtype auto: bf16 weights with fp32 masters instead of fp32 weights")
    return flags


class StepOutOfMemoryError(torch.OutOfMemoryError):
    """An out-of-memory during a Trainer step, with the phase, the memory table and the flags
    that would help. The allocator's own message is kept as ``__cause__``."""

    def __init__(self, phase: str, table: MemoryTable, flags: list[str], original: BaseException) -> None:
        self.phase = phase
        self.table = table
        self.flags = flags
        first_line = (
            str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
        )
        parts = [
            f"out of memory during {PHASES.get(phase, phase)}: {first_line}",
            table.render(),
        ]
        if flags:
            parts.append("settings that lower this phase's memory:\n" + "\n".join(f"  {f}" for f in flags))
        super().__init__("\n".join(parts))


_PHASE_ATTR = "_miles_oom_phase"
_TABLE_ATTR = "_miles_oom_table"


@contextlib.contextmanager
def oom_phase(phase: str, device: torch.device | str | None = None) -> Iterator[None]:
    """Tag an out-of-memory raised inside with ``phase`` and the allocator's numbers now (the
    innermost tag wins); the exception itself propagates unchanged."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        if not isinstance(exc, StepOutOfMemoryError) and not hasattr(exc, _PHASE_ATTR):
            setattr(exc, _PHASE_ATTR, phase)
            if device is not None:
                setattr(exc, _TABLE_ATTR, device_memory(device))
        raise


@contextlib.contextmanager
def oom_report(
    device: torch.device | str,
    args: Config,
    current_phase: Callable[[], str | None],
    owners: Callable[[], dict[str, int]],
) -> Iterator[None]:
    """Turn an out-of-memory raised inside into a :class:`StepOutOfMemoryError`.

    ``current_phase`` names the phase that was running (used when no :func:`oom_phase` tagged
    the exception); ``owners`` computes the owner table (called only on an OOM)."""
    try:
        yield
    except StepOutOfMemoryError:
        raise
    except torch.OutOfMemoryError as exc:
        phase = getattr(exc, _PHASE_ATTR, None) or current_phase() or "step"
        table: MemoryTable = getattr(exc, _TABLE_ATTR, None) or device_memory(device)
        try:
            table.owners = owners()
        except Exception as owner_exc:  # noqa: BLE001 - the report must not hide the OOM behind its own failure
            table.owners = {}
            exc.add_note(f"(memory owners unavailable: {owner_exc!r})")
        raise StepOutOfMemoryError(phase, table, helpful_flags(phase, args), exc) from exc


# ---- gradient_checkpointing="auto" --------------------------------------------------------------

CHECKPOINTING_HEADROOM = 0.1
"""Share of the device kept out of the auto estimate for fragmentation, temporaries and CUDA-graph
pools (bench/memory.py's ``suggested_max_tokens`` keeps the same)."""


def free_device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of ``device`` for this process's next allocations: the driver's free
    memory plus what PyTorch's allocator has reserved and not handed out."""
    free, total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), total


def activation_bytes_per_token(model_config: Any) -> int:
    """Train activations of one token through every decoder layer, bf16, no checkpointing:
    ``20h + 4kv + 8I`` bytes per layer (docs/memory.md; checked against the tensors autograd
    saves in tests/perf/test_bench_memory.py). Raises AttributeError naming a missing field."""
    h = int(model_config.hidden_size)
    inter = int(model_config.intermediate_size)
    layers = int(model_config.num_hidden_layers)
    heads = int(model_config.num_attention_heads)
    kv_heads = int(getattr(model_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(model_config, "head_dim", None) or h // heads)
    return (20 * h + 4 * kv_heads * head_dim + 8 * inter) * layers


def micro_batch_tokens(args: Config) -> tuple[int, str]:
    """The most tokens one train micro-batch can hold, and where the figure comes from."""
    if args.use_dynamic_batch_size and args.max_tokens_per_gpu:
        return args.max_tokens_per_gpu, f"max_tokens_per_gpu {args.max_tokens_per_gpu}"
    bounds = [n for n in (args.rollout_max_context_len, args.max_seq_len) if n]
    if args.rollout_max_prompt_len:
        bounds.append(args.rollout_max_prompt_len + args.rollout_max_response_len)
    if bounds:
        seq, source = min(bounds), "tokens"
    else:  # no bound on the prompts: the response budget alone (the estimate is low by the prompt)
        seq, source = args.rollout_max_response_len, "response tokens (no prompt bound set)"
    return args.micro_batch_size * seq, f"micro_batch_size {args.micro_batch_size} x {seq} {source}"


def _local_numel(t: torch.Tensor) -> int:
    """Elements this process holds of ``t`` (an FSDP-sharded DTensor: its shard)."""
    to_local = getattr(t, "to_local", None)
    return int(to_local().numel()) if callable(to_local) else t.numel()


def _bytes_to_come(args: Config, trained: Sequence[torch.Tensor], optim: Any) -> int:
    """Gradients and optimizer state the first step will allocate on the device (the owner
    formulas of docs/memory.md, over what this process holds): fp32 gradient accumulators and
    AdamW's two moments in the dtype it steps; nothing of either on the device with
    fsdp_cpu_offload, only the gradients with optimizer_cpu_offload."""
    if getattr(args, "fsdp_cpu_offload", False) and args.train_backend == "fsdp":
        return 0
    if optim is not None and getattr(optim, "grad_buffers", None) is not None:  # OffloadedOptimizer
        return sum(4 * _local_numel(p) for p in trained)
    stepped: Sequence[torch.Tensor] = getattr(optim, "masters", None) or trained
    state = getattr(getattr(optim, "optimizer", None), "state", None) or {}
    total = 0
    for t in stepped:
        size = _local_numel(t) * t.element_size()
        total += size + (0 if t in state else 2 * size)  # its gradient, then the two moments
    return total


def _agree_over_shards(decision: bool, trained: Sequence[torch.Tensor], device: torch.device) -> bool:
    """Sharded (FSDP) parameters: every rank takes the same decision (on if any rank needs it),
    so the ranks run the same layers in backward. Each rank builds its backend at the same point,
    so this collective is reached by all of them."""
    mesh = next((getattr(p, "device_mesh", None) for p in trained if getattr(p, "device_mesh", None)), None)
    if mesh is None or mesh.size() <= 1:
        return decision
    import torch.distributed as dist

    flag = torch.tensor([int(decision)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=mesh.get_group())
    return bool(flag.item())


def resolve_gradient_checkpointing(
    args: Config, model: Any, device: torch.device, *, optim: Any = None
) -> bool:
    """``args.gradient_checkpointing`` as a bool for the backend about to train ``model`` on
    ``device`` (called once, as the backend is built: weights, masters, the reference model and
    the engine are resident then). True/False as given. auto: off on the CPU; on CUDA on only
    when one micro-batch's activations (:func:`micro_batch_tokens` x
    :func:`activation_bytes_per_token`), its logits chunk, and the gradients and optimizer state
    still to come exceed the free memory less :data:`CHECKPOINTING_HEADROOM` of the device.
    The decision and its numbers are logged once."""
    setting = args.gradient_checkpointing
    if setting is True or setting is False:
        return setting
    if device.type != "cuda":
        return False
    cfg: Any = getattr(model, "config", None)
    try:
        per_token = activation_bytes_per_token(cfg)
        vocab = int(cfg.vocab_size)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError) as exc:
        log.warning(
            "gradient_checkpointing auto: off: no estimate for %s (its config lacks a decoder shape: %s); "
            "pass --gradient-checkpointing to turn it on",
            type(model).__name__,
            exc,
        )
        return False
    trained = [p for p in model.parameters() if p.requires_grad]
    tokens, source = micro_batch_tokens(args)
    activations = tokens * per_token
    logits = min(args.log_probs_chunk_size, tokens) * vocab * 4  # bf16 logits and their gradient
    to_come = _bytes_to_come(args, trained, optim)
    free, total = free_device_memory(device)
    available = free - CHECKPOINTING_HEADROOM * total
    need = activations + logits + to_come
    on = _agree_over_shards(need > available, trained, device)
    log.log(
        logging.WARNING if on else logging.INFO,
        "gradient_checkpointing auto: %s: one micro-batch's activations ~%.2f GiB (%s x %d bytes), "
        "logits chunk %.2f GiB, gradients + optimizer state to come %.2f GiB; %.2f GiB free of %.2f GiB "
        "(%.0f%% kept for fragmentation)%s",
        "on" if on else "off",
        activations / GiB,
        source,
        per_token,
        logits / GiB,
        to_come / GiB,
        free / GiB,
        total / GiB,
        100 * CHECKPOINTING_HEADROOM,
        "; --no-gradient-checkpointing turns it off (about +20% step time when on)"
        if on
        else "; --gradient-checkpointing turns it on",
    )
    return on
