"""Row operations of the layers: thin wrappers over ``fastattn._layers``.

Each function takes 2-D ``(N, C)`` arrays (rows with a contiguous last axis)
that the layers have already shaped and checked, picks a thread count from
the amount of work, and calls the fused Cython loop.  When the compiled
module is missing (a source checkout that was not built) the same
operations run as NumPy expressions, which are also the references the
tests compare against (``*_numpy``).
"""

import numpy as np

from ..threads import get_num_threads

try:  # pragma: no branch
    from .. import _layers as _k
except ImportError:  # pragma: no cover - unbuilt checkout
    _k = None

__all__ = ["add_norm", "bias_act", "swiglu", "ACTIVATIONS",
           "HAVE_KERNELS"]

HAVE_KERNELS = _k is not None
ACTIVATIONS = ("identity", "relu", "gelu", "gelu_tanh", "silu")
_NORM_CODE = {"none": 0, "layer": 1, "rms": 2}
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}

# Elements (weighted by cost) per extra thread.  The row kernels are
# memory-bound; with the projections on the same OpenMP team (no BLAS pool
# spinning next to them) the team is hot between kernels, and a second
# thread halved their time in an encoder layer (B=8, L=128, E=384: 4.6 ms
# -> 2.3 ms for 6 layers) from 2^16 weighted elements per thread on.
_ELEMS_PER_THREAD = 1 << 16


def _threads(n_elems, cost=1):
    n = get_num_threads()
    return int(max(1, min(n, (n_elems * cost) // _ELEMS_PER_THREAD)))


# ---------------------------------------------------------------------------
# NumPy references (float64 math where it matters, result in the input dtype)
# ---------------------------------------------------------------------------

def add_norm_numpy(a, a_bias, r, mode, w, b, eps):
    """Reference of :func:`add_norm`; returns ``(s, n)``."""
    s = a.astype(np.float64)
    if a_bias is not None:
        s = s + a_bias
    if r is not None:
        s = s + r
    n = None
    if mode == "layer":
        mean = s.mean(-1, keepdims=True)
        var = ((s - mean) ** 2).mean(-1, keepdims=True)
        n = (s - mean) / np.sqrt(var + eps)
    elif mode == "rms":
        n = s / np.sqrt((s * s).mean(-1, keepdims=True) + eps)
    if n is not None:
        if w is not None:
            n = n * w
        if b is not None:
            n = n + b
        n = n.astype(a.dtype)
    return s.astype(a.dtype), n


def _erf(x):
    from scipy.special import erf
    return erf(x)


def act_numpy(x, act):
    """Reference activations in float64."""
    x = np.asarray(x, dtype=np.float64)
    if act == "identity":
        return x
    if act == "relu":
        return np.maximum(x, 0.0)
    if act == "gelu":
        return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))
    if act == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    if act == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"unknown activation {act!r}")


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------

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
    if _k is None:  # pragma: no cover
        ss, nn = add_norm_numpy(a, a_bias, r, mode, w, b, eps)
        if s is not None:
            s[...] = ss
        if n is not None:
            n[...] = nn
        return s, n
    nt = _threads(a.size, 3)
    _k.add_norm(a, a_bias, r, _NORM_CODE[mode], w, b, float(eps), s, n, nt)
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
    if _k is None:  # pragma: no cover
        x = h if bias is None else h + bias
        out[...] = act_numpy(x, act)
        return out
    cost = 1 if act in ("identity", "relu") else 16
    nt = _threads(h.size, cost)
    _k.bias_act(h, bias, _ACT_CODE[act], out, nt)
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
    if _k is None:  # pragma: no cover
        x = h if bias is None else h + bias
        out[...] = act_numpy(x[:, :F], "silu") * x[:, F:]
        return out
    nt = _threads(out.size, 16)
    _k.swiglu(h, bias, out, nt)
    return out
