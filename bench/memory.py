"""Peak device memory of a GRPO step split by owner, measured next to the figure computed from shapes.

    python -m bench.memory --model 0.5b                 # W1 (16 x 8, prompt 128, response 256), GPU
    python -m bench.memory --model 7b --w2 --optimizer-cpu-offload --gradient-checkpointing
    python -m bench.memory --model tiny --device cpu    # CPU smoke run: computed column, owner bytes

Owners: weights, fp32 masters, optimizer state, gradients (fp32 accumulators), train activations,
logits / log-prob chunks, engine KV cache, engine weight copies (the fast path's fused q/k/v and
gate/up), CUDA graphs + engine buffers, allocator fragmentation. Measured with
``torch.cuda.memory_allocated`` / ``max_memory_allocated`` at phase boundaries of a real Trainer
step (the phases are wrapped, not changed) and the tensors each owner holds
(``miles_sdk.backends._memory.owner_bytes``); computed from the model's shapes and the settings.
Prints a markdown table; ``--json`` writes the numbers. Owners that only exist on CUDA (graphs,
fragmentation) read n/a on the CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from bench.w1_step import RandomPromptSource, exact_length, random_reward
from miles_sdk import Config, Trainer
from miles_sdk.backends._memory import owner_bytes

GiB = float(2**30)


@dataclass(frozen=True)
class Shape:
    """A Qwen2.5-style decoder's shape."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def params(self) -> int:
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        attn = h * h + h + 2 * (h * kv + kv) + h * h  # q (+bias), k, v (+bias), o
        layer = attn + 3 * h * i + 2 * h  # gate, up, down, two norms
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def config(self) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, max_position_embeddings=32768, tie_word_embeddings=self.tied,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6}, rms_norm_eps=1e-6,
            eos_token_id=self.vocab - 1, pad_token_id=self.vocab - 2,
        )  # fmt: skip


SHAPES = {
    "tiny": Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512, tied=True),
    "0.5b": Shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936, tied=True),
    "3b": Shape(hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, vocab=151936, tied=True),
    "7b": Shape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064, tied=False),
}
"""Qwen2.5 0.5B / 3B / 7B shapes (and a tiny one for the CPU)."""


@dataclass(frozen=True)
class Workload:
    prompts: int
    samples: int
    prompt_len: int
    response_len: int
    micro_batch_size: int

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len

    @property
    def sequences(self) -> int:
        return self.prompts * self.samples


W1 = Workload(prompts=16, samples=8, prompt_len=128, response_len=256, micro_batch_size=8)
W2 = Workload(prompts=8, samples=8, prompt_len=256, response_len=512, micro_batch_size=4)


@dataclass(frozen=True)
class Settings:
    optimizer_cpu_offload: bool = False
    gradient_checkpointing: bool = False
    log_probs_chunk_size: int = 4096
    engine_slots: int = 128
    lora_rank: int = 0
    """> 0: LoRA on all linear layers; only the adapter has masters, moments and gradients."""
    offload_rollout: bool = False
    """The engine frees its KV cache, fused copies and graphs while the trainer works."""


def computed(shape: Shape, work: Workload, s: Settings) -> dict[str, float]:
    """Bytes per owner from the shapes: what the step must hold at its peak (train backward).

    Activations per layer and token (bf16, no checkpointing; HF Qwen2 layer): each RMSNorm keeps
    its fp32 input (4h), its bf16 output (2h) and the flattened copy the projections read (2h);
    attention keeps the rotated q (2h), k and v (2kv each) and its output (2h); the MLP keeps
    gate, up, SiLU and product (4 x 2I): 20h + 4kv + 8I bytes. Checked against the tensors
    autograd saves (saved_tensors_hooks, 0.5B layer, eager on the CPU): 57,408 bytes per layer
    and token against 57,344 computed. With checkpointing: each layer's input (2h) plus one
    layer's full set."""
    n = shape.params()
    h, kv, i, v = shape.hidden, shape.kv_dim, shape.intermediate, shape.vocab
    tokens_mb = work.micro_batch_size * work.seq_len
    per_layer_token = 20 * h + 4 * kv + 8 * i
    if s.gradient_checkpointing:
        activations = tokens_mb * (2 * h * shape.layers + per_layer_token)
    else:
        activations = tokens_mb * per_layer_token * shape.layers
    chunk = min(s.log_probs_chunk_size, tokens_mb)
    # bf16 logits and their bf16 gradient per chunk, plus the fp32 LM-head weight-gradient sum.
    logits = chunk * v * (2 + 2) + v * h * 4
    head_dim = shape.head_dim
    cap = work.seq_len
    kv_cache = shape.layers * (s.engine_slots + 1) * shape.kv_heads * cap * head_dim * 2 * 2
    engine_copies = shape.layers * ((h + 2 * kv) * h + (h + 2 * kv) + 2 * i * h) * 2
    trained = n
    if s.lora_rank:
        # A (r x in) and B (out x r) per adapted linear: q, k, v, o, gate, up, down.
        trained = shape.layers * s.lora_rank * (2 * (h + h) + 2 * (h + kv) + 2 * (h + i) + (i + h))
        trained_linear = shape.layers * (2 * h * h + 2 * h * kv + 3 * h * i)
        engine_copies += 2 * trained_linear  # the engine's merged W + (alpha/r) B A of every adapted weight
    out = {
        "weights (policy)": 2.0 * n + (2.0 * trained if s.lora_rank else 0.0),
        "fp32 master weights": 0.0 if s.optimizer_cpu_offload else 4.0 * trained,
        "optimizer state": 0.0 if s.optimizer_cpu_offload else 8.0 * trained,
        "gradients": 4.0 * trained,
        "activations (train, one micro-batch)": float(activations),
        "logits / log-prob chunks": float(logits),
        "engine KV cache": float(kv_cache),
        "engine weight copies": float(engine_copies),
    }
    out["host: masters + optimizer state"] = 12.0 * trained if s.optimizer_cpu_offload else 0.0
    return out


def suggested_max_tokens(
    comp: dict[str, float], work: Workload, device_bytes: float, headroom: float = 0.1
) -> int:
    """``--max-tokens-per-gpu`` that fills what the resident owners leave of ``device_bytes``
    (less ``headroom`` for fragmentation and graph pools) with train activations, at the computed
    activation bytes per token; 0 when nothing is left."""
    per_token = comp["activations (train, one micro-batch)"] / (work.micro_batch_size * work.seq_len)
    resident = sum(v for k, v in comp.items() if not k.startswith(("host", "activations")))
    free = device_bytes * (1 - headroom) - resident
    return max(int(free / per_token), 0)


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    ids = {f"t{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="t0"))
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token=f"t{vocab - 1}", pad_token=f"t{vocab - 2}"
    )


def build_model(shape: Shape, device: torch.device) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: a 7B fp32 init would hold 30 GB first
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(shape.config())
    finally:
        torch.set_default_dtype(previous)
    model.train(False)
    return model


def make_trainer(shape: Shape, work: Workload, s: Settings, device: torch.device, **config: Any) -> Trainer:
    model = build_model(shape, device)
    cfg = Config(
        device=str(device),
        rollout_batch_size=work.prompts,
        n_samples_per_prompt=work.samples,
        rollout_max_response_len=work.response_len,
        rollout_max_context_len=work.seq_len,
        micro_batch_size=work.micro_batch_size,
        num_steps_per_rollout=1,
        lr=1e-6,
        max_engine_batch_size=s.engine_slots,
        progress_bar=False,
        log_probs_chunk_size=s.log_probs_chunk_size,
        gradient_checkpointing=s.gradient_checkpointing,
        optimizer_cpu_offload=s.optimizer_cpu_offload,
        offload_rollout=s.offload_rollout,
        **config,
    )
    return Trainer(
        cfg,
        model=model,
        tokenizer=word_tokenizer(shape.vocab),
        data_source=RandomPromptSource(work.samples, work.prompt_len, shape.vocab),
        generate_fn=exact_length,
        reward_model=random_reward,
    )


class PhaseMemory:
    """Allocator numbers around the Trainer's phases, recorded by wrapping the methods that run
    them on this one trainer (nothing in the library changes): per phase the allocated bytes at
    its start and end and its peak; the gradients' bytes as clipping starts (all accumulated)."""

    PHASES = ("_rollout", "_log_probs", "_sync_weights")

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.device = trainer.policy.device
        self.cuda = self.device.type == "cuda"
        self.phases: dict[str, dict[str, int]] = {}
        self.gradients = 0
        for name in self.PHASES:
            if hasattr(trainer, name):
                setattr(trainer, name, self._wrap(name.strip("_"), getattr(trainer, name)))
        backend: Any = trainer.backend
        backend.train = self._wrap("train", backend.train)
        optim = getattr(backend, "optim", None)
        if optim is not None:
            clip = optim.clip

            def clip_and_count(max_norm: float) -> Any:
                self.gradients = max(self.gradients, self._owners()["gradients"])
                return clip(max_norm)

            optim.clip = clip_and_count

    def _owners(self) -> dict[str, int]:
        backend: Any = self.trainer.backend
        owners = owner_bytes(
            self.device,
            model=getattr(backend, "model", None),
            optim=getattr(backend, "optim", None),
            ref_model=getattr(backend, "ref_model", None),
            engine=self.trainer.engine,
        )
        return {k: owners.get(k, 0) for k in (
            "weights (policy)", "fp32 master weights", "gradients", "optimizer state",
            "engine weight copies", "engine KV cache",
        )}  # fmt: skip

    def _allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else 0

    def _wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.cuda:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            start = self._allocated()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.cuda:
                    torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device) if self.cuda else 0
                reserved = torch.cuda.max_memory_reserved(self.device) if self.cuda else 0
                self.phases[phase] = {
                    "start": start,
                    "end": self._allocated(),
                    "peak": peak,
                    "reserved": reserved,
                }

        return wrapped


def measure(trainer: Trainer, steps: int) -> dict[str, Any]:
    """Run ``steps`` steps; the owners, phase numbers and peaks of the last (steady) one."""
    rec = PhaseMemory(trainer)
    cuda = rec.cuda
    before_first = rec._allocated()
    owners_before = rec._owners()
    step_s: list[float] = []
    graphs = 0
    peak_allocated = peak_reserved = 0
    for step in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.step()
        if cuda:
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t0)
        if step == 0 and "rollout" in rec.phases:
            # What the first rollout left behind beyond KV growth: graph pools and engine buffers.
            grown = rec._owners()
            kv_growth = grown["engine KV cache"] - owners_before["engine KV cache"]
            graphs = rec.phases["rollout"]["end"] - before_first - kv_growth
    if cuda and rec.phases:
        # Each phase resets the peak counters as it starts: the step's peak is its largest phase's.
        top = max(rec.phases.values(), key=lambda p: p["peak"])
        peak_allocated, peak_reserved = top["peak"], top["reserved"]
    owners = rec._owners()
    measured: dict[str, float | None] = {k: float(v) for k, v in owners.items()}
    measured["gradients"] = float(rec.gradients)
    train = rec.phases.get("train")
    if cuda and train:
        measured["activations (train, one micro-batch)"] = float(
            train["peak"] - train["start"] - rec.gradients
        )
    logp = rec.phases.get("log_probs")
    if cuda and logp and logp["peak"] > logp["start"]:
        measured["log-prob pass (forward, no grad)"] = float(logp["peak"] - logp["start"])
    measured["CUDA graphs + engine buffers"] = float(graphs) if cuda else None
    measured["fragmentation (reserved - allocated at peak)"] = (
        float(peak_reserved - peak_allocated) if cuda else None
    )
    measured["peak allocated (step)"] = float(peak_allocated) if cuda else None
    return {"owners": measured, "phases": rec.phases, "step_s": step_s}


def table(comp: dict[str, float], meas: dict[str, float | None] | None) -> list[str]:
    unit, scale = ("GiB", GiB) if max(comp.values()) >= GiB else ("MiB", float(2**20))
    rows = [f"| owner | computed {unit} | measured {unit} | measured / computed |", "|---|---|---|---|"]
    names = list(comp) + [k for k in (meas or {}) if k not in comp]
    for name in names:
        c = comp.get(name)
        m = (meas or {}).get(name)
        ratio = f"{m / c:.2f}" if c and m is not None else ""
        cs = f"{c / scale:.2f}" if c is not None else ""
        ms = f"{m / scale:.2f}" if m is not None else ("n/a" if meas is not None else "")
        rows.append(f"| {name} | {cs} | {ms} | {ratio} |")
    return rows


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--w2", action="store_true", help="W2's workload (8 x 8, prompt 256, response 512)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=2, help="steps run (the last is measured)")
    ap.add_argument("--computed-only", action="store_true", help="print the computed column; run nothing")
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--response-len", type=int, default=None)
    ap.add_argument("--optimizer-cpu-offload", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--offload-rollout", action="store_true", help="engine memory released during training")
    ap.add_argument("--log-probs-chunk-size", type=int, default=4096)
    ap.add_argument(
        "--compile-model", choices=["auto", "on", "off"], default="auto", help="the Config's default"
    )
    ap.add_argument(
        "--device-gib", type=float, default=None, help="card size for the token budget (default: the card's)"
    )
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    return ap.parse_args(argv)


def workload(ns: argparse.Namespace) -> Workload:
    work = W2 if ns.w2 else W1
    if ns.model == "tiny":
        work = Workload(prompts=2, samples=2, prompt_len=8, response_len=8, micro_batch_size=2)
    return Workload(
        prompts=ns.prompts or work.prompts,
        samples=work.samples,
        prompt_len=work.prompt_len,
        response_len=ns.response_len or work.response_len,
        micro_batch_size=ns.micro_batch_size or work.micro_batch_size,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ns = parse(argv)
    shape, work = SHAPES[ns.model], workload(ns)
    settings = Settings(
        optimizer_cpu_offload=ns.optimizer_cpu_offload,
        gradient_checkpointing=ns.gradient_checkpointing,
        offload_rollout=ns.offload_rollout,
        log_probs_chunk_size=ns.log_probs_chunk_size,
        engine_slots=work.sequences,
    )
    comp = computed(shape, work, settings)
    result: dict[str, Any] = {
        "model": ns.model, "params": shape.params(), "workload": asdict(work), "settings": asdict(settings),
        "computed": comp, "device": ns.device,
    }  # fmt: skip
    meas = None
    if not ns.computed_only:
        device = torch.device(ns.device)
        if device.type == "cuda":
            result["device"] = torch.cuda.get_device_name(device)
        trainer = make_trainer(shape, work, settings, device, compile_model=ns.compile_model)
        try:
            out = measure(trainer, ns.steps)
        finally:
            trainer.close()
        meas = out["owners"]
        result |= {"measured": meas, "phases": out["phases"], "step_s": out["step_s"]}
    print(
        f"memory of a GRPO step: {ns.model} ({shape.params() / 1e9:.2f}B params), {work.prompts}x{work.samples}, "
        f"prompt {work.prompt_len} + response {work.response_len}, micro-batch {work.micro_batch_size}, "
        f"optimizer_cpu_offload {settings.optimizer_cpu_offload}, gradient_checkpointing "
        f"{settings.gradient_checkpointing}, offload_rollout {settings.offload_rollout}, on {result['device']}"
    )
    print("\n".join(table(comp, meas)))
    device_bytes = ns.device_gib * GiB if ns.device_gib else None
    if device_bytes is None and str(ns.device).startswith("cuda") and torch.cuda.is_available():
        device_bytes = float(torch.cuda.mem_get_info(torch.device(ns.device))[1])
    if device_bytes:
        tokens = suggested_max_tokens(comp, work, device_bytes)
        result["suggested_max_tokens_per_gpu"] = tokens
        print(
            f"\nsuggested --use-dynamic-batch-size --max-tokens-per-gpu {tokens} (fills {device_bytes / GiB:.0f} GiB "
            "less 10% with activations after the resident owners; computed, not measured)"
        )
    if result.get("phases") and str(ns.device).startswith("cuda"):
        print("\n| phase (last step) | allocated at start GiB | peak GiB | at end GiB | peak reserved GiB |")
        print("|---|---|---|---|---|")
        for phase, p in result["phases"].items():
            print(
                f"| {phase} | {p['start'] / GiB:.2f} | {p['peak'] / GiB:.2f} | {p['end'] / GiB:.2f} "
                f"| {p['reserved'] / GiB:.2f} |"
            )
    if "step_s" in result:
        print(f"step times: {', '.join(f'{t:.2f} s' for t in result['step_s'])}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
