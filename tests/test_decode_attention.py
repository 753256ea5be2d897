"""Decode and few-query attention (the rows layout): one to a few dozen query
rows per kv head against thousands of keys, at head_dim 32/64/80/128 --
against the float64 reference, bit-identical for any thread count, and a
sequence's result independent of the batch it is in."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close, randn, tol

import fastattn
from fastattn import reference as ref

sdpa = fastattn.scaled_dot_product_attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [32, 64, 80, 128])
@pytest.mark.parametrize("L,Hq,Hkv", [(1, 8, 8), (1, 8, 2), (2, 4, 4), (4, 4, 1),
                                      (8, 2, 2), (16, 2, 2), (17, 1, 1), (32, 2, 2),
                                      (63, 1, 1)])
def test_few_query_matches_reference(rng, many_threads, dtype, D, L, Hq, Hkv):
    S = 2100
    q = randn(rng, (2, Hq, L, D), dtype)
    k = randn(rng, (2, Hkv, S, D), dtype)
    v = randn(rng, (2, Hkv, S, D), dtype)
    for kw in ({}, {"is_causal": True, "causal_alignment": "bottom_right"},
               {"window": (700, 0), "causal_alignment": "bottom_right"}):
        expected = ref.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        outs = [sdpa(q, k, v, enable_gqa=True, num_threads=n, **kw) for n in (1, 2, 3)]
        assert_close(outs[0], expected, tol(dtype), what=f"L={L} D={D} {kw}")
        for o in outs[1:]:
            assert np.array_equal(o, outs[0]), f"thread count changed bits L={L} D={D} {kw}"
        # one batch entry alone gives the same bits
        alone = sdpa(q[1:], k[1:], v[1:], enable_gqa=True, num_threads=2, **kw)
        assert np.array_equal(alone, outs[0][1:])


def test_few_query_special_values(rng):
    q = randn(rng, (1, 2, 16, 64), np.float32)
    k = randn(rng, (1, 2, 1500, 64), np.float32)
    v = randn(rng, (1, 2, 1500, 64), np.float32)
    q[0, 0, 3, 5] = np.nan
    m = np.ones((16, 1500), bool)
    m[7] = False                                     # a row that sees no key
    k[0, 1, 20] = np.inf                             # a hidden key's inf never leaks
    m[:, 20] = False
    out = sdpa(q, k, v, attn_mask=m)
    assert np.isnan(out[0, 0, 3]).all() and not np.isnan(np.delete(out[0, 0], 3, axis=0)).any()
    assert (out[0, :, 7] == 0).all()
    k[0, 1, 20] = 0                                  # (the reference would warn on inf)
    expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=m)
    fin = ~np.isnan(expected)
    assert_close(out[fin], expected[fin], tol(np.float32))
