"""Preallocated key/value cache for incremental decoding.

One :class:`KVCache` holds, for every layer of a decoder, keys and values
of shape ``(batch, kv_heads, max_len, head_dim)`` allocated once.  A decoding
step appends the new positions in place (one copy of the new rows) and the
attention kernel reads the filled prefix as a strided view, so a step costs
one pass over the cache, never a reallocation.
"""
import numbers

import numpy as np

from .module import resolve_dtype

__all__ = ["KVCache", "LayerCache"]


def _pos(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


class LayerCache:
    """One layer's slice of a :class:`KVCache` (what a layer's ``cache=``
    argument takes).

    Attributes
    ----------
    k, v : ndarray, shape (B, Hkv, max_len, D)
        Views of the whole preallocated buffers.
    length : int
        Positions filled so far.
    cross_kv : tuple or None
        Projected encoder memory ``(k, v)`` for a decoder's cross-attention,
        stored on the first step and reused (cleared by :meth:`reset`).
    """

    def __init__(self, k, v):
        self.k = k
        self.v = v
        self.length = 0
        self.cross_kv = None

    @property
    def max_len(self):
        return self.k.shape[2]

    def reset(self):
        """Forget every position (the buffers are kept)."""
        self.length = 0
        self.cross_kv = None

    def append(self, k, v):
        """Copy ``k`` and ``v`` of shape (B, Hkv, L, D) after the filled
        positions; return views ``(k_all, v_all)`` of shape (B, Hkv, length, D).

        Raises
        ------
        ValueError
            on a shape mismatch or when the cache would overflow.
        """
        B, Hkv, n, D = self.k.shape
        for name, x in (("k", k), ("v", v)):
            if x.ndim != 4 or x.shape[0] != B or x.shape[1] != Hkv or x.shape[3] != D:
                raise ValueError(f"{name} of shape {x.shape} does not fit a cache of "
                                 f"(batch, kv_heads, max_len, head_dim) = {self.k.shape}")
            if x.dtype != self.k.dtype:
                raise TypeError(f"{name} has dtype {x.dtype}, the cache holds {self.k.dtype}")
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"k and v lengths differ: {k.shape}, {v.shape}")
        L = k.shape[2]
        end = self.length + L
        if end > n:
            raise ValueError(f"KV cache overflow: it holds {self.length} of "
                             f"max_len={n} positions; appending {L} would need {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Keys and values of every layer, preallocated.

    Parameters
    ----------
    num_layers : int
    batch_size : int
    num_kv_heads : int
    head_dim : int
    max_len : int
        Positions each layer can hold.
    dtype : float32 (default), float64 or bfloat16 (``ml_dtypes.bfloat16``:
        half the bytes; the decoders' ``dtype="bfloat16"`` uses it)

    Examples
    --------
    >>> cache = KVCache.for_module(decoder, batch_size=1, max_len=256)
    >>> out = decoder(prompt, memory, cache=cache)        # prefill
    >>> out = decoder(next_token, memory, cache=cache)    # one step
    """

    def __init__(self, num_layers, batch_size, num_kv_heads, head_dim, max_len,
                 dtype=None):
        if dtype is not None and np.dtype(dtype).name == "bfloat16":
            dt = np.dtype(dtype)    # attention reads bf16 K/V directly
        else:
            dt = resolve_dtype(dtype)
        shape = (_pos(num_layers, "num_layers"), _pos(batch_size, "batch_size"),
                 _pos(num_kv_heads, "num_kv_heads"), _pos(max_len, "max_len"),
                 _pos(head_dim, "head_dim"))
        self.k = np.zeros(shape, dtype=dt)
        self.v = np.zeros(shape, dtype=dt)
        self.layers = [LayerCache(self.k[i], self.v[i]) for i in range(shape[0])]

    @classmethod
    def for_module(cls, module, batch_size, max_len):
        """A cache sized for every self-attention of ``module`` (a
        MultiHeadAttention, a decoder layer or a decoder stack); the layers
        must agree on heads and sizes."""
        from .attention import MultiHeadAttention
        attns = []
        for name, m in module.named_modules():
            if isinstance(m, MultiHeadAttention) and (name == "" or name.endswith("self_attn.")):
                attns.append(m)
        if not attns:
            raise ValueError(f"{type(module).__name__} has no self-attention to cache")
        a = attns[0]
        return cls(len(attns), batch_size, a.num_kv_heads, a.head_dim, max_len, a.dtype)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    @property
    def length(self):
        """Positions held by the first layer (all layers after a full step)."""
        return self.layers[0].length

    @property
    def max_len(self):
        return self.k.shape[3]

    def reset(self):
        """Empty every layer (buffers are kept)."""
        for c in self.layers:
            c.reset()

    def __repr__(self):
        L, B, H, n, D = self.k.shape
        return (f"KVCache(num_layers={L}, batch_size={B}, num_kv_heads={H}, "
                f"head_dim={D}, max_len={n}, length={self.length}, dtype={self.k.dtype})")
