"""``dtype="bfloat16"`` for the decoders (GPT-2, Llama, Mistral, Qwen2).

Kept apart from the float32 routing in ``causal_lm.py`` (one dispatch line
there): :func:`convert` turns a model loaded in float32 into a bf16 one,
:func:`run` is its forward pass.

What is bf16 and what stays float32
-----------------------------------
* bf16, packed once at load (``fastattn.bf16.pack_weight``): every block's
  QKV, output, up (gate|up) and down projection, and the output head, so a
  decoding step reads half the weight bytes of float32.
* bf16 activations: exactly the GEMM inputs, written by the pass that makes
  them anyway: the norm passes (the float32 residual and a bf16 copy for the
  next GEMM, ``add_norm(..., nb=)``), GPT-2's up projection (bias and GELU
  fused into its bf16 store), Llama's SwiGLU pass (``swiglu(..., outb=)``),
  the attention (bf16 output for the output projection).
* float32: the residual stream, the norms, every accumulation, the softmax
  statistics, RoPE (applied to the float32 QKV output), the logits, the
  embedding tables (a lookup reads one row per token: nothing to save),
  norm weights and biases.
* the KV cache is bf16 (half the bytes a decoding step reads from it): K
  and V are rounded once when they are written (after RoPE, in float32),
  the query is rounded before the attention, which reads bf16 and keeps its
  softmax statistics and accumulation in float32.
"""
import numpy as np

from ..nn import _ops as _row
from ..threads import for_attention
from . import _ops

__all__ = ["convert", "run"]

_MATRICES = ("w_qkv", "w_o", "w_up", "w_down")


def map_matrices(m, fn):
    """Replace every block matrix and the output head (the arrays a decode
    step streams) by ``fn`` of it, one at a time; returns whether the head
    was the embedding (tied) before."""
    tied = m.lm_head is m.embed
    for b in m.blocks:
        for s in _MATRICES:
            w = getattr(b, s)
            if w is not None:
                setattr(b, s, fn(w))
    if m.lm_head is not None:
        m.lm_head = fn(m.lm_head)
    return tied


def convert(m, dtype, alloc=None):
    """Pack a float32-loaded model's GEMM weights as bf16, in place
    (``alloc``: where the packed weights go, as for ``_ops.pack_bf16``)."""
    m._lm_head_tied = map_matrices(m, lambda w: _ops.pack_bf16(w, alloc))
    m.dtype = dtype.type
    m._float_dtype = np.float32
    m._cache_dtype = dtype.type
    m._bf16 = True
    return m


def run(m, ids, positions, kv, p0, mask, last_only, rope=None):
    """``CausalLM._run`` for a bf16 model (same arguments and result)."""
    B, T = ids.shape
    H, Hkv, D, E = m.num_heads, m.num_kv_heads, m.head_dim, m.hidden_size
    b16 = m.dtype
    x, rope = m._embed(ids, positions, rope)
    S = p0 + T
    gqa = Hkv != H
    nthreads = for_attention(4 * B * H * T * S * D, False)
    mode, eps = m.norm, m.eps
    blocks = m.blocks
    b0 = blocks[0]
    N = B * T
    hb = np.empty((N, E), dtype=b16)            # the GEMMs' bf16 input rows
    _row.add_norm(x, None, None, mode, b0.n1w, b0.n1b, eps, nb=hb)
    buf = np.empty((B, T, H, D), dtype=b16)     # attention output, bf16
    o4 = buf.transpose(0, 2, 1, 3)
    a2 = buf.reshape(N, H * D)
    F = blocks[0].w_up.shape[0] // (2 if m.act == "swiglu" else 1)
    gb = np.empty((N, F), dtype=b16)
    dense = _ops.dense_bf16
    for li, blk in enumerate(blocks):
        qkv = dense(hb, blk.w_qkv, blk.b_qkv)   # float32: RoPE, then the cache
        # with a cache, k and v are rounded to bf16 if the cache is
        q, k, v = _ops.qkv_heads(qkv, B, T, H, Hkv, D, rope,
                                 None if kv is None else (kv[0][li], kv[1][li]), p0, S)
        if kv is None:                          # no cache: the same rounding
            k, v = k.astype(b16), v.astype(b16)
        _ops.decoder_attention_bf16(q, k, v, mask, blk.scale, gqa, blk.window, o4, nthreads)
        y = dense(a2, blk.w_o)
        _row.add_norm(y, blk.b_o, x, mode, blk.n2w, blk.n2b, eps, s=x, nb=hb)
        if m.act == "swiglu":
            u = dense(hb, blk.w_up)
            _row.swiglu(u, blk.b_up, outb=gb)
        else:                                   # bias + activation in the store
            dense(hb, blk.w_up, blk.b_up, act=m.act, out=gb)
        y = dense(gb, blk.w_down)
        if li + 1 < len(blocks):
            nb = blocks[li + 1]
            nw, nbias = nb.n1w, nb.n1b
        else:
            nw, nbias = m.final_w, m.final_b
        _row.add_norm(y, blk.b_down, x, mode, nw, nbias, eps, s=x, nb=hb)
    if last_only:
        hb = np.ascontiguousarray(hb.reshape(B, T, E)[:, -1])
    return dense(hb, m.lm_head)
