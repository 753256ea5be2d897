"""Positional information for transformer layers.

* :func:`sinusoidal_encoding`: the fixed encoding of "Attention Is All You
  Need" (section 3.5), added to the embeddings.
* :class:`RotaryEmbedding`: rotary position embeddings (RoPE, Su et al.
  2021), applied to queries and keys after their projection, in either
  convention:

  - half-split (``interleaved=False``, GPT-NeoX / Hugging Face Llama
    ``rotate_half``): feature ``i`` pairs with feature ``i + r/2``;
  - interleaved (``interleaved=True``, RoFormer / GPT-J / Meta's Llama
    complex form): feature ``2i`` pairs with feature ``2i + 1``.

* :func:`alibi_slopes`: the per-head slopes of ALiBi (Press et al. 2022).
  The bias ``-slope[h] * |i - j|`` is added inside the attention kernel
  (``scaled_dot_product_attention(..., alibi_slopes=...)``); no bias tensor
  is ever built.

Sliding-window (local) attention is the ``window=(left, right)`` option of
:func:`fastattn.scaled_dot_product_attention`, and of
:class:`fastattn.nn.MultiHeadAttention`.
"""
import math
import numbers

import numpy as np

__all__ = ["sinusoidal_encoding", "RotaryEmbedding", "apply_rotary",
           "alibi_slopes"]


def _nonneg_int(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


def sinusoidal_encoding(length, d_model, *, offset=0, base=10000.0, dtype=np.float32):
    """The sinusoidal position encoding of Vaswani et al.

    ``PE[p, 2i] = sin(p / base**(2i / d_model))``,
    ``PE[p, 2i + 1] = cos(p / base**(2i / d_model))``.

    Parameters
    ----------
    length : int
        Number of positions.
    d_model : int
        Embedding size (odd sizes are allowed: the last column is a sine).
    offset : int
        First position (e.g. the length of a KV cache when decoding).
    base : float
    dtype : float32 (default) or float64

    Returns
    -------
    ndarray, shape (length, d_model)
        Computed in float64, then cast.
    """
    length = _nonneg_int(length, "length")
    d_model = _nonneg_int(d_model, "d_model")
    offset = _nonneg_int(offset, "offset")
    pos = np.arange(offset, offset + length, dtype=np.float64)[:, None]
    i2 = np.arange(0, d_model, 2, dtype=np.float64)
    ang = pos / base ** (i2 / d_model)
    pe = np.empty((length, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(ang)
    pe[:, 1::2] = np.cos(ang[:, :d_model // 2])
    return pe.astype(dtype)


def alibi_slopes(num_heads):
    """ALiBi slopes, shape ``(num_heads,)``, float64.

    For ``n`` a power of two: ``2 ** (-8 (h + 1) / n)``.  Otherwise the
    slopes of the closest smaller power of two, followed by every other slope
    of twice that (the rule of the reference implementation).
    """
    n = _nonneg_int(num_heads, "num_heads")
    if n == 0:
        raise ValueError("num_heads must be >= 1")

    def pow2(k):
        start = 2.0 ** (-(2.0 ** -(math.log2(k) - 3)))
        return [start ** (i + 1) for i in range(k)]

    if math.log2(n).is_integer():
        s = pow2(n)
    else:
        c = 2 ** math.floor(math.log2(n))
        s = pow2(c) + pow2(2 * c)[0::2][: n - c]
    return np.asarray(s, dtype=np.float64)


class RotaryEmbedding:
    """Rotary position embedding for heads of size ``head_dim``.

    Parameters
    ----------
    head_dim : int
        Size of each attention head.
    base : float
        ``theta`` of the frequencies ``base ** (-2i / rotary_dim)``.
    interleaved : bool
        Pairs ``(2i, 2i+1)`` (True) or ``(i, i + rotary_dim/2)`` (False,
        the default, as in Hugging Face Llama).
    rotary_dim : int, optional
        Rotate only the first ``rotary_dim`` features (partial rotary, as in
        GPT-NeoX / Phi); even; defaults to ``head_dim``.

    The cos/sin tables are computed in float64 and cached up to the longest
    position asked for; a :class:`RotaryEmbedding` holds no weights.
    """

    def __init__(self, head_dim, base=10000.0, interleaved=False, rotary_dim=None):
        self.head_dim = _nonneg_int(head_dim, "head_dim")
        r = self.head_dim if rotary_dim is None else _nonneg_int(rotary_dim, "rotary_dim")
        if r == 0 or r % 2 or r > self.head_dim:
            raise ValueError(f"rotary_dim must be even, >= 2 and <= head_dim "
                             f"({self.head_dim}), got {r}")
        self.rotary_dim = r
        self.base = float(base)
        self.interleaved = bool(interleaved)
        self.inv_freq = self.base ** (-np.arange(0, r, 2, dtype=np.float64) / r)
        self._cache = {}

    def __repr__(self):
        return (f"RotaryEmbedding(head_dim={self.head_dim}, base={self.base}, "
                f"interleaved={self.interleaved}, rotary_dim={self.rotary_dim})")

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_cache"] = {}
        return d

    def cos_sin(self, positions, dtype=np.float32):
        """cos and sin tables, each of shape ``positions.shape + (rotary_dim // 2,)``.

        Parameters
        ----------
        positions : int, or array_like of ints
            An int ``n`` means positions ``0 .. n-1``.
        dtype : float32 or float64
        """
        dtype = np.dtype(dtype)
        if isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
            n = _nonneg_int(positions, "positions")
            key = dtype
            c = self._cache.get(key)
            if c is None or c[0].shape[0] < n:
                m = max(n, 2 * (c[0].shape[0] if c is not None else 0), 64)
                ang = np.arange(m, dtype=np.float64)[:, None] * self.inv_freq
                c = (np.cos(ang).astype(dtype), np.sin(ang).astype(dtype))
                self._cache[key] = c
            return c[0][:n], c[1][:n]
        pos = np.asarray(positions)
        if pos.dtype.kind not in "iu":
            raise TypeError(f"positions must be integers, got dtype {pos.dtype}")
        if pos.size and pos.min() < 0:
            raise ValueError("positions must be non-negative")
        ang = pos.astype(np.float64)[..., None] * self.inv_freq
        return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)

    def __call__(self, x, positions=None, *, offset=0, out=None):
        """Rotate ``x`` of shape ``(..., L, head_dim)``; see :func:`apply_rotary`.

        ``positions`` (broadcastable to ``x.shape[:-1]``) defaults to
        ``offset + arange(L)``.
        """
        return self.apply(x, positions, offset=offset, out=out)

    def apply(self, x, positions=None, *, offset=0, out=None):
        """Rotate ``x`` of shape ``(..., L, head_dim)``; ``out`` may be ``x``
        (in place, works on strided views such as heads of a fused QKV
        projection)."""
        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"x must be float32 or float64, got {x.dtype}")
        if x.ndim < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have shape (..., L, {self.head_dim}), got {x.shape}")
        L = x.shape[-2]
        if positions is None:
            offset = _nonneg_int(offset, "offset")
            cos, sin = self.cos_sin(offset + L, x.dtype)
            cos, sin = cos[offset:], sin[offset:]
        else:
            cos, sin = self.cos_sin(positions, x.dtype)
            if cos.ndim == 1:
                raise ValueError("positions must have at least one axis (L,)")
        return apply_rotary(x, cos, sin, interleaved=self.interleaved, out=out)


def apply_rotary(x, cos, sin, *, interleaved=False, out=None):
    """Apply rotary embedding tables to ``x``.

    Parameters
    ----------
    x : ndarray, shape (..., L, D)
    cos, sin : ndarray, shape broadcastable to (..., L, r/2), r <= D even
        Angles ``position * inv_freq``; features beyond ``r`` pass through.
    interleaved : bool
        Pairs ``(2i, 2i+1)`` or ``(i, i + r/2)``.
    out : ndarray, optional
        Same shape and dtype as ``x``; may be ``x`` itself.

    Returns
    -------
    ndarray, shape (..., L, D)
    """
    h = cos.shape[-1]
    r = 2 * h
    if r > x.shape[-1]:
        raise ValueError(f"rotary tables cover {r} features but x has {x.shape[-1]}")
    if out is None:
        out = np.empty_like(x)
        if r < x.shape[-1]:
            out[..., r:] = x[..., r:]
    elif out is not x:
        if out.shape != x.shape or out.dtype != x.dtype:
            raise ValueError(f"out must have shape {x.shape} and dtype {x.dtype}")
        out[..., r:] = x[..., r:]
    if interleaved:
        a = x[..., 0:r:2]
        b = x[..., 1:r:2]
        oa, ob = out[..., 0:r:2], out[..., 1:r:2]
    else:
        a = x[..., :h]
        b = x[..., h:r]
        oa, ob = out[..., :h], out[..., h:r]
    a_cos = a * cos          # temporaries first: out may be x
    b_sin = b * sin
    b_cos = b * cos
    a_sin = a * sin
    np.subtract(a_cos, b_sin, out=oa)
    np.add(b_cos, a_sin, out=ob)
    return out
