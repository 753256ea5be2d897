"""STAND-IN for ``fastattn.varlen_attention`` (not the real kernel).

The padding-free encoders call ``fastattn.varlen_attention`` (packed
sequences described by cumulative offsets, as in FlashAttention's varlen
API).  Until that kernel entry exists in this build of fastattn, the models
use :func:`varlen_attention` below instead: the same signature and the same
results, computed by :func:`fastattn.scaled_dot_product_attention` on views
of the packed arrays (nothing is copied): one call per run of consecutive
sequences of equal length (a batch axis), so up to one Python-level call
per sequence and layer, which the real kernel avoids;
``fastattn.models._ops.attention`` picks the real entry whenever
``hasattr(fastattn, "varlen_attention")``.

Only the models' internal calls are meant to reach this module: it checks
what those calls could get wrong (shapes, offsets) but is not a public API.
"""
import numpy as np

from ..functional import scaled_dot_product_attention

__all__ = ["varlen_attention"]


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k=None, *, is_causal=False,
                     scale=None, window=None, alibi_slopes=None,
                     causal_alignment="top_left", out=None, num_threads=None):
    """Attention over packed sequences (stand-in, see the module docstring).

    Parameters
    ----------
    q : ndarray, shape (total_q, Hq, D)
    k, v : ndarray, shape (total_k, Hkv, D) / (total_k, Hkv, Dv)
        ``Hkv`` divides ``Hq`` (grouped-query attention when smaller).
    cu_seqlens_q : int array, shape (nseq + 1,)
        ``[0, len0, len0 + len1, ..., total_q]``.
    cu_seqlens_k : int array, shape (nseq + 1,), optional
        Defaults to ``cu_seqlens_q``.
    is_causal, scale, window, alibi_slopes, causal_alignment, num_threads :
        As in :func:`fastattn.scaled_dot_product_attention`, per sequence.
    out : ndarray, shape (total_q, Hq, Dv), optional

    Returns
    -------
    ndarray, shape (total_q, Hq, Dv); rows of empty sequences do not exist,
    a sequence whose keys are empty gets zeros.
    """
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q, k, v must be 3-D (total, heads, head_dim), got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    cq = np.asarray(cu_seqlens_q)
    ck = cq if cu_seqlens_k is None else np.asarray(cu_seqlens_k)
    for name, c, total in (("cu_seqlens_q", cq, q.shape[0]), ("cu_seqlens_k", ck, k.shape[0])):
        if c.ndim != 1 or c.size < 1 or c.dtype.kind not in "iu":
            raise ValueError(f"{name} must be a 1-D integer array, got {c.dtype} {c.shape}")
        if c[0] != 0 or c[-1] != total or np.any(np.diff(c) < 0):
            raise ValueError(f"{name} must rise monotonically from 0 to {total}")
    if cq.size != ck.size:
        raise ValueError(f"cu_seqlens_q has {cq.size - 1} sequences, "
                         f"cu_seqlens_k {ck.size - 1}")
    Hq, Hkv = q.shape[1], k.shape[1]
    if out is None:
        out = np.zeros((q.shape[0], Hq, v.shape[2]), dtype=q.dtype)
    elif out.shape != (q.shape[0], Hq, v.shape[2]):
        raise ValueError(f"out has shape {out.shape}, expected "
                         f"{(q.shape[0], Hq, v.shape[2])}")
    lq = np.diff(cq).tolist()
    lk = np.diff(ck).tolist()
    a0, c0 = 0, 0
    i, nseq = 0, len(lq)
    while i < nseq:
        # a run of consecutive sequences with the same lengths is one call
        # with a batch axis (the kernel computes every (sequence, head) task
        # the same way whatever the batch: results are bit-identical)
        n, m = lq[i], lk[i]
        j = i + 1
        while j < nseq and lq[j] == n and lk[j] == m:
            j += 1
        g = j - i
        if n:
            o = out[a0:a0 + g * n].reshape(g, n, Hq, -1).transpose(0, 2, 1, 3)
            if m == 0:
                o[...] = 0
            else:
                def split(x, c, m=m):
                    return x[c:c + g * m].reshape(g, m, x.shape[1], -1).transpose(0, 2, 1, 3)
                scaled_dot_product_attention(
                    q[a0:a0 + g * n].reshape(g, n, Hq, -1).transpose(0, 2, 1, 3),
                    split(k, c0), split(v, c0), is_causal=is_causal, scale=scale,
                    enable_gqa=Hkv != Hq, causal_alignment=causal_alignment,
                    window=window, alibi_slopes=alibi_slopes, out=o,
                    num_threads=num_threads)
        a0 += g * n
        c0 += g * m
        i = j
    return out
