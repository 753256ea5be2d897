"""float64 NumPy references for every public kernel.

Plain, obviously-correct NumPy: the oracle fastattn's tests compare against,
and public so users can validate their own pipelines the same way.  Each
function takes the same arguments as its counterpart in
:mod:`fastattn.functional` and returns float64, materialising the full
``(..., L, S)`` score matrix (so it needs O(L*S) memory per head).

Edge cases are defined here first and the kernels match them:
a row whose keys are all hidden (boolean False or ``-inf``) gives zeros;
NaN anywhere in a row's scores makes that row NaN; ``S == 0`` gives zeros.
"""
import math

import numpy as np

__all__ = ["softmax", "attention_scores", "weighted_sum", "visibility_mask",
           "scaled_dot_product_attention", "attention_weights", "add_norm",
           "activation"]


def softmax(x, axis=-1):
    """Stable softmax in float64 along ``axis``; all ``-inf`` rows give 0.

    Parameters
    ----------
    x : array_like
    axis : int
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    mx = np.max(x, axis=axis, keepdims=True)
    masked = np.isneginf(mx)
    mx = np.where(masked, 0.0, mx)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(x - mx)
        s = np.sum(e, axis=axis, keepdims=True)
        out = e / np.where(masked, 1.0, s)
    return np.where(masked, 0.0, out)


def attention_scores(q, k, scale=None):
    """``scale * q @ k^T`` in float64; scale defaults to ``1/sqrt(E)``."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return (q @ np.swapaxes(k, -1, -2)) * scale


def weighted_sum(p, v):
    """``p @ v`` in float64."""
    return np.asarray(p, dtype=np.float64) @ np.asarray(v, dtype=np.float64)


def visibility_mask(L, S, is_causal=False, causal_alignment="top_left",
                    window=None):
    """The boolean (L, S) mask that ``is_causal`` / ``window`` stand for:
    query i sees key j iff ``i' - left <= j <= i' + right``, where
    ``i' = i`` (top-left) or ``i + S - L`` (bottom-right) and causal means
    ``right = 0``."""
    left = right = None
    if window is not None:
        left, right = (None if w is None or w == -1 else int(w) for w in window)
    if is_causal:
        right = 0 if right is None else min(right, 0)
    off = S - L if causal_alignment == "bottom_right" else 0
    i = np.arange(L)[:, None] + off
    j = np.arange(S)[None, :]
    vis = np.ones((L, S), dtype=bool)
    if left is not None:
        vis &= j >= i - left
    if right is not None:
        vis &= j <= i + right
    return vis


def _apply_bias(sc, L, S, attn_mask, is_causal, causal_alignment, window,
                alibi_slopes):
    """Scores with every bias applied.  Hidden keys (outside the causal /
    window bounds, boolean False, additive ``-inf``) are *replaced* by
    ``-inf``, so a NaN score of a hidden key cannot leak; other additive
    values (NaN included) are added."""
    vis = visibility_mask(L, S, is_causal, causal_alignment, window)
    if alibi_slopes is not None:
        off = S - L if causal_alignment == "bottom_right" else 0
        dist = np.abs(np.arange(L)[:, None] + off - np.arange(S)[None, :])
        slopes = np.asarray(alibi_slopes, dtype=np.float64).reshape(-1)
        if np.ndim(sc) >= 3:
            sc = sc - slopes.reshape(-1, 1, 1) * dist   # (H, L, S)
        else:
            sc = sc - slopes[0] * dist
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        if m.dtype == np.bool_:
            vis = vis & m
        else:
            m = m.astype(np.float64)
            vis = vis & ~np.isneginf(m)
            sc = sc + np.where(np.isneginf(m), 0.0, m)
    return np.where(vis, sc, -np.inf)


def attention_weights(query, key, attn_mask=None, is_causal=False, scale=None,
                      enable_gqa=False, causal_alignment="top_left",
                      window=None, alibi_slopes=None):
    """float64 attention probabilities, shape (..., L, S)."""
    q = np.asarray(query, dtype=np.float64)
    k = np.asarray(key, dtype=np.float64)
    if enable_gqa:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
    L, S = q.shape[-2], k.shape[-2]
    sc = attention_scores(q, k, scale)
    with np.errstate(invalid="ignore"):
        sc = _apply_bias(sc, L, S, attn_mask, is_causal, causal_alignment,
                         window, alibi_slopes)
    return softmax(sc, axis=-1)


def scaled_dot_product_attention(query, key, value, attn_mask=None,
                                 dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, causal_alignment="top_left",
                                 window=None, alibi_slopes=None):
    """float64 reference of :func:`fastattn.scaled_dot_product_attention`
    (same arguments, same masking rules), by explicit masks and matmuls."""
    if dropout_p:
        raise NotImplementedError("dropout_p != 0 is not supported")
    v = np.asarray(value, dtype=np.float64)
    if enable_gqa:
        v = np.repeat(v, np.shape(query)[-3] // v.shape[-3], axis=-3)
    p = attention_weights(query, key, attn_mask, is_causal, scale, enable_gqa,
                          causal_alignment, window, alibi_slopes)
    if p.shape[-1] == 0:
        return np.zeros(np.broadcast_shapes(p.shape[:-1], v.shape[:-2] + (1,))
                        + (v.shape[-1],))
    return p @ v


# ---------------------------------------------------------------------------
# the layers' fused row kernels (fastattn.nn._ops)
# ---------------------------------------------------------------------------

def add_norm(a, a_bias, r, mode, w, b, eps):
    """Reference of ``fastattn.nn._ops.add_norm``: ``s = a + a_bias + r``
    and ``n = norm(s) * w + b`` (``mode`` ``"layer"``, ``"rms"`` or
    ``"none"``, then ``n`` is None; ``a_bias``, ``r``, ``w``, ``b`` may be
    None).  Returns ``(s, n)`` in float64; the variance is the biased,
    centred one."""
    s = np.asarray(a, dtype=np.float64)
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
    elif mode != "none":
        raise ValueError(f"unknown norm mode {mode!r}")
    if n is not None:
        if w is not None:
            n = n * w
        if b is not None:
            n = n + b
    return s, n


def activation(x, name):
    """The activation ``name`` (``"identity"``, ``"relu"``, ``"gelu"`` (exact,
    erf), ``"gelu_tanh"``, ``"silu"``) of ``x`` in float64.  ``"gelu"`` needs
    SciPy (for ``erf``)."""
    x = np.asarray(x, dtype=np.float64)
    if name == "identity":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        from scipy.special import erf
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"unknown activation {name!r}")
