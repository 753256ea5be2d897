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

# the kernels take modes and activations as the codes fastattn._layers
# exports by name: _k.NORMS["layer"], _k.ACTIVATIONS["gelu"]


def add_norm(a, a_bias=None, r=None, mode="layer", w=None, b=None, eps=1e-5,
             s=None, n=None):
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
        ``mode != "none"``; a missing ``s`` is not stored.

    Returns
    -------
    (s, n) : the arrays written (``None`` for those not produced)
    """
    if mode != "none" and n is None:
        n = np.empty(a.shape, dtype=a.dtype)
    if mode == "none" and s is None:
        s = np.empty(a.shape, dtype=a.dtype)
    nt = for_rows(a.size, 3)
    _k.add_norm(a, a_bias, r, _k.NORMS[mode], w, b, float(eps), s, n, nt)
    return s, n


def bias_act(h, bias=None, act="relu", out=None):
    """``out = act(h + bias)`` in one pass; ``out`` may be ``h``.

    Parameters
    ----------
    h : ndarray, shape (N, C)
    bias : ndarray, shape (C,), optional
    act : {"identity", "relu", "gelu", "gelu_tanh", "silu"}
    out : ndarray, shape (N, C), optional
    """
    if out is None:
        out = np.empty(h.shape, dtype=h.dtype)
    cost = 1 if act in ("identity", "relu") else 16
    nt = for_rows(h.size, cost)
    _k.bias_act(h, bias, _k.ACTIVATIONS[act], out, nt)
    return out


def swiglu(h, bias=None, out=None):
    """``silu(g) * u`` where ``[g | u] = h + bias`` (row halves).

    Parameters
    ----------
    h : ndarray, shape (N, 2F)
    bias : ndarray, shape (2F,), optional
    out : ndarray, shape (N, F), optional; may be ``h[:, :F]``.
    """
    F = h.shape[1] // 2
    if out is None:
        out = np.empty((h.shape[0], F), dtype=h.dtype)
    nt = for_rows(out.size, 16)
    _k.swiglu(h, bias, out, nt)
    return out
