"""fastattn.nn.cache: KVCache / LayerCache on their own (preallocation,
in-place appends, views, overflow and shape errors, sizing from a module)."""
import numpy as np
import pytest

from fastattn.nn import (KVCache, MultiHeadAttention, TransformerDecoder,
                         TransformerDecoderLayer, LayerNorm)
from fastattn.nn.cache import LayerCache


def _kv(rng, B, H, L, D, dt=np.float32):
    return (rng.standard_normal((B, H, L, D)).astype(dt),
            rng.standard_normal((B, H, L, D)).astype(dt))


@pytest.mark.parametrize("dt", [None, np.float32, np.float64])
def test_preallocated_zero_filled(dt):
    c = KVCache(3, 2, 4, 8, 10, dtype=dt)
    want = np.dtype(np.float32 if dt is None else dt)
    assert c.k.shape == c.v.shape == (3, 2, 4, 10, 8)
    assert c.k.dtype == c.v.dtype == want
    assert not c.k.any() and not c.v.any()            # unused slots stay finite (zeros)
    assert len(c) == 3 and c.max_len == 10 and c.length == 0
    layers = list(c)
    assert len(layers) == 3 and all(isinstance(lc, LayerCache) for lc in layers)
    assert c[1] is layers[1]
    for i, lc in enumerate(layers):                   # each layer views its slice
        assert lc.k.base is not None and np.shares_memory(lc.k, c.k[i])
        assert lc.max_len == 10 and lc.length == 0 and lc.cross_kv is None
    assert repr(c) == ("KVCache(num_layers=3, batch_size=2, num_kv_heads=4, head_dim=8, "
                       f"max_len=10, length=0, dtype={want})")


@pytest.mark.parametrize("arg", range(5))
@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3", None])
def test_sizes_must_be_positive_ints(arg, bad):
    names = ["num_layers", "batch_size", "num_kv_heads", "head_dim", "max_len"]
    args = [1, 1, 1, 4, 4]
    args[arg] = bad
    with pytest.raises(ValueError, match=names[arg]):
        KVCache(*args)


@pytest.mark.parametrize("dt", [np.float16, np.int32, np.complex64])
def test_dtype_must_be_float32_or_float64(dt):
    with pytest.raises(TypeError, match="float32 or float64"):
        KVCache(1, 1, 1, 4, 4, dtype=dt)


def test_append_copies_in_place_and_returns_prefix_views(rng):
    c = KVCache(2, 2, 3, 5, 9)
    lc = c[0]
    buf_k, buf_v = lc.k, lc.v
    k1, v1 = _kv(rng, 2, 3, 4, 5)
    ka, va = lc.append(k1, v1)
    assert lc.length == 4 and c.length == 4 and c[1].length == 0
    assert ka.shape == va.shape == (2, 3, 4, 5)
    assert np.shares_memory(ka, c.k) and np.shares_memory(va, c.v)   # views, no copy out
    np.testing.assert_array_equal(ka, k1)
    np.testing.assert_array_equal(va, v1)
    k1[...] = 7                                       # the cache holds its own copy
    assert not (ka == 7).any()
    k2, v2 = _kv(rng, 2, 3, 5, 5)
    ka, va = lc.append(k2, v2)                        # fills exactly to max_len
    assert lc.length == 9 and ka.shape == (2, 3, 9, 5)
    np.testing.assert_array_equal(ka[:, :, 4:], k2)
    np.testing.assert_array_equal(va[:, :, 4:], v2)
    assert lc.k is buf_k and lc.v is buf_v            # never reallocated
    assert not c.k[1].any()                           # other layers untouched
    k0, v0 = _kv(rng, 2, 3, 0, 5)
    ka, _ = lc.append(k0, v0)                         # zero new positions: fine
    assert lc.length == 9 and ka.shape == (2, 3, 9, 5)


def test_overflow_raises_and_changes_nothing(rng):
    c = KVCache(1, 1, 2, 4, 6)
    lc = c[0]
    lc.append(*_kv(rng, 1, 2, 5, 4))
    before = c.k.copy()
    with pytest.raises(ValueError, match=r"KV cache overflow: it holds 5 of max_len=6 "
                                         r"positions; appending 2 would need 7"):
        lc.append(*_kv(rng, 1, 2, 2, 4))
    assert lc.length == 5
    np.testing.assert_array_equal(c.k, before)


@pytest.mark.parametrize("shape", [(2, 2, 1, 4), (1, 3, 1, 4), (1, 2, 1, 5), (2, 1, 4), (1, 1, 2, 1, 4)])
def test_append_shape_mismatch(rng, shape):
    lc = KVCache(1, 1, 2, 4, 6)[0]
    good = np.zeros((1, 2, 1, 4), np.float32)
    bad = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=r"k of shape .* does not fit a cache of"):
        lc.append(bad, good)
    with pytest.raises(ValueError, match=r"v of shape .* does not fit"):
        lc.append(good, bad)
    assert lc.length == 0


def test_append_dtype_and_length_mismatch():
    lc = KVCache(1, 1, 2, 4, 6)[0]
    k = np.zeros((1, 2, 2, 4), np.float32)
    with pytest.raises(TypeError, match="v has dtype float64, the cache holds float32"):
        lc.append(k, k.astype(np.float64))
    with pytest.raises(ValueError, match="k and v lengths differ"):
        lc.append(k, k[:, :, :1])
    assert lc.length == 0


def test_reset_keeps_buffers(rng):
    c = KVCache(2, 1, 1, 4, 8)
    for lc in c:
        lc.append(*_kv(rng, 1, 1, 3, 4))
        lc.cross_kv = ("k", "v")
    k = c.k
    c.reset()
    assert c.length == 0 and all(lc.length == 0 and lc.cross_kv is None for lc in c)
    assert c.k is k
    ka, _ = c[0].append(*_kv(rng, 1, 1, 8, 4))        # full capacity again
    assert ka.shape == (1, 1, 8, 4)
    c[0].reset()
    assert c[0].length == 0


def test_for_module_sizes_every_self_attention():
    mha = MultiHeadAttention(32, 8, num_kv_heads=2, dtype=np.float64, rng=0)
    c = KVCache.for_module(mha, batch_size=3, max_len=20)
    assert len(c) == 1 and c.k.shape == (1, 3, 2, 20, 4) and c.k.dtype == np.float64
    layer = TransformerDecoderLayer(32, 4, 64, batch_first=True, num_kv_heads=1, rng=0)
    dec = TransformerDecoder(layer, 3)
    c = KVCache.for_module(dec, batch_size=2, max_len=7)
    # one entry per decoder layer: self-attention only, cross-attention is not cached here
    assert len(c) == 3 and c.k.shape == (3, 2, 1, 7, 8) and c.k.dtype == np.float32
    c = KVCache.for_module(layer, batch_size=1, max_len=5)
    assert len(c) == 1
    with pytest.raises(ValueError, match="LayerNorm has no self-attention to cache"):
        KVCache.for_module(LayerNorm(8), batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        KVCache.for_module(mha, batch_size=1, max_len=0)
