"""The contract between the embedded engine's scheduler and a model runner, plus the generic
runner that drives any transformers causal LM through its own forward and ``DynamicCache``.

The scheduler owns requests (stop checks, budgets, futures); a runner owns tensors (KV cache,
positions, sampling). Slots are small integers in ``[0, max_batch_size)`` handed out by the
scheduler; a runner never sees a request object.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedModel

from miles_sdk.engines._sampling import RowParams, sample_rows

__all__ = ["HFRunner", "ModelRunner", "StepResult"]

StepResult = dict[int, tuple[list[int], list[float]]]
"""slot -> (new token ids, their log-probs); one or more tokens per slot that advanced."""


class ModelRunner(Protocol):
    """Batched prefill/decode over slots. Called from one worker thread at a time."""

    max_context: int
    """Longest sequence (prompt + response) the model can hold (its position limit)."""

    def reserve(self, length: int) -> bool:
        """Make room for a sequence of ``length`` tokens (``<= max_context``) before its
        :meth:`admit`: a runner with preallocated caches grows them. False when it cannot (out
        of memory); the caller then fails that request alone."""
        ...

    def admit(self, slot: int, prompt: list[int], params: RowParams) -> None:
        """Queue ``prompt`` in ``slot``; the next :meth:`step` prefills it."""
        ...

    def release(self, slot: int) -> None:
        """Forget ``slot`` (finished, aborted or cancelled); its tokens are no longer needed."""
        ...

    def step(self, max_tokens: int = 1) -> StepResult:
        """Advance: prefill queued slots, or decode every running slot by 1 to ``max_tokens``
        tokens (a runner may overshoot a request's own budget; the scheduler drops the excess)."""
        ...

    def reset(self) -> None:
        """Drop every slot (the event loop that owned them is gone)."""
        ...

    def weights_updated(self) -> None:
        """The shared module's weights changed in place; refresh any derived copies."""
        ...


class HFRunner:
    """Runs any ``PreTrainedModel`` through its own ``forward`` with a left-padded batched cache.

    Rows are kept left-padded to a common length with a 0/1 attention mask and explicit position
    ids, so requests of any length share one forward pass. The batch is rebuilt only when slots
    join (after their prefill) or leave. This path is exact but copies the cache on every step
    (``DynamicCache`` grows by concatenation); the fast path in ``_fast.py`` is for speed.
    """

    def __init__(self, model: PreTrainedModel, device: torch.device) -> None:
        self._model = model
        self._device = device
        params = inspect.signature(model.forward).parameters
        # transformers renamed ``past_key_values`` to ``cache`` (5.2x); accept either.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        cfg = model.config.get_text_config(decoder=True)
        self.max_context: int = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        self._pending: dict[int, list[int]] = {}
        self._params: dict[int, RowParams] = {}
        self._done: dict[int, int] = {}
        """slot -> tokens sampled so far (the step index of the sampling noise)."""
        self._rows: list[int] = []
        self._released: set[int] = set()
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long, device=device)
        self._pos = torch.zeros(0, dtype=torch.long, device=device)
        self._last = torch.zeros(0, dtype=torch.long, device=device)

    # -- slot bookkeeping ----------------------------------------------------------------------

    def admit(self, slot: int, prompt: list[int], params: RowParams) -> None:
        if slot in self._params:
            raise RuntimeError(f"HFRunner: slot {slot} is already in use")
        self._pending[slot] = list(prompt)
        self._params[slot] = params
        self._done[slot] = 0

    def release(self, slot: int) -> None:
        self._pending.pop(slot, None)
        self._params.pop(slot, None)
        self._done.pop(slot, None)
        if slot in self._rows:
            self._released.add(slot)

    def reset(self) -> None:
        for slot in list(self._params):
            self.release(slot)
        self._compact()

    def weights_updated(self) -> None:
        """Nothing to do: every forward reads the module's parameters directly."""

    def reserve(self, length: int) -> bool:
        """Always room: the cache grows with each step."""
        return True

    # -- stepping ------------------------------------------------------------------------------

    def step(self, max_tokens: int = 1) -> StepResult:
        self._compact()
        if self._pending:
            return self._prefill()
        if self._rows:
            return self._decode()
        return {}

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        kwargs = {self._cache_kw: cache}
        out = self._model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kwargs
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _sample(self, slots: list[int], logits: torch.Tensor) -> tuple[torch.Tensor, StepResult]:
        params = [self._params[s] for s in slots]
        tokens, logps = sample_rows(logits, params, [self._done[s] for s in slots])
        result: StepResult = {}
        for slot, tok, lp in zip(slots, tokens.tolist(), logps.tolist(), strict=True):
            result[slot] = ([int(tok)], [float(lp)])
            self._done[slot] += 1
        return tokens, result

    def _prefill(self) -> StepResult:
        slots = list(self._pending)
        prompts = [self._pending.pop(s) for s in slots]
        width = max(len(p) for p in prompts)
        # Left-padded on the host, then one copy each: a copy per row cost a few ops each.
        ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        ids, mask = ids.to(self._device), mask.to(self._device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, pos, cache)
        tokens, result = self._sample(slots, logits)
        # Padded query rows attend to nothing; whatever they wrote (possibly NaN) must not leak
        # into later steps through 0 * NaN in the attention product.
        keep = mask.bool()[:, None, :, None]
        new_kv = [(torch.where(keep, k, 0), torch.where(keep, v, 0)) for k, v in _layers(cache)]
        self._merge(slots, new_kv, mask, pos[:, -1] + 1, tokens)
        return result

    def _decode(self) -> StepResult:
        assert self._cache is not None
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        logits = self._forward(self._last[:, None], self._mask, self._pos[:, None], self._cache)
        self._pos = self._pos + 1
        tokens, result = self._sample(self._rows, logits)
        self._last = tokens
        return result

    def _merge(
        self,
        slots: list[int],
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor,
        pos: torch.Tensor,
        last: torch.Tensor,
    ) -> None:
        if self._cache is None or not self._rows:
            merged_kv, merged_mask = kv, mask
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            merged_kv = [
                (
                    torch.cat([_lpad(k0, width), _lpad(k1, width)]),
                    torch.cat([_lpad(v0, width), _lpad(v1, width)]),
                )
                for (k0, v0), (k1, v1) in zip(_layers(self._cache), kv, strict=True)
            ]
            merged_mask = torch.cat([_lpad(self._mask, width), _lpad(mask, width)])
            pos = torch.cat([self._pos, pos])
            last = torch.cat([self._last, last])
        self._rows = self._rows + slots
        self._cache = DynamicCache(merged_kv)
        self._mask, self._pos, self._last = merged_mask, pos, last

    def _compact(self) -> None:
        if not self._released:
            return
        keep = [i for i, s in enumerate(self._rows) if s not in self._released]
        self._released.clear()
        if not keep:
            self._rows, self._cache = [], None
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self._device)
        mask = self._mask.index_select(0, idx)
        # Columns that are padding in every remaining row are dead weight: trim them.
        first = int(mask.any(dim=0).long().argmax())
        assert self._cache is not None
        kv = [
            (k.index_select(0, idx)[:, :, first:], v.index_select(0, idx)[:, :, first:])
            for k, v in _layers(self._cache)
        ]
        self._rows = [self._rows[i] for i in keep]
        self._cache = DynamicCache(kv)
        self._mask = mask[:, first:]
        self._pos = self._pos.index_select(0, idx)
        self._last = self._last.index_select(0, idx)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(
                f"HFRunner: cache layer {type(layer).__name__} holds no key/value tensors; not a plain decoder"
            )
        out.append((keys, values))
    return out


def _lpad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (dim -2 for KV [B,H,L,D], dim -1 for masks [B,L]) with zeros."""
    axis = -2 if x.dim() == 4 else -1
    missing = width - x.shape[axis]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[axis] = missing
    return torch.cat([x.new_zeros(shape), x], dim=axis)
