"""Packed (padding-free) trainer forwards: a transformers attention implementation over cu_seqlens.

With ``pack_sequences`` the trainer concatenates a micro-batch into one ``[1, total]`` row, as
verl's ``use_remove_padding`` and Miles's Megatron THD format do, so no compute goes to padding
when response lengths vary. The sequence boundaries reach attention through the kwargs that
transformers models pass from ``forward(**kwargs)`` down to their attention function
(``cu_seq_lens_q/k``, ``max_length_q/k``: its FlashAttentionKwargs). ``miles_varlen`` attends
causally within each sequence: torch's flash varlen kernel on CUDA, else a loop of SDPA calls.

The model config's ``_attn_implementation`` names ``miles_varlen`` only inside
:func:`attention_implementation`: the embedded engine decodes from the same module and needs its
own implementation back. The switch sits outside any ``torch.compile``d layer; dynamo guards on
the name, which stays fixed across the trainer's passes.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from miles_sdk.backends._batching import SequenceRows, pack_tokens, pad_tokens

__all__ = [
    "ATTN_IMPLEMENTATION",
    "attention_implementation",
    "decoder_rows",
    "has_padding",
    "packing_enabled",
]

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "miles_varlen"


def _load_varlen() -> Callable[..., Any] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch before 2.9
        return None
    return varlen_attn


_varlen_attn = _load_varlen()

# varlen_attn's keywords change across torch releases (its first ones: ``is_causal``; 2.11:
# ``window_size=(-1, 0)`` for causal, no GQA; 2.13 adds ``enable_gqa``). Read once, outside any trace.
_VARLEN_PARAMS = (
    frozenset(inspect.signature(_varlen_attn).parameters) if _varlen_attn is not None else frozenset()
)
_CAUSAL_KWARGS: dict[str, Any] = (
    {"window_size": (-1, 0)} if "window_size" in _VARLEN_PARAMS else {"is_causal": True}
)
_flash_ready = False
"""Set by :func:`_probe_flash` once varlen_attn ran forward and backward on this machine. A probe
outside the compiled layers, because an error raised inside a compiled graph cannot fall back."""
_probed = False


def _packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence. ``query`` is [1, H, total, D]; returns
    ([1, total, H, D], None) as transformers' SDPA implementation does."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None or cu_k is None:
        raise RuntimeError(
            f"{ATTN_IMPLEMENTATION} attention called without cu_seq_lens (not a packed forward)"
        )
    _refuse_unsupported(module, query, attention_mask, dropout, kwargs)
    # [1, H, T, D] -> [T, H, D]; the projections were laid out [T, H, D], so this is usually a view.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    if q.is_cuda and torch.is_autocast_enabled("cuda"):
        # A custom op is outside autocast's cast lists, and RoPE's fp32 cos/sin promote q and k.
        dtype = torch.get_autocast_dtype("cuda")
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if _flash_eligible(q, scaling):
        out = _flash(q, k, v, cu_q, cu_k, kwargs["max_length_q"], kwargs["max_length_k"], scaling)
    else:
        out = _per_sequence(q, k, v, cu_q, scaling)
    return out.unsqueeze(0), None


def _refuse_unsupported(
    module: nn.Module, query: torch.Tensor, mask: torch.Tensor | None, dropout: float, kwargs: dict[str, Any]
) -> None:
    """Attention features this implementation would silently drop: an error, never a wrong result."""
    unsupported = [
        name
        for name, present in (
            ("an attention mask", mask is not None),
            ("a batch of more than one packed row", query.shape[0] != 1),
            ("attention dropout", dropout != 0.0),
            ("non-causal attention", not getattr(module, "is_causal", True)),
            *((name, kwargs.get(name) is not None) for name in ("sliding_window", "softcap", "s_aux")),
        )
        if present
    ]
    if unsupported:
        raise NotImplementedError(
            f"{ATTN_IMPLEMENTATION} attention ({type(module).__name__}) does not support "
            f"{', '.join(unsupported)}; set pack_sequences='off'"
        )


def _flash_eligible(q: torch.Tensor, scaling: float | None) -> bool:
    head_dim = q.shape[-1]
    default_scale = scaling is None or "scale" in _VARLEN_PARAMS or scaling == head_dim**-0.5
    return (
        _flash_ready
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and head_dim <= 256
        and head_dim % 8 == 0
        and default_scale
    )


def _flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scaling: float | None,
) -> torch.Tensor:
    assert _varlen_attn is not None  # _flash_ready implies it
    kwargs = dict(_CAUSAL_KWARGS)
    if scaling is not None and "scale" in _VARLEN_PARAMS:
        kwargs["scale"] = scaling
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            kwargs["enable_gqa"] = True
        else:  # query head h reads KV head h // groups, as transformers' repeat_kv
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out: torch.Tensor = _varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)
    return out


# Eager under compile_model: traced, its Python loop over the boundaries would specialise the
# graph on every micro-batch's layout (a recompile per layout); a graph break costs less.
@torch.compiler.disable  # type: ignore[untyped-decorator]
def _per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """The CPU path and the fallback: one causal SDPA call per sequence on [H, len, D] slices."""
    bounds = cu_seqlens.tolist()
    gqa = q.shape[1] != k.shape[1]
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    outs = [
        F.scaled_dot_product_attention(
            q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True, scale=scaling, enable_gqa=gqa
        )
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]
    return torch.cat(outs, dim=1).transpose(0, 1)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The sequence boundaries are in cu_seqlens; a dense [total, total] mask would make packed
    attention quadratic in the micro-batch's token count."""


AttentionInterface.register(ATTN_IMPLEMENTATION, _packed_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)


def _probe_flash(device: torch.device) -> None:
    global _flash_ready, _probed
    if _probed or device.type != "cuda":
        return
    _probed = True
    if _varlen_attn is None:
        log.info("pack_sequences: torch.nn.attention.varlen is missing; attention loops over sequences")
        return
    q = torch.randn(4, 2, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(4, 1, 64, device=device, dtype=torch.bfloat16)
    cu = torch.tensor([0, 3, 4], dtype=torch.int32, device=device)
    try:
        with torch.enable_grad():  # the first packed forward may run under no_grad (a log-prob pass)
            torch.autograd.backward(_flash(q, kv, kv, cu, cu, 3, 3, None).sum())
        _flash_ready = True
    except (NotImplementedError, RuntimeError) as exc:
        _flash_ready = False
        log.warning("pack_sequences: varlen_attn failed (%s); attention loops over sequences", exc)


def _cannot_pack(decoder: nn.Module) -> str | None:
    """Why ``decoder`` cannot run packed, or None. Packing relies on transformers dispatching
    every layer's attention through ``config._attn_implementation`` (``_supports_attention_backend``)
    and on plain causal full attention in every layer."""
    config = getattr(decoder, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return "its config has no _attn_implementation (not a transformers model)"
    if not getattr(decoder, "_supports_attention_backend", False):
        return "its layers do not dispatch attention through transformers' AttentionInterface"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "it has sliding-window or other non-full attention layers"
    for name in ("sliding_window", "attn_logit_softcapping"):
        if getattr(config, name, None) is not None:
            return f"its config sets {name}"
    if getattr(config, "attention_dropout", 0.0):
        return "its config sets attention_dropout"
    return None


_PROBE_TOKENS = [[1, 2, 3, 4], [5, 6, 7]]


def _compute_device(module: nn.Module) -> torch.device:
    """Where ``module``'s forward computes: its parameters' device, except for an FSDP-sharded
    module, whose shards may sit in host memory (CPU offload) while it computes on its mesh's device."""
    param = next(module.parameters())
    mesh = getattr(param, "device_mesh", None)  # a DTensor shard
    return (
        torch.device(mesh.device_type, torch.cuda.current_device())
        if mesh is not None and mesh.device_type == "cuda"
        else param.device
    )


def _packed_forward_differs(decoder: nn.Module) -> str | None:
    """Why a packed forward of two short sequences differs from the padded one, or None.

    The class checks cannot see a model whose forward drops the packed layout's kwargs (its
    attention would then span both sequences): one tiny forward each way, eval mode, no grad."""
    device = _compute_device(decoder)
    vocab = int(getattr(decoder.config, "vocab_size", 8))
    tokens = [[t % vocab for t in seq] for seq in _PROBE_TOKENS]
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.no_grad():
            packed = decoder_rows(decoder, tokens, device, pack=True)
            padded = decoder_rows(decoder, tokens, device, pack=False)
    except Exception as exc:  # noqa: BLE001 - any failure means this model must not pack
        return f"a packed test forward failed: {type(exc).__name__}: {exc}"
    finally:
        decoder.train(was_training)
    for i, seq in enumerate(tokens):
        a, b = packed.rows(i, 0, len(seq)).float(), padded.rows(i, 0, len(seq)).float()
        if not torch.allclose(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max()) + 1e-6):
            return "its packed test forward differs from the padded one (attention crosses sequences)"
    return None


def packing_enabled(mode: Literal["auto", "on", "off"], decoder: nn.Module, device: torch.device) -> bool:
    """Whether ``pack_sequences=mode`` packs this decoder's forwards (auto: CUDA only; a decoder
    that cannot pack pads under auto, with one log line, and is an error under on)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    reason = _cannot_pack(decoder) or _packed_forward_differs(decoder)
    if reason is None:
        return True
    name = type(decoder).__name__
    if mode == "on":
        raise ValueError(f"pack_sequences='on': {name} cannot pack ({reason}); set pack_sequences='off'")
    log.info("pack_sequences auto: %s cannot pack (%s); padding instead", name, reason)
    return False


def has_padding(tokens: list[list[int]]) -> bool:
    """Whether right-padding ``tokens`` adds pads. Equal lengths leave packing nothing to remove,
    and the padded forward keeps SDPA's fused GQA kernel (torch 2.11's varlen kernel needs the KV
    heads repeated): on W1's fixed lengths the packed train phase was 4% slower (H200)."""
    return len({len(t) for t in tokens}) > 1


@contextlib.contextmanager
def attention_implementation(decoder: nn.Module, name: str = ATTN_IMPLEMENTATION) -> Iterator[None]:
    """``decoder.config._attn_implementation = name`` for the block, restored even on error."""
    config: Any = decoder.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def decoder_rows(
    decoder: nn.Module,
    tokens: list[list[int]],
    device: torch.device,
    *,
    pack: bool,
    run: Callable[[Callable[[], Any]], Any] | None = None,
) -> SequenceRows:
    """The decoder's last hidden states per token, packed or right-padded. ``run`` wraps the call
    (the compiled layers' :meth:`~miles_sdk.backends._compile.CompiledLayers.run`)."""
    run = run or (lambda forward: forward())
    if not pack:
        input_ids, attention_mask = pad_tokens(tokens, device)
        out = run(lambda: decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
        return SequenceRows.padded(out.last_hidden_state)
    packed = pack_tokens(tokens, device)
    _probe_flash(device)
    # The packed length, the sequence count and the longest length change between micro-batches.
    # Under compile_model, torch's default (dynamic=None) recompiles with that size dynamic the
    # first time each changes (two recompiles in an H200 test), then reuses the graph. Rounding
    # the length up with a padding segment would not spare these recompiles.
    with attention_implementation(decoder):
        out = run(
            lambda: decoder(
                input_ids=packed.input_ids,
                position_ids=packed.position_ids,
                attention_mask=None,
                use_cache=False,
                cu_seq_lens_q=packed.cu_seqlens,
                cu_seq_lens_k=packed.cu_seqlens,
                max_length_q=packed.max_length,
                max_length_k=packed.max_length,
            )
        )
    return SequenceRows(out.last_hidden_state[0], packed.starts)
