"""The memory-per-GPU table of docs/scale-out.md, computed from a formula (nothing here is measured).

python scripts/scale_out_memory.py   # prints the markdown table (tests/distributed/test_docs_scale_out.py
                                     # checks that docs/scale-out.md holds exactly this output)

Per training GPU, train_backend="fsdp" over N ranks (the layout of miles_sdk/distributed/sharding.py):
- sharded state, 16 B per parameter / N: fp32 parameters (the masters), fp32 gradients, Adam's two
  fp32 moments;
- gathered bf16 working copies: the root group (embeddings, final norm, untied head) stays gathered
  from forward to backward (2 B per parameter), plus two decoder layers at a time (the one running
  and the one prefetched) with the fp32 gradient of one before its reduce-scatter (8 B per layer
  parameter in all);
- activations with gradient_checkpointing on: each layer's input kept in bf16 (2 B x tokens x hidden
  x layers) plus one layer recomputed in full (34 B x tokens x hidden, Korthikanti et al. 2022 with
  flash attention, so no sequence-squared term); the LM head runs in chunks and is left out.
The tokens of a micro-batch are TOKENS (micro_batch_size x sequence length, e.g. 4 x 2048).
A rank's start-up peak (miles_sdk/distributed/rank.py: built on the meta device, then only its
shards materialised, rank 0 broadcasting the weights one tensor at a time): its fp32 parameter
shards (4 B per parameter / N) plus the largest full tensor in flight, the fp32 embedding matrix.
"""

from __future__ import annotations

import attrs

GIB = 2**30
TOKENS = 8192
RANKS = (1, 2, 8)


@attrs.frozen
class Shape:
    """A decoder-only LM's sizes (Qwen2.5's published configs)."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def layer_params(self) -> int:
        kv = self.hidden // self.heads * self.kv_heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv + self.hidden + 2 * kv  # q,o + k,v + biases
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden  # SwiGLU MLP + 2 norms

    @property
    def root_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params

    def kv_bytes_per_token(self) -> int:
        """bf16 K and V of every layer for one token (an engine's KV cache)."""
        return 2 * self.layers * self.hidden // self.heads * self.kv_heads * 2


SHAPES = (
    Shape("0.5B", 896, 24, 4864, 14, 2, 151936, tied=True),
    Shape("1.5B", 1536, 28, 8960, 12, 2, 151936, tied=True),
    Shape("3B", 2048, 36, 11008, 16, 2, 151936, tied=True),
    Shape("7B", 3584, 28, 18944, 28, 4, 152064, tied=False),
    Shape("14B", 5120, 48, 13824, 40, 8, 152064, tied=False),
    Shape("32B", 5120, 64, 27648, 40, 8, 152064, tied=False),
)


def training_gib(shape: Shape, ranks: int, tokens: int = TOKENS) -> float:
    sharded = 16 * shape.params / ranks
    gathered = 2 * shape.root_params + 8 * shape.layer_params
    activations = 2 * tokens * shape.hidden * shape.layers + 34 * tokens * shape.hidden
    return (sharded + gathered + activations) / GIB


def table() -> str:
    head = (
        "| model | parameters | training GPU, N=1 | N=2 | N=8 | rank start-up peak, N=8 "
        "| engine replica: bf16 weights + KV per 1k tokens | measured |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for s in SHAPES:
        per_rank = " | ".join(f"{training_gib(s, n):.1f} GiB" for n in RANKS)
        startup = (4 * s.params / RANKS[-1] + 4 * s.vocab * s.hidden) / GIB
        engine = f"{2 * s.params / GIB:.1f} GiB + {1000 * s.kv_bytes_per_token() / GIB:.2f} GiB"
        rows.append(f"| {s.name} | {s.params / 1e9:.2f} B | {per_rank} | {startup:.1f} GiB | {engine} | no |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
