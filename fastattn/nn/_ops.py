"""Row operations of the layers: thin wrappers over ``fastattn._layers``.

Each function takes 2-D ``(N, C)`` arrays (rows with a contiguous last axis)
that the layers have already shaped and checked, picks a thread count from
the amount of work (:func:`fastattn.threads.for_rows`), and calls the fused
Cython loop.  Their float64 references are
:func:`fastattn.reference.add_norm` and :func:`fastattn.reference.activation`.
"""

import numpy as np

from .. import _layers as _k
from ..threads import for_rows

__all__ = ["add_norm", "bias_act", "swiglu"]


def _check_bf16_out(x, like, shape, name):
    """A bfloat16 copy output: 2-byte elements (``ml_dtypes.bfloat16`` or a
    ``uint16`` view), the given shape, contiguous rows, float32 input."""
    if like.dtype != np.float32:
        raise TypeError(f"{name}: bfloat16 copies are made from float32 rows, got {like.dtype}")
    if x.dtype.itemsize != 2 or x.dtype.kind not in "uV" and x.dtype.name != "bfloat16":
        raise TypeError(f"{name} must be a bfloat16 array, got dtype {x.dtype}")
    if x.shape != tuple(shape) or (x.ndim == 2 and x.shape[0] and x.strides[1] != 2):
        raise ValueError(f"{name} must have shape {tuple(shape)} with contiguous rows, "
                         f"got shape {x.shape}, strides {x.strides}")

# the kernels take modes and activations as the codes fastattn._layers
# exports by name: _k.NORMS["layer"], _k.ACTIVATIONS["gelu"]


def add_norm(a, a_bias=None, r=None, mode="layer", w=None, b=None, eps=1e-5,
             s=None, n=None, nb=None, nthreads=None):
    """``s = a + a_bias + r`` then ``n = norm(s) * w + b``, in one fused pass.

    Parameters
    ----------
    a : ndarray, shape (N, C)
    a_bias : ndarray, shape (C,), optional
    r : ndarray, shape (N, C), optional
        Residual.
    mode : {"layer", "rms", "none"}
    w, b : ndarray, shape (C,), optional
    eps : float
    s, n : ndarray, shape (N, C), optional
        Outputs (the sum and the normalised sum); either may be ``a`` or
        ``r`` (same rows, in place).  A missing ``n`` is allocated when
        ``mode != "none"`` (unless ``nb`` is given); a missing ``s`` is not
        stored.
    nb : bfloat16 ndarray, shape (N, C), optional
        Also store the normalised sum rounded to bfloat16 (float32 ``a``
        only; the input of a bfloat16 GEMM), in the same pass.  With ``nb``
        and no ``n``, only the bfloat16 copy is stored.
    nthreads : int, optional
        Threads (default :func:`fastattn.threads.for_rows` of this call;
        the result does not depend on it: each row is one thread's).

    Returns
    -------
    (s, n) : the arrays written (``None`` for those not produced)
    """
    if nb is not None:
        if mode == "none":
            raise ValueError("add_norm: nb (the normalised sum in bfloat16) needs a norm")
        _check_bf16_out(nb, a, a.shape, "nb")
        if n is None and s is None and (a_bias is not None or r is not None):
            s = np.empty(a.shape, dtype=a.dtype)   # the sum needs a float32 row
    elif mode != "none" and n is None:
        n = np.empty(a.shape, dtype=a.dtype)
    if mode == "none" and s is None:
        s = np.empty(a.shape, dtype=a.dtype)
    nt = for_rows(a.size, 3) if nthreads is None else nthreads
    _k.add_norm(a, a_bias, r, _k.NORMS[mode], w, b, float(eps), s, n, nt, nb)
    return s, n


def bias_act(h, bias=None, act="relu", out=None, outb=None):
    """``out = act(h + bias)`` in one pass; ``out`` may be ``h``.

    Parameters
    ----------
    h : ndarray, shape (N, C)
    bias : ndarray, shape (C,), optional
    act : {"identity", "relu", "gelu", "gelu_tanh", "silu"}
    out : ndarray, shape (N, C), optional
    outb : bfloat16 ndarray, shape (N, C), optional
        Also store the result rounded to bfloat16 (float32 only), in the
        same pass.

    Returns ``outb`` when given, else ``out``.
    """
    if out is None:
        out = np.empty(h.shape, dtype=h.dtype)
    if outb is not None:
        _check_bf16_out(outb, h, h.shape, "outb")
    cost = 1 if act in ("identity", "relu") else 16
    nt = for_rows(h.size, cost)
    _k.bias_act(h, bias, _k.ACTIVATIONS[act], out, nt, outb)
    return out if outb is None else outb


def swiglu(h, bias=None, out=None, outb=None):
    """``silu(g) * u`` where ``[g | u] = h + bias`` (row halves).

    Parameters
    ----------
    h : ndarray, shape (N, 2F)
    bias : ndarray, shape (2F,), optional
    out : ndarray, shape (N, F), optional; may be ``h[:, :F]``.
    outb : bfloat16 ndarray, shape (N, F), optional
        Store the result rounded to bfloat16 (float32 only), in the same
        pass; then ``out`` is written only when given.

    Returns ``outb`` when given, else ``out``.
    """
    F = h.shape[1] // 2
    if outb is not None:
        _check_bf16_out(outb, h, (h.shape[0], F), "outb")
    elif out is None:
        out = np.empty((h.shape[0], F), dtype=h.dtype)
    nt = for_rows(h.shape[0] * F, 16)
    _k.swiglu(h, bias, out, nt, outb)
    return out if outb is None else outb
