"""Every kernel call of the models, in one place.

The encoders never call a kernel directly: their GEMMs go through
:func:`dense`, their fused row passes through :func:`add_norm` and
:func:`bias_act`, their attention through :func:`attention`.  When a kernel's
calling convention changes, this module is the one place to adapt.

Batch invariance (a token's result never depends on which other tokens are
in the call, nor on the thread count) is a property of the kernels chosen
here:

* :func:`dense` always runs fastattn's tiled GEMM (``kernels.linear``), for
  any number of rows, on weights packed once at load (:func:`pack`) or on
  plain arrays (the same bits either way).  Each output element is one FMA chain over the input
  features in a fixed order (fixed 256-feature slices), whatever the number
  of rows, the tile shapes chosen for them or the thread count.  BLAS is not
  used: its blocking, and so its rounding, can depend on the row count.
* the row kernels (``fastattn.nn._ops``) process each row start to finish on
  one thread, in a fixed order.
* attention runs per sequence (``fastattn.varlen_attention``), never over
  padding.

The callers (the models) have shaped and checked every array already:
float32/float64 C-contiguous rows of one dtype; nothing is re-validated
here.
"""
import numpy as np

import fastattn as _fa
from .._dispatch import kernels as _kern
from ..threads import for_flops
from ..nn import _ops as _row

__all__ = ["dense", "pack", "add_norm", "bias_act", "attention", "ACTIVATIONS"]

#: activation names :func:`dense` / :func:`bias_act` accept
ACTIVATIONS = ("identity", "relu", "gelu", "gelu_tanh", "silu", "quick_gelu")

def pack(w):
    """``w`` (M, K) float32/float64 packed into the GEMM's weight panels
    (``kernels.pack_weight``), for :func:`dense`; anything else (another
    dtype, an already packed weight) is returned as it is.  The packed
    object replaces the array (same memory, plus at most one panel)."""
    if isinstance(w, np.ndarray) and w.ndim == 2 and w.dtype in (np.float32, np.float64):
        return _kern.pack_weight(w)
    return w


def dense(x, w, b=None, act=None, out=None):
    """``act(x @ w.T + b)`` on fastattn's tiled GEMM, for any row count.

    Parameters
    ----------
    x : ndarray, shape (N, K), contiguous rows
    w : ndarray, shape (M, K), C-contiguous (torch layout), or its
        :func:`pack` (faster: the panels are laid out once, at load)
    b : ndarray, shape (M,), optional
    act : None or one of :data:`ACTIVATIONS`
        ``"relu"`` is fused into the GEMM's store; the others run as one
        fused row pass (:func:`bias_act`) over the result.
    out : ndarray, shape (N, M), optional; must not overlap ``x`` or ``w``.
    """
    N, K = x.shape
    packed = isinstance(w, _kern.PackedWeight)
    M = w.N if packed else w.shape[0]
    if out is None:
        out = np.empty((N, M), dtype=x.dtype)
    if N == 0:
        return out
    fused = act is None or act == "identity" or act == "relu"
    # fewer threads for small calls (the policy in fastattn.threads); the
    # results do not depend on it
    nt = for_flops(None, 2 * N * M * K)
    it = x.itemsize
    if packed:
        call = _kern.LinearCall(x=x, xs=x.strides[0] // it, wp=w, bias=b if fused else None,
                                relu=act == "relu", out=out, ys=out.strides[0] // it,
                                nthreads=nt)
    else:
        call = _kern.LinearCall(x=x, xs=x.strides[0] // it, w=w, ws=w.strides[0] // it,
                                bias=b if fused else None, relu=act == "relu",
                                out=out, ys=out.strides[0] // it, nthreads=nt)
    _kern.linear(call)
    if not fused:
        bias_act(out, b, act, out=out)
    return out


def add_norm(a, a_bias, r, w, b, eps, n):
    """``n = LayerNorm(a + a_bias + r) * w + b`` in one fused row pass;
    ``a_bias`` and ``r`` may be None; ``n`` may be ``a`` or ``r``."""
    _row.add_norm(a, a_bias, r, "layer", w, b, eps, n=n)
    return n


def bias_act(h, bias, act, out):
    """``out = act(h + bias)`` row by row (``out`` may be ``h``)."""
    if act == "quick_gelu":     # x * sigmoid(1.702 x): elementwise NumPy
        if bias is not None:
            np.add(h, bias, out=out)
        elif out is not h:
            out[...] = h
        t = np.multiply(out, -1.702)
        np.exp(t, out=t)
        t += 1.0
        np.divide(out, t, out=out)
        return out
    _row.bias_act(h, bias, act, out=out)
    return out


def attention(qkv, cu_seqlens, num_heads, scale, out):
    """Self-attention of packed sequences straight out of a fused QKV
    projection.

    Parameters
    ----------
    qkv : ndarray, shape (total, 3 * num_heads * head_dim)
        Rows ``[q | k | v]``; read in place through views.
    cu_seqlens : int64 ndarray, shape (nseq + 1,)
    num_heads : int
    scale : float
    out : ndarray, shape (total, num_heads * head_dim)
    """
    T = qkv.shape[0]
    D = qkv.shape[1] // (3 * num_heads)
    q3 = qkv.reshape(T, 3, num_heads, D)
    o3 = out.reshape(T, num_heads, D)
    _fa.varlen_attention(q3[:, 0], q3[:, 1], q3[:, 2], cu_seqlens, scale=scale, out=o3)
    return out
