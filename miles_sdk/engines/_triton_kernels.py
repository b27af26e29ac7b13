# mypy: ignore-errors
# Triton kernels are untyped by nature (tl.* is dynamic, and triton is absent on the CPU dev
# machines where mypy runs); the typed wrappers with torch references live in _kernels.py.
"""Fused Triton kernels for the fast decode path (CUDA only). See ``_kernels`` for semantics."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# bench.attn_splits on an H200: W1's decode (128 rows) runs best with 128 keys a block and 2 warps
# (5-9% over 64 and 4) and no key splits; split programs run best with 4 warps.
_ATTN_BLOCK_L = 128
_ATTN_WARPS = 2
_ATTN_SPLIT_WARPS = 4


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, s_ptr, H, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < H
    x = tl.load(x_ptr + row * H + offs, mask=m, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + row * H + offs, mask=m, other=0.0)
        s = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(s_ptr + row * H + offs, s, mask=m)
    else:
        s = x
    sf = s.to(tl.float32)
    var = tl.sum(sf * sf, axis=0) / H
    y = (sf * tl.rsqrt(var + eps)).to(x.dtype)
    w = tl.load(w_ptr + offs, mask=m, other=0.0)
    tl.store(out_ptr + row * H + offs, (w.to(tl.float32) * y.to(tl.float32)).to(x.dtype), mask=m)


def add_rmsnorm(x, residual, weight, eps):
    rows, hidden = x.shape
    out = torch.empty_like(x)
    s = torch.empty_like(x) if residual is not None else x
    _add_rmsnorm_kernel[(rows,)](
        x,
        residual if residual is not None else x,
        weight,
        out,
        s,
        hidden,
        eps,
        HAS_RES=residual is not None,
        BLOCK=triton.next_power_of_2(hidden),
        num_warps=4,
    )
    return out, s


@triton.jit
def _rope_store_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    slot_ptr,
    k_ptr,
    v_ptr,
    q_ptr,
    n_q,
    n_kv,
    qkv_stride,
    c_s,
    c_h,
    c_l,
    D: tl.constexpr,
    HALF: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + row).to(tl.int64)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    offs = tl.arange(0, HALF)
    src = qkv_ptr + row * qkv_stride + h * D
    x1 = tl.load(src + offs)
    x2 = tl.load(src + HALF + offs)
    dt = x1.dtype
    c1 = tl.load(cos_ptr + pos * D + offs).to(tl.float32)
    c2 = tl.load(cos_ptr + pos * D + HALF + offs).to(tl.float32)
    s1 = tl.load(sin_ptr + pos * D + offs).to(tl.float32)
    s2 = tl.load(sin_ptr + pos * D + HALF + offs).to(tl.float32)
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    # transformers rounds each product to the model dtype before the sum: do the same.
    o1 = ((f1 * c1).to(dt).to(tl.float32) + (-f2 * s1).to(dt).to(tl.float32)).to(dt)
    o2 = ((f2 * c2).to(dt).to(tl.float32) + (f1 * s2).to(dt).to(tl.float32)).to(dt)
    if h < n_q:
        q_dst = q_ptr + (row * n_q + h) * D
        tl.store(q_dst + offs, o1)
        tl.store(q_dst + HALF + offs, o2)
    else:
        kh = h - n_q
        at = slot * c_s + kh * c_h + pos * c_l
        tl.store(k_ptr + at + offs, o1)
        tl.store(k_ptr + at + HALF + offs, o2)
        vsrc = qkv_ptr + row * qkv_stride + (n_q + n_kv + kh) * D
        tl.store(v_ptr + at + offs, tl.load(vsrc + offs))
        tl.store(v_ptr + at + HALF + offs, tl.load(vsrc + HALF + offs))


def rope_store(qkv, cos, sin, pos, slot, k_cache, v_cache, n_q):
    rows = qkv.shape[0]
    n_kv, d = k_cache.shape[1], k_cache.shape[3]
    q = torch.empty(rows, n_q, d, dtype=qkv.dtype, device=qkv.device)
    _rope_store_kernel[(rows, n_q + n_kv)](
        qkv,
        cos,
        sin,
        pos,
        slot,
        k_cache,
        v_cache,
        q,
        n_q,
        n_kv,
        qkv.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        D=d,
        HALF=d // 2,
        num_warps=1,
    )
    return q


@triton.jit
def _online_softmax(s, m_i, l_i):
    # One block's step of flash attention's online softmax, shared by every attention kernel here.
    # s [GP, L]: scaled scores, -inf where masked. Returns the block's probabilities under the new
    # running max, the factor that rescales what was accumulated under the old max, the new max
    # and the new sum.
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _attend_span(
    q, k_ptr, v_ptr, base, c_l, start, end, scale,
    GP: tl.constexpr, D: tl.constexpr, BLOCK_L: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    # The key loop of both full-head decode kernels: q [GP, D] over keys start..end-1 at base (one
    # row and kv head of the cache). The state comes back unnormalised (running max, sum,
    # accumulator; empty if start >= end) so that a split can leave it for _merge_splits_kernel.
    d = tl.arange(0, D)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    for off in range(start, end, BLOCK_L):
        ls = off + tl.arange(0, BLOCK_L)
        lm = ls < end
        kv_off = base + ls[:, None] * c_l + d[None, :]
        k = tl.load(k_ptr + kv_off, mask=lm[:, None], other=0.0)
        s = tl.where(lm[None, :], tl.dot(q, tl.trans(k), input_precision=PREC) * scale, float("-inf"))
        p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i)
        v = tl.load(v_ptr + kv_off, mask=lm[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_i, l_i, acc


@triton.jit
def _rope_attend_kernel(
    qkv_ptr, cos_ptr, sin_ptr, pos_ptr, src_ptr, plen_ptr, k_ptr, v_ptr, out_ptr, scale, n_q, n_kv,
    qkv_stride, c_s, c_h, c_l,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, BLOCK_L: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    # One decode step of rope_store + decode_attention in one kernel: program (row = slot, kv head)
    # rotates its kv head's key and its G query heads, stores the new key/value at position pos,
    # attends over the cached keys 0..pos-1 and the new key from registers (no store -> load of
    # the same address within the program).
    row = tl.program_id(0).to(tl.int64)
    kh = tl.program_id(1)
    pos = tl.load(pos_ptr + row).to(tl.int64)
    h = tl.arange(0, HALF)
    g = tl.arange(0, GP)
    gm = g < G
    c1 = tl.load(cos_ptr + pos * D + h).to(tl.float32)
    c2 = tl.load(cos_ptr + pos * D + HALF + h).to(tl.float32)
    s1 = tl.load(sin_ptr + pos * D + h).to(tl.float32)
    s2 = tl.load(sin_ptr + pos * D + HALF + h).to(tl.float32)
    base_qkv = qkv_ptr + row * qkv_stride
    # The new key, rotated with the rounding of _rope_store_kernel, and the new value.
    k_src = base_qkv + (n_q + kh) * D
    k1 = tl.load(k_src + h)
    dt = k1.dtype
    kf1 = k1.to(tl.float32)
    kf2 = tl.load(k_src + HALF + h).to(tl.float32)
    kn1 = ((kf1 * c1).to(dt).to(tl.float32) + (-kf2 * s1).to(dt).to(tl.float32)).to(dt)
    kn2 = ((kf2 * c2).to(dt).to(tl.float32) + (kf1 * s2).to(dt).to(tl.float32)).to(dt)
    v_src = base_qkv + (n_q + n_kv + kh) * D
    vn1 = tl.load(v_src + h)
    vn2 = tl.load(v_src + HALF + h)
    at = row * c_s + kh * c_h + pos * c_l
    tl.store(k_ptr + at + h, kn1)
    tl.store(k_ptr + at + HALF + h, kn2)
    tl.store(v_ptr + at + h, vn1)
    tl.store(v_ptr + at + HALF + h, vn2)
    # The G query heads of this kv head, rotated the same way: [GP, HALF] halves.
    q_src = base_qkv + (kh * G + g[:, None]) * D
    qf1 = tl.load(q_src + h[None, :], mask=gm[:, None], other=0.0).to(tl.float32)
    qf2 = tl.load(q_src + HALF + h[None, :], mask=gm[:, None], other=0.0).to(tl.float32)
    q1 = ((qf1 * c1[None, :]).to(dt).to(tl.float32) + (-qf2 * s1[None, :]).to(dt).to(tl.float32)).to(dt)
    q2 = ((qf2 * c2[None, :]).to(dt).to(tl.float32) + (qf1 * s2[None, :]).to(dt).to(tl.float32)).to(dt)
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    acc1 = tl.zeros((GP, HALF), tl.float32)
    acc2 = tl.zeros((GP, HALF), tl.float32)
    base = row * c_s + kh * c_h
    # Keys below plen are the prompt, shared with the other samples of the row's group: read from
    # the group's lead slot src (its copy in this slot is identical), so the group's rows read one
    # copy and L2 serves all but the first.
    src_base = tl.load(src_ptr + row) * c_s + kh * c_h
    plen = tl.load(plen_ptr + row)
    # _attend_span's loop on head halves, as RoPE leaves q: joining the halves for a whole-head dot
    # would change the rounding of the scores this kernel was measured with.
    for off in range(0, pos, BLOCK_L):
        ls = off + tl.arange(0, BLOCK_L)
        lm = ls < pos
        kv_off = tl.where(ls < plen, src_base, base)[:, None] + ls[:, None] * c_l + h[None, :]
        ka = tl.load(k_ptr + kv_off, mask=lm[:, None], other=0.0)
        kb = tl.load(k_ptr + kv_off + HALF, mask=lm[:, None], other=0.0)
        s = tl.dot(q1, tl.trans(ka), input_precision=PREC) + tl.dot(q2, tl.trans(kb), input_precision=PREC)
        p, alpha, m_i, l_i = _online_softmax(tl.where(lm[None, :], s * scale, float("-inf")), m_i, l_i)
        va = tl.load(v_ptr + kv_off, mask=lm[:, None], other=0.0)
        vb = tl.load(v_ptr + kv_off + HALF, mask=lm[:, None], other=0.0)
        acc1 = acc1 * alpha[:, None] + tl.dot(p.to(dt), va, input_precision=PREC)
        acc2 = acc2 * alpha[:, None] + tl.dot(p.to(dt), vb, input_precision=PREC)
    # The new key at pos, from registers: a block of one key.
    s_new = (
        tl.sum(q1.to(tl.float32) * kn1.to(tl.float32)[None, :], axis=1)
        + tl.sum(q2.to(tl.float32) * kn2.to(tl.float32)[None, :], axis=1)
    ) * scale
    p_new, alpha, m_i, l_i = _online_softmax(s_new[:, None], m_i, l_i)
    acc1 = acc1 * alpha[:, None] + p_new * vn1.to(tl.float32)[None, :]
    acc2 = acc2 * alpha[:, None] + p_new * vn2.to(tl.float32)[None, :]
    out = out_ptr + row * n_q * D + (kh * G + g[:, None]) * D
    tl.store(out + h[None, :], (acc1 / l_i[:, None]).to(dt), mask=gm[:, None])
    tl.store(out + HALF + h[None, :], (acc2 / l_i[:, None]).to(dt), mask=gm[:, None])


def rope_attend(qkv, cos, sin, pos, src, plen, k_cache, v_cache, n_q, scale):
    rows = qkv.shape[0]
    n_kv, d = k_cache.shape[1], k_cache.shape[3]
    group = n_q // n_kv
    out = torch.empty(rows, n_q * d, dtype=qkv.dtype, device=qkv.device)
    _rope_attend_kernel[(rows, n_kv)](
        qkv, cos, sin, pos, src, plen, k_cache, v_cache, out, scale, n_q, n_kv, qkv.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        G=group, GP=max(16, triton.next_power_of_2(group)), D=d, HALF=d // 2, BLOCK_L=_ATTN_BLOCK_L,
        PREC="ieee" if qkv.dtype == torch.float32 else "tf32", num_warps=_ATTN_WARPS,
    )  # fmt: skip
    return out


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < inter
    g = tl.load(gu_ptr + row * 2 * inter + offs, mask=m, other=0.0)
    u = tl.load(gu_ptr + row * 2 * inter + inter + offs, mask=m, other=0.0)
    gf = g.to(tl.float32)
    a = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)
    tl.store(out_ptr + row * inter + offs, (a.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=m)


def silu_mul(gate_up):
    rows, two_i = gate_up.shape
    inter = two_i // 2
    out = torch.empty(rows, inter, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(inter, block))](gate_up, out, inter, BLOCK=block, num_warps=4)
    return out


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _sample_kernel(
    logits_ptr,
    temp_ptr,
    greedy_ptr,
    seed_ptr,
    step_ptr,
    part_m,
    part_s,
    part_score,
    part_idx,
    V,
    stride,
    CH,
    NS,
    BLOCK: tl.constexpr,
):
    # One vocabulary split of one row: max and sum-exp of logits/T (for the log-prob) and the
    # Gumbel-max candidate. The key is row_keys(seed, step) in uint32 math. Everything is kept per
    # lane across the tiles and reduced once at the end: a cross-lane reduction per tile made this
    # kernel latency-bound (bench.profile_decode: 0.093 ms a W1 step). Two sweeps, the second
    # from L2: the split's max first, so each element needs one exp.
    row = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    t = tl.load(temp_ptr + row)
    greedy = tl.load(greedy_ptr + row)
    seed = tl.load(seed_ptr + row)
    step = tl.load(step_ptr + row)
    lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    key = _mix32(lo ^ _mix32((step & 0xFFFFFFFF).to(tl.uint32) * 0x9E3779B9 + hi))
    start = sp * CH
    end = tl.minimum(start + CH, V)
    lane_max = tl.full((BLOCK,), float("-inf"), tl.float32)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * stride + idx, mask=idx < end, other=float("-inf")).to(tl.float32) / t
        lane_max = tl.maximum(lane_max, x)
    m = tl.max(lane_max, axis=0)
    lane_sum = tl.zeros((BLOCK,), tl.float32)
    lane_best = tl.full((BLOCK,), float("-inf"), tl.float32)
    lane_idx = tl.zeros((BLOCK,), tl.int32)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        msk = idx < end
        x = tl.load(logits_ptr + row * stride + idx, mask=msk, other=float("-inf")).to(tl.float32) / t
        lane_sum += tl.where(msk, tl.exp(x - m), 0.0)
        bits = _mix32(_mix32(idx.to(tl.uint32)) + key)
        u = ((bits >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # _sampling.uniform_from_bits
        noise = -tl.log(-tl.log(u))
        score = tl.where(greedy != 0, x, x + noise)
        score = tl.where(msk, score, float("-inf"))
        upd = score > lane_best  # strict: a lane keeps its first (lowest-index) maximum
        lane_best = tl.where(upd, score, lane_best)
        lane_idx = tl.where(upd, idx.to(tl.int32), lane_idx)
    s = tl.sum(lane_sum, axis=0)
    best = tl.max(lane_best, axis=0)
    # Ties go to the lowest vocabulary index, as torch.argmax and the reference do.
    bidx = tl.min(tl.where(lane_best == best, lane_idx, 2147483647), axis=0)
    o = row * NS + sp
    tl.store(part_m + o, m)
    tl.store(part_s + o, s)
    tl.store(part_score + o, best)
    tl.store(part_idx + o, bidx)


@triton.jit
def _sample_finish_kernel(
    logits_ptr,
    temp_ptr,
    part_m,
    part_s,
    part_score,
    part_idx,
    tok_out,
    lp_out,
    pos_ptr,
    step_ptr,
    counter_ptr,
    hist_tok,
    hist_lp,
    hist_stride,
    stride,
    NS,
    NSP: tl.constexpr,
    ADVANCE: tl.constexpr,
):
    # Pass 2, one program per row: merge the splits, then (ADVANCE) record the token in the
    # chunk history and move the row's decode state on, all inside the captured graph.
    row = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, NSP)
    jm = j < NS
    pm = tl.load(part_m + row * NS + j, mask=jm, other=float("-inf"))
    ps = tl.load(part_s + row * NS + j, mask=jm, other=0.0)
    psc = tl.load(part_score + row * NS + j, mask=jm, other=float("-inf"))
    pidx = tl.load(part_idx + row * NS + j, mask=jm, other=0)
    top = tl.max(pm, axis=0)
    lse = top + tl.log(tl.sum(ps * tl.exp(pm - top), axis=0))
    jb = tl.argmax(psc, axis=0)
    token = tl.sum(tl.where(j == jb, pidx, 0), axis=0).to(tl.int64)
    x = tl.load(logits_ptr + row * stride + token).to(tl.float32) / tl.load(temp_ptr + row)
    logp = x - lse
    tl.store(tok_out + row, token)
    tl.store(lp_out + row, logp)
    if ADVANCE:
        c = tl.load(counter_ptr)
        tl.store(hist_tok + c * hist_stride + row, token)
        tl.store(hist_lp + c * hist_stride + row, logp)
        tl.store(pos_ptr + row, tl.load(pos_ptr + row) + 1)
        tl.store(step_ptr + row, tl.load(step_ptr + row) + 1)


def _sample(logits, temps, greedy, seeds, steps, tok_out, advance):
    rows, vocab = logits.shape
    block = 2048
    splits = min(16, triton.cdiv(vocab, block))
    chunk = triton.cdiv(triton.cdiv(vocab, splits), block) * block
    splits = triton.cdiv(vocab, chunk)  # every split then holds at least one real token
    dev = logits.device
    part_m = torch.empty(rows, splits, dtype=torch.float32, device=dev)
    part_s = torch.empty_like(part_m)
    part_score = torch.empty_like(part_m)
    part_idx = torch.empty(rows, splits, dtype=torch.int32, device=dev)
    _sample_kernel[(rows, splits)](
        logits,
        temps,
        greedy,
        seeds,
        steps,
        part_m,
        part_s,
        part_score,
        part_idx,
        vocab,
        logits.stride(0),
        chunk,
        splits,
        BLOCK=block,
        num_warps=8,
    )
    lp_out = torch.empty(rows, dtype=torch.float32, device=dev)
    pos, counter, hist_tok, hist_lp = advance if advance is not None else (steps, steps, tok_out, lp_out)
    _sample_finish_kernel[(rows,)](
        logits,
        temps,
        part_m,
        part_s,
        part_score,
        part_idx,
        tok_out,
        lp_out,
        pos,
        steps,
        counter,
        hist_tok,
        hist_lp,
        hist_tok.stride(0),
        logits.stride(0),
        splits,
        NSP=triton.next_power_of_2(splits),
        ADVANCE=advance is not None,
        num_warps=1,
    )
    return tok_out, lp_out


def sample_plain(logits, temps, greedy, seeds, steps):
    tokens = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    return _sample(logits, temps, greedy, seeds, steps, tokens, None)


def sample_advance(logits, temps, greedy, seeds, steps, tok, pos, hist_tok, hist_lp, counter):
    _sample(logits, temps, greedy, seeds, steps, tok, (pos, counter, hist_tok, hist_lp))
    counter.add_(1)


@triton.jit
def _decode_attn_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    pos_ptr,
    out_ptr,
    scale,
    n_q,
    c_s,
    c_h,
    c_l,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    PREC: tl.constexpr,
):
    # One program per (row, kv head): the G query heads sharing that kv head attend together,
    # over keys 0..pos of the row only (no padding to a length bucket is read).
    row = tl.program_id(0).to(tl.int64)
    kh = tl.program_id(1)
    n_ctx = tl.load(pos_ptr + row) + 1
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    gm = g < G
    q = tl.load(q_ptr + (row * n_q + kh * G + g[:, None]) * D + d[None, :], mask=gm[:, None], other=0.0)
    base = row * c_s + kh * c_h
    _, l_i, acc = _attend_span(q, k_ptr, v_ptr, base, c_l, 0, n_ctx, scale, GP, D, BLOCK_L, PREC)
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + row * n_q * D + (kh * G + g[:, None]) * D + d[None, :], out.to(q.dtype), mask=gm[:, None]
    )


@triton.jit
def _decode_attn_split_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, scale, n_q, c_s, c_h, c_l,
    SPLITS: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
    BLOCK_L: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    # Flash-decoding: program (row, kv head, split) covers one contiguous share of keys 0..pos and
    # leaves an unnormalised partial (running max, sum, accumulator) for _merge_splits_kernel.
    # More programs in flight than one per (row, kv head) hide the latency of the key loads.
    row = tl.program_id(0).to(tl.int64)
    kh = tl.program_id(1)
    sp = tl.program_id(2)
    n_ctx = tl.load(pos_ptr + row) + 1
    span = tl.cdiv(tl.cdiv(n_ctx, SPLITS), BLOCK_L) * BLOCK_L
    start = sp * span
    end = tl.minimum(start + span, n_ctx)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    gm = g < G
    q = tl.load(q_ptr + (row * n_q + kh * G + g[:, None]) * D + d[None, :], mask=gm[:, None], other=0.0)
    base = row * c_s + kh * c_h
    m_i, l_i, acc = _attend_span(q, k_ptr, v_ptr, base, c_l, start, end, scale, GP, D, BLOCK_L, PREC)
    head = row * n_q + kh * G + g  # [GP]
    tl.store(m_ptr + head * SPLITS + sp, m_i, mask=gm)
    tl.store(l_ptr + head * SPLITS + sp, l_i, mask=gm)
    tl.store(acc_ptr + (head[:, None] * SPLITS + sp) * D + d[None, :], acc, mask=gm[:, None])


@triton.jit
def _merge_splits_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, SPLITS: tl.constexpr, D: tl.constexpr):
    head = tl.program_id(0).to(tl.int64)  # row * n_q + query head
    sp = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    part_max = tl.load(m_ptr + head * SPLITS + sp)
    part_sum = tl.load(l_ptr + head * SPLITS + sp)
    acc = tl.load(acc_ptr + (head * SPLITS + sp[:, None]) * D + d[None, :])
    top = tl.max(part_max, axis=0)  # finite: the first split always holds key 0
    w = tl.where(part_max == float("-inf"), 0.0, tl.exp(part_max - top))  # empty splits weigh 0
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(part_sum * w, axis=0)
    tl.store(out_ptr + head * D + d, out.to(out_ptr.dtype.element_ty))


def decode_attention(q, k_cache, v_cache, pos, scale, splits=1, block_l=_ATTN_BLOCK_L, num_warps=None):
    rows, n_q, d = q.shape
    n_kv = k_cache.shape[1]
    group = n_q // n_kv
    out = torch.empty(rows, n_q * d, dtype=q.dtype, device=q.device)
    if splits > 1:
        part_max = torch.empty(rows * n_q * splits, dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
        acc = torch.empty(rows * n_q * splits * d, dtype=torch.float32, device=q.device)
        _decode_attn_split_kernel[(rows, n_kv, splits)](
            q, k_cache, v_cache, pos, part_max, part_sum, acc, scale, n_q,
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            SPLITS=splits, G=group, GP=max(16, triton.next_power_of_2(group)), D=d, BLOCK_L=block_l,
            PREC="ieee" if q.dtype == torch.float32 else "tf32", num_warps=num_warps or _ATTN_SPLIT_WARPS,
        )  # fmt: skip
        _merge_splits_kernel[(rows * n_q,)](part_max, part_sum, acc, out, SPLITS=splits, D=d, num_warps=1)
        return out
    _decode_attn_kernel[(rows, n_kv)](
        q,
        k_cache,
        v_cache,
        pos,
        out,
        scale,
        n_q,
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        G=group,
        GP=max(16, triton.next_power_of_2(group)),
        D=d,
        BLOCK_L=block_l,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps or _ATTN_WARPS,
    )
    return out
