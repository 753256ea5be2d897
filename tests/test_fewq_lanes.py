"""Few-query attention (1..64 query rows per head): the lanes tile on a short
query block (it runs only the 16-lane groups the block fills) and the
rows/lanes choice of the fused kernel (``_auto_rows`` in _k_flash.pxi: rows
up to ``rows_auto_max_l(D, G)`` rows per head while L*G <= 64, else lanes).

Every compiled build, both layouts, L = 1..64 x head_dim {32, 64, 80, 128}
x non-causal / causal / GQA / sliding window against the float64
reference; the short-block lanes tile bit-identical to the full 64-lane
tile row by row; the auto choice bit-identical for any thread count, equal
to the layout the rule names, and the same per sequence in a packed batch."""
import numpy as np
import pytest
from conftest import assert_close, randn, tol

import fastattn
import fastattn.functional as F
from fastattn import _dispatch
from fastattn import reference as ref

BUILDS = _dispatch.available_builds()
sdpa = fastattn.scaled_dot_product_attention
LS = list(range(1, 65))
DS = (32, 64, 80, 128)
# (name, Hq, Hkv, keyword arguments)
MODES = (("plain", 2, 2, {}),
         ("causal", 2, 2, {"is_causal": True, "causal_alignment": "bottom_right"}),
         ("gqa", 4, 2, {"enable_gqa": True}),
         ("window", 2, 1, {"enable_gqa": True, "window": (90, 0),
                           "causal_alignment": "bottom_right"}))


def _inputs(rng, L, S, D, Hq, Hkv, dtype, B=1):
    return (randn(rng, (B, Hq, L, D), dtype), randn(rng, (B, Hkv, S, D), dtype),
            randn(rng, (B, Hkv, S, D), dtype))


@pytest.mark.parametrize("build_name", BUILDS)
@pytest.mark.parametrize("D", DS)
def test_every_row_count_matches_reference(rng, use, build_name, D):
    """L = 1..64, each with every mode, float32, forced lanes and auto; S =
    150 crosses two 64-key tiles and ends in a partial one.  (The rows
    layout at every L is test_kernels' and test_decode_attention's.)"""
    mod = _dispatch.load_build(build_name)
    S = 150
    for L in LS:
        for name, Hq, Hkv, kw in MODES:
            q, k, v = _inputs(rng, L, S, D, Hq, Hkv, np.float32)
            expected = ref.scaled_dot_product_attention(q.astype(np.float64), k.astype(np.float64),
                                                        v.astype(np.float64), **kw)
            for path in (mod.PATH_LANES, mod.PATH_AUTO):
                use(build_name, path)
                assert_close(sdpa(q, k, v, **kw), expected, tol(np.float32),
                             what=f"{build_name} path={path} L={L} D={D} {name}")


@pytest.mark.parametrize("build_name", BUILDS)
@pytest.mark.parametrize("L", [1, 5, 16, 17, 24, 33, 48, 63])
def test_float64_lanes(rng, use, build_name, L):
    mod = use(build_name, _dispatch.load_build(build_name).PATH_LANES)
    assert mod is not None
    for D in (32, 80):
        for name, Hq, Hkv, kw in MODES:
            q, k, v = _inputs(rng, L, 200, D, Hq, Hkv, np.float64)
            assert_close(sdpa(q, k, v, **kw), ref.scaled_dot_product_attention(q, k, v, **kw),
                         tol(np.float64), what=f"{build_name} L={L} D={D} {name}")


@pytest.mark.parametrize("build_name", BUILDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_block_bits_equal_full_tile(rng, use, build_name, dtype):
    """Non-causal rows are independent: the first n rows of a 64-row block
    (full tile) and the same n rows alone (n/16 lane groups) give the same
    bits, whatever n."""
    use(build_name, _dispatch.load_build(build_name).PATH_LANES)
    for D in DS:
        q, k, v = _inputs(rng, 64, 333, D, 4, 2, dtype)
        full = sdpa(q, k, v, enable_gqa=True)
        for n in range(1, 64):
            part = sdpa(q[:, :, :n], k, v, enable_gqa=True)
            assert np.array_equal(part, full[:, :, :n]), f"{build_name} D={D} n={n}"


@pytest.mark.parametrize("D", DS)
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (8, 2)])
def test_auto_bit_identical_any_thread_count(rng, many_threads, D, Hq, Hkv):
    S = 2100      # several split-K chunks on the rows path
    for L in (2, 12, 16, 23, 24, 40, 63):
        q, k, v = _inputs(rng, L, S, D, Hq, Hkv, np.float32, B=2)
        for kw in ({}, {"is_causal": True, "causal_alignment": "bottom_right"}):
            outs = [sdpa(q, k, v, enable_gqa=True, num_threads=n, **kw) for n in (1, 2, 3)]
            for o in outs[1:]:
                assert np.array_equal(o, outs[0]), f"threads changed bits L={L} D={D} {kw}"
            alone = sdpa(q[1:], k[1:], v[1:], enable_gqa=True, num_threads=2, **kw)
            assert np.array_equal(alone, outs[0][1:])


def test_auto_rule_picks_the_named_layout(rng, use):
    """PATH_AUTO gives exactly the bits of the layout the rule names, dense
    and per sequence of a packed batch."""
    name = BUILDS[0]
    mod = _dispatch.load_build(name)
    for D in (32, 64, 80, 128):
        for G in (1, 2, 8):
            lim = mod.rows_auto_max_l(D, G)
            assert 8 <= lim < 24, (D, G, lim)
            # wider heads and GQA groups keep the rows layout longer
            assert lim >= mod.rows_auto_max_l(min(D, 32), G)
            assert lim >= mod.rows_auto_max_l(D, 1)
    for (Hq, Hkv), D in (((4, 4), 64), ((8, 2), 64), ((8, 1), 32), ((4, 2), 128)):
        G = Hq // Hkv
        lim = mod.rows_auto_max_l(D, G)
        for L in (1, 3, 8, 9, 16, lim, lim + 1, 32, 40, 64):
            q, k, v = _inputs(rng, L, 1500, D, Hq, Hkv, np.float32)
            rows = L <= lim and L * G <= 64
            use(name)
            auto = sdpa(q, k, v, enable_gqa=True)
            use(name, mod.PATH_ROWS if rows else mod.PATH_LANES)
            named = sdpa(q, k, v, enable_gqa=True)
            use(name, mod.PATH_LANES if rows else mod.PATH_ROWS)
            other = sdpa(q, k, v, enable_gqa=True)
            assert np.array_equal(auto, named), f"L={L} G={G}"
            assert_close(other, auto, tol(np.float32))
    # packed: each sequence takes its own layout, equal to it alone
    use(name)
    Hq, Hkv, D = 4, 2, 80
    lens_q, lens_k = [5, 30, 23, 24, 64, 47, 1], [900, 1300, 40, 2000, 64, 700, 5]
    cq = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int64)
    ck = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int64)
    q = randn(rng, (cq[-1], Hq, D), np.float32)
    k = randn(rng, (ck[-1], Hkv, D), np.float32)
    v = randn(rng, (ck[-1], Hkv, D), np.float32)
    for kw in ({}, {"is_causal": True, "causal_alignment": "bottom_right"}):
        out = fastattn.varlen_attention(q, k, v, cq, ck, **kw)
        for i in range(len(lens_q)):
            qi = q[cq[i]:cq[i + 1]].transpose(1, 0, 2)[None]
            ki = k[ck[i]:ck[i + 1]].transpose(1, 0, 2)[None]
            vi = v[ck[i]:ck[i + 1]].transpose(1, 0, 2)[None]
            alone = sdpa(qi, ki, vi, enable_gqa=True, **kw)[0].transpose(1, 0, 2)
            assert np.array_equal(out[cq[i]:cq[i + 1]], alone), f"sequence {i} {kw}"
