"""The fast model runner: a hand-written decoder step over a static slot-major KV cache.

For Llama-style decoders (Qwen2, Qwen3, Llama, Mistral without sliding window):
- the cache is ``[slots, kv_heads, capacity, head_dim]`` per layer; row ``i`` of a decode batch
  is slot ``i``, so no gather is needed and the scheduler keeps slots dense. ``capacity`` starts
  at ``max_seq_len`` and grows (at least doubling, up to the model's position limit) when an
  admitted request's prompt + budget needs more (:meth:`FastRunner.reserve`): never truncated;
- q/k/v and gate/up are one GEMM each (fused weight copies, refreshed by ``weights_updated``);
  norm+residual, RoPE+cache store, SwiGLU and the sampling tail are fused kernels on CUDA;
- on CUDA each (batch bucket, length bucket, filter) step is captured once in a CUDA graph that
  also advances tokens/positions on the device, so ``k`` steps run with a single host sync;
- decode is pipelined: while the scheduler handles one chunk's tokens, the next chunk already
  runs on the GPU (see :meth:`FastRunner.step`).
On CPU the same code runs eagerly with the torch references (this is how it is unit-tested).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from miles_sdk.engines._graphs import PrefillGraphs, capture
from miles_sdk.engines._kernels import (
    add_rmsnorm,
    advance,
    rope_attend,
    rope_store,
    sample_advance,
    sample_plain,
    silu_mul,
)
from miles_sdk.engines._runner import StepResult
from miles_sdk.engines._sampling import RowParams, sample_rows, top_k_top_p_filter

__all__ = ["FastRunner", "fast_path_unsupported"]

_ARCHS = ("qwen2", "qwen3", "llama", "mistral")
_PREFILL_TOKENS = 16384
"""Most padded prompt tokens one prefill forward takes (bounds its activation memory)."""


def fast_path_unsupported(model: nn.Module) -> str | None:
    """Why the fast runner cannot run ``model`` (None when it can)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in _ARCHS:
        return f"model_type {kind!r} is not one of {_ARCHS}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {getattr(cfg, 'hidden_act', None)!r} (only silu)"
    if getattr(cfg, "use_sliding_window", False) or (
        kind == "mistral" and getattr(cfg, "sliding_window", None)
    ):
        return "sliding-window attention"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        return "position-dependent RoPE scaling (dynamic/longrope)"
    if getattr(getattr(model, "model", None), "layers", None) is None:
        return "no model.layers"
    return None


@attrs.define
class _Layer:
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o: nn.Linear
    gate_up_w: torch.Tensor
    down: nn.Linear
    in_norm: torch.Tensor
    post_norm: torch.Tensor
    q_norm: nn.Module | None
    k_norm: nn.Module | None


@attrs.define
class _Chunk:
    """A launched decode chunk whose tokens have not been handed to the scheduler yet."""

    slots: list[int]
    """The slots it reports; :meth:`FastRunner.release` takes a slot out."""
    k: int
    batch: int
    buf: int
    """Which host buffer pair its history is copied into."""
    event: torch.cuda.Event | None
    """Recorded after that copy (None on CPU, where the copy is synchronous)."""


def _buckets(limit: int, start: int) -> list[int]:
    out = [start]
    while out[-1] < limit:
        out.append(out[-1] * 2)
    out[-1] = limit
    return out


class FastRunner:
    """A :class:`~miles_sdk.engines._runner.ModelRunner` with a static cache and CUDA graphs."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        *,
        max_batch_size: int,
        max_seq_len: int,
        decode_chunk: int = 16,
        cuda_graphs: bool | None = None,
        pipeline: bool = True,
    ) -> None:
        reason = fast_path_unsupported(model)
        if reason is not None:
            raise ValueError(f"FastRunner: unsupported model: {reason}")
        self._model = model
        self._device = device
        cfg = model.config
        inner = model.model
        attn0 = inner.layers[0].self_attn
        self._n_q = int(cfg.num_attention_heads)
        self._n_kv = int(cfg.num_key_value_heads)
        self._head_dim = int(attn0.head_dim)
        self._scale = float(attn0.scaling)
        self._eps = float(cfg.rms_norm_eps)
        self._dtype = next(model.parameters()).dtype
        self._share_prompt_reads = True
        """The samples of a GRPO group read their prompt's keys from the lead's slot (see
        ``rope_attend``); off, each row reads its own copy (the same keys)."""
        self.stats: dict[str, float] = defaultdict(float)
        """Seconds in prefill and decode (host clock), decode steps, graph captures, state uploads,
        ``spec_chunks`` (chunks launched before the scheduler saw the previous one) and
        ``spec_tokens_discarded`` (their slot-tokens dropped: slot released, weights changed)."""
        self.max_context = int(cfg.max_position_embeddings)
        self._capacity = min(self.max_context, max_seq_len)
        """Positions per slot in the KV cache now: starts at ``max_seq_len`` and grows
        (:meth:`reserve`) when a request needs more, up to the model's ``max_context``."""
        self._max_batch = max_batch_size
        self._chunk = decode_chunk
        self._graphs_on = device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self._layers: list[_Layer] = []
        self._live_ptrs: list[int] = []
        self._released = False
        self._bind_weights()
        n_layers = len(self._layers)
        # All layers in one tensor (a GRPO group's prompt KV is copied in one op per K and V), plus
        # a scratch slot past the last one for the padding rows of a graph-replayed prefill.
        self._n_layers = n_layers
        self._k_all, self._v_all = self._new_cache(self._capacity)
        self._k = list(self._k_all.unbind(0))
        self._v = list(self._v_all.unbind(0))
        self._build_rope_tables(inner)
        # Device-side decode state; the graphs read and advance these in place.
        b = max_batch_size
        self._tok = torch.zeros(b, dtype=torch.long, device=device)
        self._pos = torch.zeros(b, dtype=torch.long, device=device)
        self._step_idx = torch.zeros(b, dtype=torch.long, device=device)
        self._seed = torch.zeros(b, dtype=torch.long, device=device)
        self._temp = torch.ones(b, dtype=torch.float32, device=device)
        self._greedy = torch.ones(b, dtype=torch.bool, device=device)
        self._top_k = torch.full((b,), -1, dtype=torch.long, device=device)
        self._top_p = torch.ones(b, dtype=torch.float32, device=device)
        # Where each row reads its prompt's keys: (lead slot of its group, prompt length).
        self._src = torch.arange(b, dtype=torch.long, device=device)
        self._plen = torch.zeros(b, dtype=torch.long, device=device)
        self._counter = torch.zeros(1, dtype=torch.long, device=device)
        self._hist_tok = torch.zeros(decode_chunk, b, dtype=torch.long, device=device)
        self._hist_lp = torch.zeros(decode_chunk, b, dtype=torch.float32, device=device)
        # Two host landing buffers: chunk n+1's copy must not overwrite chunk n's while it is read.
        cuda = device.type == "cuda"
        self._host_tok = [torch.zeros(decode_chunk * b, dtype=torch.long, pin_memory=cuda) for _ in "ab"]
        self._host_lp = [torch.zeros(decode_chunk * b, dtype=torch.float32, pin_memory=cuda) for _ in "ab"]
        self._events = [torch.cuda.Event() if cuda else None for _ in "ab"]  # type: ignore[no-untyped-call]
        self._next_buf = 0
        self._pipeline = pipeline
        self._inflight: _Chunk | None = None
        self._synced = False
        """Device tok/pos/step_idx/params rows equal the host mirrors (plus any tokens in flight)
        for every active slot, so a chunk can launch without an upload."""
        self._stale_rows: set[int] = set()
        """Released rows that keep decoding as padding: zero their position at the next launch,
        so it stays below every active row's (the length bucket and ``k`` are sized from those)."""
        self._batch_buckets = _buckets(max_batch_size, 1)
        self._plan_graphs()
        # Host mirrors of the slots.
        self._pending: dict[int, list[int]] = {}
        self._params: dict[int, RowParams] = {}
        self._host_pos: dict[int, int] = {}
        self._host_src: dict[int, tuple[int, int]] = {}
        """Slot -> (lead slot, prompt length) for rows that read their prompt keys from their
        GRPO group's lead (``rope_attend``). A lead's release points its group back at their own
        copies (``_own_rows``), on the device before the next chunk: from then on the released
        row decodes as padding at position 0 of its slot, and a new prompt may be prefilled there."""
        self._members: dict[int, set[int]] = {}
        """Lead slot -> the slots reading its prompt keys (``_host_src``'s reverse)."""
        self._own_rows: set[int] = set()
        self._host_last: dict[int, int] = {}
        self._host_steps: dict[int, int] = {}

    # -- weights -------------------------------------------------------------------------------

    def _bind_weights(self) -> None:
        inner = self._model.model
        self._layers = []
        live: list[torch.Tensor] = [inner.embed_tokens.weight, inner.norm.weight, self._model.lm_head.weight]
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            biases = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            qkv_b = torch.cat([bb.detach() for bb in biases]) if biases[0] is not None else None
            if m.gate_proj.bias is not None:
                raise ValueError("FastRunner: MLP biases are not supported")
            self._layers.append(
                _Layer(
                    qkv_w=torch.cat(
                        [a.q_proj.weight.detach(), a.k_proj.weight.detach(), a.v_proj.weight.detach()]
                    ),
                    qkv_b=qkv_b,
                    o=a.o_proj,
                    gate_up_w=torch.cat([m.gate_proj.weight.detach(), m.up_proj.weight.detach()]),
                    down=m.down_proj,
                    in_norm=layer.input_layernorm.weight,
                    post_norm=layer.post_attention_layernorm.weight,
                    q_norm=getattr(a, "q_norm", None),
                    k_norm=getattr(a, "k_norm", None),
                )
            )
            live += [a.o_proj.weight, m.down_proj.weight, layer.input_layernorm.weight]
        self._live_ptrs = [t.data_ptr() for t in live]
        self._embed = inner.embed_tokens.weight
        self._final_norm = inner.norm.weight
        self._lm_head = self._model.lm_head.weight

    def weights_updated(self) -> None:
        """Refresh the fused q/k/v and gate/up copies in place (graph addresses stay valid).

        If the trainer replaced parameter tensors instead of updating them in place, every
        captured graph would read stale memory: then rebind and recapture.
        """
        # A chunk in flight sampled from the old weights; unpipelined, it would run after this.
        self._drain()
        if self._released:
            return  # the fused copies are made from the current weights on resume
        inner = self._model.model
        live = [inner.embed_tokens.weight, inner.norm.weight, self._model.lm_head.weight]
        for layer in inner.layers:
            live += [layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight, layer.input_layernorm.weight]
        if [t.data_ptr() for t in live] != self._live_ptrs:
            self._bind_weights()
            self._graphs.clear()
            if self._prefill_graphs is not None:
                self._prefill_graphs.clear()
            return
        with torch.no_grad():
            for mine, layer in zip(self._layers, inner.layers, strict=True):
                a, m = layer.self_attn, layer.mlp
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], out=mine.qkv_w)
                if mine.qkv_b is not None:
                    torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], out=mine.qkv_b)
                torch.cat([m.gate_proj.weight, m.up_proj.weight], out=mine.gate_up_w)

    def _build_rope_tables(self, inner: nn.Module) -> None:
        # The model's own rotary module computes the tables: any static RoPE variant it supports
        # (linear, llama3, yarn scaling, partial attention factors) comes out identical.
        positions = torch.arange(self._capacity, device=self._device)[None, :]
        dummy = torch.zeros(1, dtype=self._dtype, device=self._device)
        with torch.no_grad():
            rotary: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
            rotary = cast(
                Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], inner.rotary_emb
            )
            cos, sin = rotary(dummy, positions)
        self._cos = cos[0].to(self._dtype).contiguous()
        self._sin = sin[0].to(self._dtype).contiguous()

    # -- cache capacity ------------------------------------------------------------------------

    def _new_cache(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        # All layers in one tensor (a GRPO group's prompt KV is copied in one op per K and V), plus
        # a scratch slot past the last one for the padding rows of a graph-replayed prefill.
        shape = (self._n_layers, self._max_batch + 1, self._n_kv, length, self._head_dim)
        return (
            torch.zeros(shape, dtype=self._dtype, device=self._device),
            torch.zeros(shape, dtype=self._dtype, device=self._device),
        )

    def _plan_graphs(self) -> None:
        """Length buckets and (empty) graph caches for the current capacity: captured graphs hold
        the cache's addresses, so a grown cache starts them afresh."""
        self._len_buckets = _buckets(self._capacity, min(256, self._capacity))
        self._graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}
        self._prefill_graphs = (
            PrefillGraphs(
                self._prefill_body, self._device, scratch_slot=self._max_batch, max_width=self._capacity
            )
            if self._graphs_on
            else None
        )
        self._pool: Any = None  # torch's opaque graph memory-pool handle

    @property
    def capacity(self) -> int:
        """Positions per slot the KV cache holds now."""
        return self._capacity

    def reserve(self, length: int) -> bool:
        """Grow the KV cache so a slot holds ``length`` positions (capped at ``max_context``).

        Growth at least doubles (few re-plans over a run), keeps every slot's keys and values,
        and drops the chunk in flight (it wrote to the old cache; the next launch resamples the
        same tokens: the noise is keyed by seed and step). Returns False if the larger cache does
        not fit in memory; the current one is kept."""
        need = min(length, self.max_context)
        if self._released:
            self._capacity = max(self._capacity, need)  # built at this size on resume
            if need > len(self._cos):
                self._build_rope_tables(self._model.model)
            return True
        if need <= self._capacity:
            return True
        grown = min(self.max_context, max(need, 2 * self._capacity))
        self._drain()
        try:
            k_all, v_all = self._new_cache(grown)
        except torch.OutOfMemoryError:
            return False
        old = self._capacity
        k_all[..., :old, :] = self._k_all
        v_all[..., :old, :] = self._v_all
        self._k_all, self._v_all = k_all, v_all
        self._k = list(k_all.unbind(0))
        self._v = list(v_all.unbind(0))
        self._capacity = grown
        self._build_rope_tables(self._model.model)
        self._plan_graphs()
        self.stats["cache_grows"] += 1
        return True

    # -- slots ---------------------------------------------------------------------------------

    def admit(self, slot: int, prompt: list[int], params: RowParams) -> None:
        self._resume_memory()
        if slot in self._params:
            raise RuntimeError(f"FastRunner: slot {slot} is already in use")
        if not 0 <= slot < self._max_batch:
            raise RuntimeError(f"FastRunner: slot {slot} outside [0, {self._max_batch})")
        self._pending[slot] = list(prompt)
        self._params[slot] = params

    def release(self, slot: int) -> None:
        self._pending.pop(slot, None)
        self._params.pop(slot, None)
        if self._host_pos.pop(slot, None) is not None:
            self._stale_rows.add(slot)
        lead = self._host_src.pop(slot, (slot, 0))[0]
        self._members.get(lead, set()).discard(slot)
        for row in self._members.pop(slot, ()):
            del self._host_src[row]
            self._own_rows.add(row)
        self._host_last.pop(slot, None)
        self._host_steps.pop(slot, None)
        chunk = self._inflight
        if chunk is not None and slot in chunk.slots:
            # Its tokens in flight belong to the old request, never to one re-admitted here.
            chunk.slots.remove(slot)
            self.stats["spec_tokens_discarded"] += chunk.k
            if not chunk.slots:
                self._drain()  # no step may come to read it (the scheduler idles when empty)

    def reset(self) -> None:
        for slot in list(self._params):
            self.release(slot)
        self._drain()

    # -- memory release (offload_rollout) ------------------------------------------------------

    @property
    def released(self) -> bool:
        """True between :meth:`release_memory` and the next admission."""
        return self._released

    def release_memory(self) -> None:
        """Free the KV cache, the fused weight copies and the CUDA graphs (SGLang's
        ``release_memory_occupation``, Miles's ``--offload-rollout``): training gets their memory.
        Every slot is released; the next admission builds them again from
        the current weights, and graphs are captured again as shapes come up."""
        self.reset()
        self._graphs = {}
        self._prefill_graphs = None
        self._pool = None
        self._layers = []
        empty = torch.empty(0, dtype=self._dtype, device=self._device)
        self._k_all, self._v_all, self._k, self._v = empty, empty, [], []
        self._synced = False
        self._released = True
        if self._device.type == "cuda":
            torch.cuda.empty_cache()  # graph pools and the cache go back to the device, not only to torch

    def _resume_memory(self) -> None:
        if not self._released:
            return
        self._bind_weights()  # fused copies of the weights as they are now
        self._k_all, self._v_all = self._new_cache(self._capacity)
        self._k = list(self._k_all.unbind(0))
        self._v = list(self._v_all.unbind(0))
        self._plan_graphs()
        self._released = False

    # -- stepping ------------------------------------------------------------------------------

    def step(self, max_tokens: int = 1) -> StepResult:
        """Prefill queued slots, or return the next decode chunk.

        Pipelined, a chunk is launched before the previous one is read, so the GPU works while
        the host copies tokens out and the scheduler checks stops and refills slots. A release
        keeps the pipeline going (its row is dropped from the chunk in flight); an admission
        returns the chunk in flight with the prefill and relaunches after it; a weight update
        drops it (it sampled from the old weights). ``max_tokens`` counts from the tokens the
        scheduler has seen, so tokens in flight are subtracted from it; a speculative chunk may
        overshoot a request's own budget (the scheduler drops the excess), never the cache's capacity.
        """
        t0 = time.perf_counter()
        prev, self._inflight = self._inflight, None
        key = "decode_s"
        if prev is not None and self._synced and not self._pending:
            self._inflight = self._speculate(max_tokens - prev.k, ahead=prev.k)
            out = self._collect(prev)
        elif prev is None and not self._pending:
            chunk = self._launch(max(1, max_tokens), ahead=0)
            if chunk is None:
                return {}
            if self._pipeline:
                self._inflight = self._speculate(max_tokens - chunk.k, ahead=chunk.k)
            out = self._collect(chunk)
        else:
            out = self._collect(prev) if prev is not None else {}
            if self._pending:
                key = "prefill_s"
                self.stats["prefill_calls"] += 1
                out.update(self._prefill())
            if self._pipeline and not self._pending and self._host_pos:
                seen = min(len(out[s][0]) if s in out else 0 for s in self._host_pos)
                self._inflight = self._speculate(max_tokens - seen, ahead=0)
        self.stats[key] += time.perf_counter() - t0
        return out

    def _speculate(self, budget: int, ahead: int) -> _Chunk | None:
        chunk = self._launch(budget, ahead)
        if chunk is not None:
            self.stats["spec_chunks"] += 1
        return chunk

    def _launch(self, budget: int, ahead: int) -> _Chunk | None:
        """Queue up to ``budget`` decode steps for every active slot; ``ahead`` tokens per slot
        are already in flight (the host mirrors do not count them yet)."""
        active = sorted(self._host_pos)
        if not active:
            return None
        k = min(self._chunk, budget, min(self._capacity - self._host_pos[s] - ahead for s in active))
        if k < 1:
            return None
        batch = next(b for b in self._batch_buckets if b > active[-1])
        top = max(self._host_pos[s] for s in active) + ahead + k
        length = next(n for n in self._len_buckets if n >= top)
        filt = any(self._params[s].needs_filter for s in active)
        if not self._synced:
            assert ahead == 0, "a full upload needs host mirrors that count every token"
            self._upload(active, batch)
            self.stats["uploads"] += 1
        else:
            for s in self._stale_rows:
                if s < batch:
                    self._pos[s] = 0  # a fill kernel: no host sync, unlike an upload
            for s in self._own_rows:
                self._src[s] = s
                self._plen[s] = 0
        self._stale_rows.clear()
        self._own_rows.clear()
        self._synced = True
        self._counter.zero_()
        if self._graphs_on:
            graph = self._graphs.get((batch, length, filt)) or self._capture(batch, length, filt)
            for _ in range(k):
                graph.replay()
        else:
            for _ in range(k):
                self._decode_body(batch, length, filt)
        self.stats["decode_steps"] += k
        # Queued on the stream before the next chunk's replays overwrite the history.
        buf, self._next_buf = self._next_buf, 1 - self._next_buf
        n = k * batch
        self._host_tok[buf][:n].view(batch, k).copy_(self._hist_tok[:k, :batch].t(), non_blocking=True)
        self._host_lp[buf][:n].view(batch, k).copy_(self._hist_lp[:k, :batch].t(), non_blocking=True)
        event = self._events[buf]
        if event is not None:
            event.record()
        return _Chunk(slots=active, k=k, batch=batch, buf=buf, event=event)

    def _collect(self, chunk: _Chunk) -> StepResult:
        """Wait for ``chunk`` and advance the host mirrors of the slots it still reports."""
        if chunk.event is not None:
            chunk.event.synchronize()
        # One tolist() each: per-element tensor indexing costs ~1 us a token.
        n = chunk.k * chunk.batch
        toks: list[list[int]] = self._host_tok[chunk.buf][:n].view(chunk.batch, chunk.k).tolist()
        lps: list[list[float]] = self._host_lp[chunk.buf][:n].view(chunk.batch, chunk.k).tolist()
        result: StepResult = {}
        for s in chunk.slots:
            tk = toks[s]
            result[s] = (tk, lps[s])
            self._host_pos[s] += chunk.k
            self._host_steps[s] += chunk.k
            self._host_last[s] = tk[-1]
        return result

    def _drain(self) -> None:
        """Wait for the chunk in flight and drop it; the next launch re-uploads the state."""
        chunk, self._inflight = self._inflight, None
        if chunk is None:
            return
        if chunk.event is not None:
            chunk.event.synchronize()
        self.stats["spec_tokens_discarded"] += chunk.k * len(chunk.slots)
        self._synced = False

    def _upload(self, active: list[int], batch: int) -> None:
        tok = [0] * batch
        pos = [0] * batch
        steps = [0] * batch
        seed = [0] * batch
        temp = [1.0] * batch
        greedy = [True] * batch
        top_k = [-1] * batch
        top_p = [1.0] * batch
        src = list(range(batch))
        plen = [0] * batch
        for s in active:
            src[s], plen[s] = self._host_src.get(s, (s, 0))
            p = self._params[s]
            tok[s], pos[s], steps[s], seed[s] = (
                self._host_last[s],
                self._host_pos[s],
                self._host_steps[s],
                p.seed,
            )
            temp[s], greedy[s] = (1.0, True) if p.greedy else (p.temperature, False)
            top_k[s], top_p[s] = p.top_k, p.top_p
        for buf, vals in (
            (self._tok, tok), (self._pos, pos), (self._step_idx, steps), (self._seed, seed),
            (self._temp, temp), (self._greedy, greedy), (self._top_k, top_k), (self._top_p, top_p),
            (self._src, src), (self._plen, plen),
        ):  # fmt: skip
            buf[:batch].copy_(torch.tensor(vals, dtype=buf.dtype))

    def _capture(self, batch: int, length: int, filt: bool) -> torch.cuda.CUDAGraph:
        # Warm up once outside capture (Triton compiles, cuBLAS picks kernels), then restore the
        # state the warm-up advanced: the cache writes it made are rewritten identically later.
        saved = [t.clone() for t in (self._tok, self._pos, self._step_idx, self._counter)]
        graph, _ = capture(lambda: self._decode_body(batch, length, filt), self._device, self._pool)
        self._pool = graph.pool()
        for dst, src in zip((self._tok, self._pos, self._step_idx, self._counter), saved, strict=True):
            dst.copy_(src)
        self._graphs[(batch, length, filt)] = graph
        self.stats["graph_captures"] += 1
        return graph

    def _decode_body(self, batch: int, length: int, filt: bool) -> None:
        pos, src, plen = self._pos[:batch], self._src[:batch], self._plen[:batch]

        def attend(li: int, qkv: torch.Tensor) -> torch.Tensor:
            # Rows are slots here: RoPE, the cache store and attention in one kernel.
            return rope_attend(
                qkv,
                self._cos,
                self._sin,
                pos,
                src,
                plen,
                self._k[li],
                self._v[li],
                self._n_q,
                length,
                self._scale,
            )

        mlp_out, res = self._forward_rows(self._tok[:batch], attend)
        logits = self._logits(mlp_out, res)
        temp, greedy = self._temp[:batch], self._greedy[:batch]
        seed, steps = self._seed[:batch], self._step_idx[:batch]
        state = (self._tok[:batch], pos, self._hist_tok[:, :batch], self._hist_lp[:, :batch], self._counter)
        if not filt:
            sample_advance(logits, temp, greedy, seed, steps, state)
            return
        # top-k / top-p rows: sort-based filter in torch (rare in RL rollouts), same noise.
        scaled = logits.float() / temp[:, None]
        cand = top_k_top_p_filter(scaled, self._top_k[:batch], self._top_p[:batch])
        cand = torch.where(greedy[:, None], scaled, cand)
        tokens, _ = sample_plain(cand, torch.ones_like(temp), greedy, seed, steps)
        logp = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
        advance(tokens, logp, steps, state)

    def _prefill(self) -> StepResult:
        # Identical prompts (the n samples of a GRPO group) are computed once: the lead slot of
        # each group runs the forward pass and its KV rows are copied to the others. Admit a
        # prefix of the queue whose padded unique-prompt size fits the token budget.
        groups: dict[tuple[int, ...], list[int]] = {}
        width = 0
        for s, prompt in self._pending.items():
            key = tuple(prompt)
            w = max(width, len(prompt))
            if groups and key not in groups and w * (len(groups) + 1) > _PREFILL_TOKENS:
                break
            groups.setdefault(key, []).append(s)
            width = w
        uniq = list(groups)
        leads = [g[0] for g in groups.values()]
        for g in groups.values():
            for s in g:
                del self._pending[s]
        dev = self._device
        shape = self._prefill_graphs.shape(uniq) if self._prefill_graphs is not None else None
        if self._prefill_graphs is not None and shape is not None:
            logits = self._prefill_graphs.run(uniq, leads, shape)
            self.stats["prefill_graph_captures"] = self._prefill_graphs.captures
        else:
            ids = torch.zeros(len(uniq), width, dtype=torch.long)
            for i, p in enumerate(uniq):
                ids[i, : len(p)] = torch.tensor(p)
            last = torch.tensor([i * width + len(p) - 1 for i, p in enumerate(uniq)], device=dev)
            logits = self._prefill_body(ids.to(dev).view(-1), width, torch.tensor(leads, device=dev), last)
        slots = [s for g in groups.values() for s in g]
        row_of = [i for i, g in enumerate(groups.values()) for _ in g]
        copies = [(s, g[0]) for g in groups.values() for s in g[1:]]
        if copies:
            dst = torch.tensor([c[0] for c in copies], device=dev)
            src = torch.tensor([c[1] for c in copies], device=dev)
            for cache in (self._k_all, self._v_all):
                cache[:, dst, :, :width] = cache[:, src, :, :width]
        params = [self._params[s] for s in slots]
        rows = logits[torch.tensor(row_of, device=dev)]
        if any(p.needs_filter for p in params):
            tokens, logps = sample_rows(rows, params, [0] * len(slots))
        else:
            # The decode step's fused sampler (same noise, same tokens as sample_rows): torch's
            # path made ~10 passes over [rows x vocab] fp32 copies, 2-3 ms of W1's prefill.
            greedy = [p.greedy for p in params]
            tokens, logps = sample_plain(
                rows,
                torch.tensor([1.0 if g else p.temperature for g, p in zip(greedy, params)], device=dev),
                torch.tensor(greedy, device=dev),
                torch.tensor([p.seed for p in params], device=dev),
                torch.zeros(len(params), dtype=torch.long, device=dev),
            )
        result: StepResult = {}
        for s, r, tok, lp in zip(slots, row_of, tokens.tolist(), logps.tolist(), strict=True):
            result[s] = ([int(tok)], [float(lp)])
            self._host_pos[s] = len(uniq[r])
            self._host_last[s] = int(tok)
            self._host_steps[s] = 1
        if self._share_prompt_reads:
            for key, members in groups.items():
                if len(members) > 1:
                    self._members[members[0]] = set(members[1:])
                for member in members[1:]:
                    self._host_src[member] = (members[0], len(key))
        self._synced = False
        return result

    def _prefill_body(
        self, ids: torch.Tensor, width: int, leads: torch.Tensor, last: torch.Tensor
    ) -> torch.Tensor:
        """Prompts right-padded to ``width`` (flattened ``ids``) into the cache slots ``leads``;
        the logits at the rows ``last``. No host sync: graph-capturable."""
        n, d = leads.shape[0], self._head_dim
        pos = torch.arange(width, device=ids.device).repeat(n)

        slot = leads.repeat_interleave(width)

        def attend(li: int, qkv: torch.Tensor) -> torch.Tensor:
            q = rope_store(qkv, self._cos, self._sin, pos, slot, self._k[li], self._v[li], self._n_q)
            # Right padding under a causal mask: real tokens never see the pads after them.
            out = F.scaled_dot_product_attention(
                q.view(n, width, self._n_q, d).transpose(1, 2),
                self._k[li][leads, :, :width],
                self._v[li][leads, :, :width],
                is_causal=True,
                scale=self._scale,
                enable_gqa=self._n_q != self._n_kv,
            )
            return out.transpose(1, 2).reshape(n * width, self._n_q * d)

        mlp_out, res = self._forward_rows(ids, attend)
        return self._logits(mlp_out[last], res[last])

    # -- the decoder, shared by prefill and decode -----------------------------------------------

    def _forward_rows(
        self, tok: torch.Tensor, attend: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run every layer over rows (one token each); return the last MLP output and residual.
        ``attend(layer, qkv)`` applies RoPE, stores the new keys/values and attends."""
        eps, d, n_q = self._eps, self._head_dim, self._n_q
        x = F.embedding(tok, self._embed)
        mlp_out: torch.Tensor | None = None
        res: torch.Tensor | None = None
        for li, layer in enumerate(self._layers):
            if mlp_out is None:
                h, res = add_rmsnorm(x, None, layer.in_norm, eps)
            else:
                h, res = add_rmsnorm(mlp_out, res, layer.in_norm, eps)
            qkv = F.linear(h, layer.qkv_w, layer.qkv_b)
            if layer.q_norm is not None and layer.k_norm is not None:
                rows = qkv.shape[0]
                q_part = qkv[:, : n_q * d].view(rows, n_q, d)
                k_part = qkv[:, n_q * d : (n_q + self._n_kv) * d].view(rows, self._n_kv, d)
                qkv = torch.cat(
                    [
                        layer.q_norm(q_part).reshape(rows, -1),
                        layer.k_norm(k_part).reshape(rows, -1),
                        qkv[:, (n_q + self._n_kv) * d :],
                    ],
                    dim=-1,
                )
            o = F.linear(attend(li, qkv), layer.o.weight, layer.o.bias)
            h, res = add_rmsnorm(o, res, layer.post_norm, eps)
            mlp_out = F.linear(silu_mul(F.linear(h, layer.gate_up_w)), layer.down.weight)
        assert mlp_out is not None and res is not None
        return mlp_out, res

    def _logits(self, mlp_out: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        h, _ = add_rmsnorm(mlp_out, res, self._final_norm, self._eps)
        return F.linear(h, self._lm_head)
