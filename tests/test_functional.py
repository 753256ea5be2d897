"""fastattn.functional: the validated public API against the float64 reference.

Organisation:
  * shape grid (odd L, S, E; both dtypes; causal or not)
  * masks (bool / float, broadcast shapes, fully masked rows)
  * causal alignment, sliding window and ALiBi against explicit masks
  * GQA against explicitly repeated K/V
  * leading dimensions, strided and broadcast views, out=
  * no-copy guarantees (checked with tracemalloc, no timing)
  * NaN / inf propagation, zero-length sequences
  * attention_scores, softmax, weighted_sum, attention_weights
  * bad input: the right exception, naming the argument, before any C code
"""
import math
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.special
from conftest import DTYPES, assert_close, randn, tol

import fastattn
import fastattn.functional as F
from fastattn import reference as ref

sdpa = fastattn.scaled_dot_product_attention


def qkv(rng, dtype, L, S, E, Ev=None, lead=(2, 3), kv_lead=None):
    Ev = E if Ev is None else Ev
    kv_lead = lead if kv_lead is None else kv_lead
    return (randn(rng, lead + (L, E), dtype), randn(rng, kv_lead + (S, E), dtype),
            randn(rng, kv_lead + (S, Ev), dtype))


def check_sdpa(q, k, v, atol=None, **kw):
    out = sdpa(q, k, v, **kw)
    expected = ref.scaled_dot_product_attention(q, k, v, **kw)
    assert out.dtype == q.dtype
    assert_close(out, expected, atol or tol(q.dtype), what=f"sdpa {kw}")
    return out


def traced_peak(fn):
    """Peak bytes NumPy (and Python) allocate while fn runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------
# shape grid
# ---------------------------------------------------------------------------

SEQS = (1, 7, 63, 65, 127, 129, 1000)
EMBS = (1, 8, 64, 80, 96, 128, 256)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", SEQS)
@pytest.mark.parametrize("L", SEQS)
def test_sdpa_seq_grid(rng, dtype, L, S):
    # (L=S=1000 costs a few ms; the grid is every pair of odd lengths)
    q, k, v = qkv(rng, dtype, L, S, 16, 24, lead=(1, 2))
    check_sdpa(q, k, v)
    check_sdpa(q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E", EMBS)
@pytest.mark.parametrize("LS", [(1, 129), (7, 65), (65, 127), (129, 63)])
def test_sdpa_embedding_grid(rng, dtype, E, LS):
    L, S = LS
    for Ev in (E, 1, E + 3):
        q, k, v = qkv(rng, dtype, L, S, E, Ev, lead=(2,))
        check_sdpa(q, k, v, is_causal=bool(Ev == 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [2048])
def test_float_accuracy_long_sequences(rng, dtype, L):
    """The issue's accuracy bound: N(0,1) inputs up to L = S = 2048."""
    q, k, v = qkv(rng, dtype, L, L, 64, lead=(1,))
    check_sdpa(q, k, v)
    check_sdpa(q, k, v, is_causal=True)


def test_fused_accuracy_4096(rng):
    """Fused float32 kernel within 2e-6 of float64 at L = S = 4096, D = 64."""
    q, k, v = qkv(rng, np.float32, 4096, 4096, 64, lead=(1,))
    out = sdpa(q, k, v)
    assert_close(out, ref.scaled_dot_product_attention(q, k, v), 2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float64_is_computed_in_float64(rng, dtype):
    """float64 inputs must not take a float32 detour: the error against the
    reference is at the float64 rounding level, and float32 stays float32."""
    q, k, v = qkv(rng, dtype, 70, 90, 32)
    out = sdpa(q, k, v)
    assert out.dtype == dtype
    err = np.max(np.abs(out - ref.scaled_dot_product_attention(q, k, v)))
    assert err < (1e-13 if dtype == np.float64 else 1e-5)
    # float32 is not upcast: no float64 temporaries of the operands
    out = np.empty_like(out)
    peak = traced_peak(lambda: sdpa(q, k, v, out=out))
    assert peak < q.nbytes // 2


def test_default_scale_and_explicit_scale(rng):
    q, k, v = qkv(rng, np.float64, 9, 11, 20)
    a = sdpa(q, k, v)
    b = sdpa(q, k, v, scale=1 / math.sqrt(20))
    assert_close(a, b, 1e-14)
    c = sdpa(q, k, v, scale=0.5)
    assert not np.allclose(a, c)
    for s in (0.0, -1.3, 1e-30, 7.0, np.float32(0.25), 2):
        check_sdpa(q, k, v, scale=s)
    # scale = 0 gives the plain mean of V
    assert_close(sdpa(q, k, v, scale=0.0),
                 np.broadcast_to(v.mean(-2, keepdims=True), (2, 3, 9, 20)), 1e-14)


def test_python_lists_are_accepted():
    q = [[1.0, 0.0], [0.0, 1.0]]
    k = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    v = [[1.0], [2.0], [3.0]]
    out = sdpa(q, k, v)
    assert out.dtype == np.float64 and out.shape == (2, 1)
    assert_close(out, ref.scaled_dot_product_attention(q, k, v), 1e-14)


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------

def _mask_shapes(B, H, L, S):
    return [(B, H, L, S), (L, S), (1, S), (L, 1), (B, 1, 1, S), (H, 1, S),
            (H, L, S), (1, 1, 1, 1), (B, 1, L, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("LS", [(1, 5), (5, 1), (7, 70), (65, 129), (130, 63),
                                (3, 1500)])
def test_mask_broadcast_shapes(rng, dtype, kind, LS):
    B, H = 2, 3
    L, S = LS
    q, k, v = qkv(rng, dtype, L, S, 16, lead=(B, H))
    for shape in _mask_shapes(B, H, L, S):
        if kind == "bool":
            m = rng.random(shape) > 0.3
        else:
            m = randn(rng, shape, dtype)
            m[rng.random(shape) < 0.3] = -np.inf
        check_sdpa(q, k, v, attn_mask=m)
        check_sdpa(q, k, v, attn_mask=m, is_causal=True,
                   causal_alignment="bottom_right")


def test_mask_1d_broadcasts(rng):
    """A (S,) mask broadcasts to (..., L, S) like any NumPy/PyTorch operand
    (the reference and attention_weights accept it)."""
    q, k, v = qkv(rng, np.float64, 5, 6, 8)
    m = np.array([True, False, True, True, False, True])
    check_sdpa(q, k, v, attn_mask=m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bool_mask_equals_float_mask(rng, dtype):
    q, k, v = qkv(rng, dtype, 70, 140, 32)
    m = rng.random((2, 1, 70, 140)) > 0.4
    a = sdpa(q, k, v, attn_mask=m)
    b = sdpa(q, k, v, attn_mask=np.where(m, 0, -np.inf).astype(dtype))
    assert_close(a, b, tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_float_mask_is_added_to_scaled_scores(rng, dtype):
    """A float mask adds to scale * q @ k^T (it is not scaled itself)."""
    q, k, v = qkv(rng, dtype, 7, 9, 8)
    m = randn(rng, (7, 9), dtype) * 3
    out = sdpa(q, k, v, attn_mask=m, scale=0.2)
    s = 0.2 * (q.astype(np.float64) @ np.swapaxes(k, -1, -2)) + m
    p = scipy.special.softmax(s, axis=-1)
    assert_close(out, p @ v.astype(np.float64), tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("LS", [(1, 3000), (5, 70), (70, 130), (200, 64)])
def test_fully_masked_rows_are_zero(rng, dtype, kind, LS):
    L, S = LS
    q, k, v = qkv(rng, dtype, L, S, 16)
    vis = rng.random((2, 3, L, S)) > 0.3
    dead = rng.random((2, 3, L)) < 0.4
    dead[0, 0, 0] = True
    vis[dead] = False
    m = vis if kind == "bool" else np.where(vis, 0, -np.inf).astype(dtype)
    out = check_sdpa(q, k, v, attn_mask=m)
    assert np.all(np.isfinite(out))
    assert np.all(out[dead] == 0)
    assert np.all(np.any(out[~dead] != 0, axis=-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_all_hidden_everywhere(rng, dtype):
    q, k, v = qkv(rng, dtype, 70, 200, 8)
    for m in (np.zeros((70, 200), bool), np.full((1, 1), -np.inf, dtype)):
        out = sdpa(q, k, v, attn_mask=m)
        assert np.array_equal(out, np.zeros_like(out))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_strided_and_transposed_views(rng, dtype):
    q, k, v = qkv(rng, dtype, 66, 130, 16)
    big = randn(rng, (3, 2 * 66, 3 * 130), dtype)
    big[rng.random(big.shape) < 0.3] = -np.inf
    for m in (big[1, ::2, ::3], big[:, ::-2, 5:135][:1], big[0, :130, :66].T,
              np.broadcast_to(big[:1, :66, :1], (3, 66, 130))):
        check_sdpa(q, k, v, attn_mask=m)
        check_sdpa(q, k, v, attn_mask=m > -1, is_causal=True)


def test_mask_is_not_expanded_in_memory(rng):
    """A broadcast mask must be read through stride 0, never materialised."""
    q = randn(rng, (4, 8, 16, 32), np.float32)
    k = randn(rng, (4, 8, 2048, 32), np.float32)
    out = np.empty((4, 8, 16, 32), np.float32)
    expanded = 4 * 8 * 16 * 2048            # bytes of the bool mask, expanded
    no_mask = traced_peak(lambda: sdpa(q, k, k, out=out))   # (split-K partials)
    for m in (rng.random((16, 2048)) > 0.5, np.zeros((1, 8, 1, 2048), np.float32)):
        peak = traced_peak(lambda m=m: sdpa(q, k, k, attn_mask=m, out=out))
        assert peak - no_mask < expanded // 8, f"mask {m.shape}: {peak} bytes allocated"
    assert_close(out, ref.scaled_dot_product_attention(q, k, k, attn_mask=m),
                 tol(np.float32))


# ---------------------------------------------------------------------------
# causal alignment, sliding window, ALiBi
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("LS", [(1, 1), (1, 700), (7, 130), (130, 7), (65, 65),
                                (129, 1000), (3, 2100)])
def test_causal_equals_explicit_mask(rng, dtype, align, LS):
    L, S = LS
    q, k, v = qkv(rng, dtype, L, S, 16)
    vis = ref.visibility_mask(L, S, is_causal=True, causal_alignment=align)
    a = sdpa(q, k, v, is_causal=True, causal_alignment=align)
    expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=vis)
    assert_close(a, expected, tol(dtype))
    # hidden query rows (top-left with L > S never; bottom-right with L > S)
    dead = ~vis.any(-1)
    assert np.all(a[..., dead, :] == 0)


def test_visibility_mask_alignment_definition():
    """The explicit meaning of the two alignments (PyTorch's tril for
    top-left), independently of the library."""
    tl = ref.visibility_mask(3, 5, is_causal=True)
    assert np.array_equal(tl, np.tril(np.ones((3, 5), bool)))
    br = ref.visibility_mask(3, 5, is_causal=True, causal_alignment="bottom_right")
    assert np.array_equal(br, np.tril(np.ones((3, 5), bool), k=2))
    br2 = ref.visibility_mask(5, 3, is_causal=True, causal_alignment="bottom_right")
    assert np.array_equal(br2, np.tril(np.ones((5, 3), bool), k=-2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_causal_combined_with_mask(rng, dtype, align):
    """Unlike PyTorch, is_causal and attn_mask may be combined: both apply."""
    L, S = 70, 150
    q, k, v = qkv(rng, dtype, L, S, 16)
    m = rng.random((2, 1, L, S)) > 0.3
    vis = ref.visibility_mask(L, S, is_causal=True, causal_alignment=align)
    out = sdpa(q, k, v, attn_mask=m, is_causal=True, causal_alignment=align)
    expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=m & vis)
    assert_close(out, expected, tol(dtype))
    fm = np.where(m, randn(rng, m.shape, dtype), -np.inf).astype(dtype)
    out = sdpa(q, k, v, attn_mask=fm, is_causal=True, causal_alignment=align)
    expected = ref.scaled_dot_product_attention(
        q, k, v, attn_mask=np.where(vis, fm, -np.inf).astype(dtype))
    assert_close(out, expected, tol(dtype))


WINDOWS = [(0, 0), (3, 0), (0, 5), (None, 2), (10, -1), (-1, None), (64, 64),
           (100, 1), (1, 100), (5000, 5000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("LS", [(1, 300), (9, 200), (130, 70), (129, 129)])
def test_window_equals_explicit_mask(rng, dtype, align, LS):
    L, S = LS
    q, k, v = qkv(rng, dtype, L, S, 8, lead=(2, 2))
    for window in WINDOWS:
        for causal in (False, True):
            vis = ref.visibility_mask(L, S, causal, align, window)
            out = sdpa(q, k, v, window=window, is_causal=causal,
                       causal_alignment=align)
            expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=vis)
            assert_close(out, expected, tol(dtype), what=f"{window} {causal}")


@pytest.mark.parametrize("window", [(None, sys.maxsize), (sys.maxsize, sys.maxsize),
                                    (2**62, 2**62), (0, 2**63), (2**64, None)])
def test_huge_window_is_unbounded(rng, window):
    """A window side at or beyond the sequence is no bound at all (sys.maxsize
    is a natural way to say "unbounded"); it must neither overflow the index
    arithmetic (silently hiding every key) nor escape as OverflowError."""
    q, k, v = qkv(rng, np.float64, 70, 90, 8)
    left, right = window
    vis = ref.visibility_mask(70, 90, window=(None if left and left > 10**6 else left,
                                              None if right and right > 10**6 else right))
    expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=vis)
    # the promise (functional._window_bounds): a side reaching past both
    # sequences is accepted and bounds nothing
    assert_close(sdpa(q, k, v, window=window), expected, 1e-12)
    w = fastattn.attention_weights(q, k, window=window)
    assert_close(w, ref.attention_weights(q, k, attn_mask=vis), 1e-13)


def test_visibility_mask_window_definition():
    vis = ref.visibility_mask(4, 6, window=(1, 2))
    i, j = np.arange(4)[:, None], np.arange(6)[None, :]
    assert np.array_equal(vis, (j >= i - 1) & (j <= i + 2))
    vis = ref.visibility_mask(4, 6, is_causal=True, window=(1, 2),
                              causal_alignment="bottom_right")
    assert np.array_equal(vis, (j >= i + 2 - 1) & (j <= i + 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("LS", [(1, 1200), (7, 70), (70, 7), (129, 200)])
def test_alibi_equals_explicit_bias(rng, dtype, align, LS):
    L, S = LS
    H = 4
    q, k, v = qkv(rng, dtype, L, S, 16, lead=(2, H))
    slopes = 2.0 ** -np.arange(1, H + 1)
    off = S - L if align == "bottom_right" else 0
    dist = np.abs(np.arange(L)[:, None] + off - np.arange(S)[None, :])
    bias = (-slopes[:, None, None] * dist).astype(dtype)       # (H, L, S)
    for causal in (False, True):
        vis = ref.visibility_mask(L, S, causal, align)
        explicit = np.where(vis, bias, -np.inf).astype(dtype)
        out = sdpa(q, k, v, alibi_slopes=slopes, is_causal=causal,
                   causal_alignment=align)
        expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=explicit)
        assert_close(out, expected, tol(dtype), what=f"causal={causal}")
    # also on top of a mask and a window, against the reference
    m = rng.random((L, S)) > 0.2
    check_sdpa(q, k, v, alibi_slopes=list(slopes), attn_mask=m, window=(20, 3),
               causal_alignment=align)


def test_alibi_zero_slopes_is_noop(rng):
    q, k, v = qkv(rng, np.float64, 9, 30, 8)
    assert_close(sdpa(q, k, v, alibi_slopes=np.zeros(3)), sdpa(q, k, v), 1e-15)


# ---------------------------------------------------------------------------
# GQA / MQA
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq,Hkv", [(4, 1), (4, 2), (4, 4), (6, 3), (8, 2), (3, 1)])
@pytest.mark.parametrize("L", [1, 3, 17, 100])
def test_gqa_equals_repeated_kv(rng, dtype, Hq, Hkv, L):
    S = 150 if L > 1 else 1100
    q = randn(rng, (2, Hq, L, 16), dtype)
    k = randn(rng, (2, Hkv, S, 16), dtype)
    v = randn(rng, (2, Hkv, S, 12), dtype)
    G = Hq // Hkv
    kr, vr = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    m = rng.random((2, Hq, L, S)) > 0.2
    for kw in ({}, {"is_causal": True, "causal_alignment": "bottom_right"},
               {"attn_mask": m}, {"attn_mask": m[:, :, :1]},
               {"alibi_slopes": np.linspace(0.1, 1, Hq), "window": (40, 0)}):
        out = sdpa(q, k, v, enable_gqa=True, **kw)
        expected = ref.scaled_dot_product_attention(q, kr, vr, **kw)
        assert_close(out, expected, tol(dtype), what=str(kw))


def test_gqa_head_mapping(rng):
    """Query head h uses kv head h // (Hq/Hkv) (consecutive grouping, not
    h % Hkv): give every kv head a constant, distinct value vector."""
    q = randn(rng, (1, 6, 4, 8), np.float64)
    k = randn(rng, (1, 2, 5, 8), np.float64)
    v = np.empty((1, 2, 5, 3))
    v[0, 0], v[0, 1] = 10.0, 20.0
    out = sdpa(q, k, v, enable_gqa=True)
    assert np.allclose(out[0, :3], 10.0) and np.allclose(out[0, 3:], 20.0)


def test_gqa_does_not_copy_kv(rng):
    q = randn(rng, (2, 8, 4, 64), np.float32)
    k = randn(rng, (2, 1, 4096, 64), np.float32)
    v = randn(rng, (2, 1, 4096, 64), np.float32)
    out = np.empty((2, 8, 4, 64), np.float32)
    peak = traced_peak(lambda: sdpa(q, k, v, enable_gqa=True, out=out))
    assert peak < k.nbytes // 4, f"{peak} bytes allocated for K of {k.nbytes}"
    assert_close(out, ref.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                 tol(np.float32))


def test_gqa_with_extra_leading_dims(rng):
    q = randn(rng, (2, 3, 4, 5, 8), np.float64)
    k = randn(rng, (3, 2, 7, 8), np.float64)      # broadcasts over axis 0
    v = randn(rng, (1, 3, 2, 7, 6), np.float64)
    out = sdpa(q, k, v, enable_gqa=True)
    expected = ref.scaled_dot_product_attention(
        q, np.repeat(k, 2, axis=-3), np.repeat(v, 2, axis=-3))
    assert_close(out, expected, 1e-12)


# ---------------------------------------------------------------------------
# leading dims, views, out=
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_dims_broadcast_like_matmul(rng, dtype):
    cases = [
        ((5, 8), (6, 8), (6, 3)),
        ((3, 5, 8), (6, 8), (6, 3)),
        ((5, 8), (2, 3, 6, 8), (2, 3, 6, 3)),
        ((2, 1, 5, 8), (1, 3, 6, 8), (2, 3, 6, 3)),
        ((3, 1, 2, 5, 8), (1, 4, 2, 6, 8), (4, 1, 6, 3)),
        ((2, 3, 5, 8), (2, 1, 6, 8), (2, 3, 6, 3)),   # K broadcast over heads
        ((2, 3, 5, 8), (2, 1, 6, 8), (2, 1, 6, 3)),   # MQA by broadcasting
        ((2, 3, 5, 8), (1, 3, 6, 8), (2, 1, 6, 3)),
        ((1, 1, 1, 1, 5, 8), (6, 8), (6, 3)),
    ]
    for qs, ks, vs in cases:
        q, k, v = randn(rng, qs, dtype), randn(rng, ks, dtype), randn(rng, vs, dtype)
        out = check_sdpa(q, k, v)
        assert out.shape == np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2]) + (5, 3)
        check_sdpa(q, k, v, is_causal=True, attn_mask=rng.random((5, 6)) > 0.3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 5, 70])
def test_transposed_bhld_views(rng, dtype, L):
    """(B, L, H, D) arrays viewed as (B, H, L, D), as a fused QKV projection
    gives them; results, and writing into a transposed out= view."""
    B, H, D, S = 2, 3, 16, 140
    qkv_proj = randn(rng, (B, S, 3, H, D), dtype)
    q = qkv_proj[:, :L, 0].transpose(0, 2, 1, 3)
    k = qkv_proj[:, :, 1].transpose(0, 2, 1, 3)
    v = qkv_proj[:, :, 2].transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous and q.strides[-1] == q.itemsize
    expected = ref.scaled_dot_product_attention(q, k, v, is_causal=True)
    out_bl = np.zeros((B, L, H, D), dtype)
    out = out_bl.transpose(0, 2, 1, 3)
    res = sdpa(q, k, v, is_causal=True, out=out)
    assert res is out
    assert_close(out, expected, tol(dtype))
    assert_close(out_bl, expected.transpose(0, 2, 1, 3), tol(dtype))


def test_views_read_in_place_without_copy(rng):
    B, L, H, D = 2, 256, 4, 64
    x = randn(rng, (B, L, H, D), np.float32)
    q = x.transpose(0, 2, 1, 3)
    out = np.empty((B, H, L, D), np.float32)
    peak = traced_peak(lambda: sdpa(q, q, q, out=out))
    assert peak < q.nbytes // 4, f"{peak} bytes allocated for a {q.nbytes}-byte view"
    # negative strides and stride-0 broadcasts are read in place too
    qn = x[:, ::-1].transpose(0, 2, 1, 3)[:, ::-1]
    kb = np.broadcast_to(x[:1].transpose(0, 2, 1, 3), qn.shape)
    peak = traced_peak(lambda: sdpa(qn, kb, kb, out=out))
    assert peak < q.nbytes // 4
    assert_close(out, ref.scaled_dot_product_attention(qn, kb, kb), tol(np.float32))


def test_non_contiguous_last_axis_copied_once(rng):
    q = randn(rng, (2, 4, 256, 128), np.float32)[..., ::2]      # stride 2 elements
    k = randn(rng, (2, 4, 256, 64), np.float32)
    out = np.empty((2, 4, 256, 64), np.float32)
    peak = traced_peak(lambda: sdpa(q, k, k, out=out))
    assert q.nbytes <= peak < 2 * q.nbytes
    assert_close(out, ref.scaled_dot_product_attention(q, k, k), tol(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,S", [(1, 1500), (4, 70), (66, 130)])
def test_strided_views(rng, dtype, L, S):
    base_q = randn(rng, (3, 4, 2 * L, 40), dtype)
    base_k = randn(rng, (3, 4, S, 2, 40), dtype)
    views = [
        (base_q[:2, :3, ::2, :16], base_k[:2, :3, :, 0, 8:24], base_k[:2, :3, :, 1, :20]),
        (base_q[::-1, ::-2, :L, ::-1][:2], base_k[:2, ::-2, ::-1, 1, ::-1],
         base_k[1:, :2, :, 0, 3:7]),
        (base_q[:2, :3, L:, :7], np.broadcast_to(base_k[:1, :1, :, 0, :7], (2, 3, S, 7)),
         np.broadcast_to(base_k[1, :, :, 1, :5][None, :3], (2, 3, S, 5))),
        (base_q[:2, :3, :L, 1:40:3], base_k[:2, :3, :, 0, ::3][..., :13],   # copies
         base_k[2:, :3, :, :, 5].swapaxes(-1, -2).swapaxes(-1, -2)),
    ]
    for q, k, v in views:
        check_sdpa(q, k, v)
        check_sdpa(q, k, v, is_causal=True, causal_alignment="bottom_right")


def test_inputs_are_not_modified(rng):
    q, k, v = qkv(rng, np.float32, 70, 90, 16)
    m = randn(rng, (70, 90), np.float32)
    copies = [x.copy() for x in (q, k, v, m)]
    sdpa(q, k, v, attn_mask=m, is_causal=True)
    fastattn.attention_weights(q, k, attn_mask=m)
    for a, b in zip((q, k, v, m), copies):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_honoured(rng, dtype):
    q, k, v = qkv(rng, dtype, 9, 11, 8, 5)
    out = np.full((2, 3, 9, 5), np.nan, dtype)
    res = sdpa(q, k, v, out=out)
    assert res is out
    assert_close(out, ref.scaled_dot_product_attention(q, k, v), tol(dtype))
    # out= into a slice of a bigger buffer leaves the rest untouched
    buf = np.full((2, 3, 9, 12), -7, dtype)
    res = sdpa(q, k, v, out=buf[..., 4:9])
    assert res.base is buf or res.base is buf.base
    assert np.all(buf[..., :4] == -7) and np.all(buf[..., 9:] == -7)
    assert_close(buf[..., 4:9], ref.scaled_dot_product_attention(q, k, v), tol(dtype))


# ---------------------------------------------------------------------------
# NaN / inf, zero-length
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,S", [(1, 5), (1, 3000), (5, 70), (70, 130)])
def test_nan_and_inf_propagate_like_reference(rng, dtype, L, S):
    q, k, v = qkv(rng, dtype, L, S, 16)
    big = np.finfo(dtype).max / 4
    cases = []
    x = q.copy(); x[0, 1, 0, 3] = np.nan; cases.append((x, k, v))      # a query row
    x = k.copy(); x[1, 2, S // 2, 0] = np.nan; cases.append((q, x, v))  # one key
    x = v.copy(); x[0, 0, 0, 2] = np.inf; cases.append((q, k, x))       # one value
    x = v.copy(); x[0, 0, -1, 2] = np.nan; cases.append((q, k, x))
    x = q.copy(); x[1, 1, -1, :] = np.inf; cases.append((x, k, v))      # inf scores
    x = k.copy(); x[1, 0, 0, 0] = big; cases.append((q, x, v))          # huge scores
    for a, b, c in cases:
        with np.errstate(all="ignore"):
            expected = ref.scaled_dot_product_attention(a, b, c)
        assert_close(sdpa(a, b, c), expected, tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 100])
def test_extreme_float_mask_values(rng, dtype, L):
    """+inf, NaN and near-overflow biases in a float mask behave like the
    reference (the kernel works in log2 units: bias * log2(e) may overflow)."""
    q, k, v = qkv(rng, dtype, L, 130, 8)
    big = np.finfo(dtype).max
    for val in (np.inf, np.nan, big, -big, big / 2):
        m = np.zeros((L, 130), dtype)
        m[0, 5] = val
        with np.errstate(all="ignore"):
            expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=m)
        assert_close(sdpa(q, k, v, attn_mask=m), expected, tol(dtype), what=str(val))


@pytest.mark.parametrize("L,S,kind", [(4, 300, "bool"), (100, 300, "float"),
                                      (100, 300, "causal")])
def test_hidden_keys_take_no_part(rng, L, S, kind):
    """A key hidden by the mask (False / -inf) or by causality takes no part
    in the scores: NaN or inf in its K row must not change any output,
    whether or not the hidden key shares a 64-key tile with visible ones.
    (Non-finite values in a hidden key's V row are a documented limitation,
    as in PyTorch: its zero weight times inf is NaN inside a shared tile.)"""
    dtype = np.float32
    q, k, v = qkv(rng, dtype, L, S, 8)
    hidden = np.zeros(S, bool)
    hidden[[0, 1, 70, 200, S - 1]] = True
    kw = {}
    if kind == "bool":
        kw["attn_mask"] = ~hidden[None, :]
    elif kind == "float":
        kw["attn_mask"] = np.where(hidden, -np.inf, 0).astype(dtype)[None, :]
    else:
        kw["is_causal"] = True
        hidden[:] = False
        hidden[L:] = True          # top-left: keys >= L are hidden from all rows
    clean = sdpa(q, k, v, **kw)
    kb = k.copy()
    kb[..., hidden, 0] = np.nan
    kb[..., hidden, 1] = np.inf
    dirty = sdpa(q, kb, v, **kw)
    assert_close(dirty, clean, 0.0, what="NaN/inf in hidden keys leaked")


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_length(rng, dtype):
    q, k, v = qkv(rng, dtype, 5, 6, 8, 3)
    out = sdpa(q[..., :0, :], k, v)
    assert out.shape == (2, 3, 0, 3) and out.dtype == dtype
    for kw in ({}, {"is_causal": True}, {"attn_mask": np.ones((5, 0), bool)},
               {"window": (2, 2), "alibi_slopes": [1, 2, 3]}):
        out = sdpa(q, k[..., :0, :], v[..., :0, :], **kw)
        assert out.shape == (2, 3, 5, 3)
        assert np.array_equal(out, np.zeros_like(out))
    out = sdpa(q[:0], k[:0], v[:0], attn_mask=np.ones((0, 3, 5, 6), bool))
    assert out.shape == (0, 3, 5, 3)
    out = sdpa(q, k, v[..., :0])
    assert out.shape == (2, 3, 5, 0)
    # S = 0 with out= overwrites whatever was there
    o = np.full((2, 3, 5, 3), np.nan, dtype)
    assert sdpa(q, k[..., :0, :], v[..., :0, :], out=o) is o
    assert np.all(o == 0)


def test_dropout_not_implemented(rng):
    q, k, v = qkv(rng, np.float32, 3, 4, 8)
    with pytest.raises(NotImplementedError, match="dropout"):
        sdpa(q, k, v, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match="dropout"):
        sdpa(q, k, v, None, 0.5)
    check_sdpa(q, k, v, dropout_p=0.0)
    check_sdpa(q, k, v, dropout_p=0)


# ---------------------------------------------------------------------------
# attention_scores, softmax, weighted_sum, attention_weights
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,S,E", [(1, 1, 1), (7, 63, 8), (65, 129, 80),
                                   (129, 65, 96), (3, 1000, 256)])
def test_attention_scores(rng, dtype, L, S, E):
    q = randn(rng, (2, 3, L, E), dtype)
    k = randn(rng, (3, S, E), dtype)
    out = fastattn.attention_scores(q, k)
    assert out.shape == (2, 3, L, S) and out.dtype == dtype
    s64 = q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64) / math.sqrt(E)
    scale_of = np.sqrt(np.abs(q.astype(np.float64)) ** 2 @ np.swapaxes(k, -1, -2) ** 2) / math.sqrt(E)
    atol = tol(dtype, "scores_rtol") * (scale_of + 1)
    assert np.all(np.abs(out - s64) <= atol)
    o = np.empty_like(out)
    assert fastattn.attention_scores(q, k, scale=0.5, out=o) is o
    assert_close(o, ref.attention_scores(q, k, 0.5),
                 tol(dtype, "scores_rtol") * 8 * np.sqrt(E))


def test_attention_scores_views(rng):
    x = randn(rng, (2, 40, 3, 16), np.float64)
    q = x.transpose(0, 2, 1, 3)[:, :, ::-3]
    k = np.broadcast_to(x[:1, :, 1], (3, 40, 16))
    out = fastattn.attention_scores(q, k)
    assert_close(out, ref.attention_scores(q, k), 1e-13)
    out = fastattn.attention_scores(q[..., ::2], k[..., ::2], scale=2.0)
    assert_close(out, ref.attention_scores(q[..., ::2], k[..., ::2], 2.0), 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 2, 7, 64, 65, 1000, 4096, 20000])
def test_softmax_matches_scipy(rng, dtype, C):
    x = randn(rng, (3, C), dtype)            # N(0, 1) logits, as the issue states
    out = fastattn.softmax(x)
    expected = scipy.special.softmax(x.astype(np.float64), axis=-1)
    # relative error, with an absolute floor at the dtype's smallest normal
    assert_close(out, expected, np.finfo(dtype).tiny, tol(dtype, "softmax_rtol"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_large_magnitudes_and_masked_rows(rng, dtype):
    x = (randn(rng, (6, 300), dtype) * 1e4).astype(dtype)   # +-1e4 spread
    x[1] = randn(rng, 300, dtype) + 1e4     # all huge positive: naive exp overflows
    x[2] = randn(rng, 300, dtype) - 1e4     # all huge negative: naive exp underflows
    x[3] = -np.inf                          # fully masked
    x[4, ::2] = -np.inf                     # half masked
    x[5] = 1e4                              # constant huge
    with np.errstate(all="raise"):
        out = fastattn.softmax(x)
    assert np.all(np.isfinite(out))
    assert np.all(out[3] == 0)
    assert np.all(out[4, ::2] == 0)
    assert_close(out[5], np.full(300, 1 / 300), 1e-7)
    expected = scipy.special.softmax(x[[0, 1, 2, 4, 5]].astype(np.float64), axis=-1)
    assert_close(out[[0, 1, 2, 4, 5]], expected, np.finfo(dtype).tiny,
                 tol(dtype, "softmax_rtol"))
    assert_close(out.sum(-1), [1, 1, 1, 0, 1, 1], 10 * np.finfo(dtype).eps * 300)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_any_axis_and_strides(rng, dtype):
    x = randn(rng, (5, 6, 37), dtype) * 3
    views = [x, x[:, ::-2, 3:30:3], x.transpose(2, 0, 1), x[::2, :, ::-1],
             np.broadcast_to(x[:1], (4, 6, 37))]
    for y in views:
        for axis in range(-y.ndim, y.ndim):
            out = fastattn.softmax(y, axis=axis)
            expected = scipy.special.softmax(y.astype(np.float64), axis=axis)
            assert_close(out, expected, np.finfo(dtype).tiny,
                         tol(dtype, "softmax_rtol"), what=f"axis {axis}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_out_and_in_place(rng, dtype):
    x = randn(rng, (4, 50, 30), dtype)
    expected = scipy.special.softmax(x.astype(np.float64), axis=1)
    o = np.empty_like(x)
    assert fastattn.softmax(x, axis=1, out=o) is o
    assert_close(o, expected, np.finfo(dtype).tiny, tol(dtype, "softmax_rtol"))
    y = x.copy()
    assert fastattn.softmax(y, axis=1, out=y) is y
    assert_close(y, expected, np.finfo(dtype).tiny, tol(dtype, "softmax_rtol"))
    # in place on a strided view writes only the view
    big = np.zeros((4, 100, 30), dtype)
    big[:, ::2] = x
    view = big[:, ::2]
    fastattn.softmax(view, axis=1, out=view)
    assert np.all(big[:, 1::2] == 0)
    assert_close(view, expected, np.finfo(dtype).tiny, tol(dtype, "softmax_rtol"))
    # out= a transposed view
    ot = np.empty((30, 50, 4), dtype).T
    fastattn.softmax(x, axis=1, out=ot)
    assert_close(ot, expected, np.finfo(dtype).tiny, tol(dtype, "softmax_rtol"))


def test_softmax_nan_and_inf_rows(rng):
    x = randn(rng, (4, 10), np.float64)
    x[0, 3] = np.nan
    x[1, 2] = np.inf
    x[2, :] = -np.inf
    with np.errstate(invalid="ignore"):
        out = fastattn.softmax(x)
        expected = ref.softmax(x)
    assert np.all(np.isnan(out[0])) and np.all(np.isnan(out[1]))
    assert np.all(out[2] == 0)
    assert_close(out, expected, 1e-15)


def test_softmax_empty():
    for shape in ((0, 3), (3, 0), (0,)):
        x = np.zeros(shape, np.float32)
        assert fastattn.softmax(x).shape == shape
        assert fastattn.softmax(x, axis=0).shape == shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,S,Ev", [(1, 1, 1), (7, 63, 8), (65, 129, 80),
                                    (129, 65, 96), (3, 1000, 256), (5, 0, 4)])
def test_weighted_sum(rng, dtype, L, S, Ev):
    p = rng.random((2, 3, L, S)).astype(dtype)
    v = randn(rng, (3, S, Ev), dtype)
    out = fastattn.weighted_sum(p, v)
    assert out.shape == (2, 3, L, Ev) and out.dtype == dtype
    expected = ref.weighted_sum(p, v)
    assert_close(out, expected, tol(dtype, "scores_rtol") * max(S, 1))
    o = np.full_like(out, np.nan)
    assert fastattn.weighted_sum(p[..., ::-1], v[..., ::-1, :], out=o) is o
    assert_close(o, expected, tol(dtype, "scores_rtol") * max(S, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq,Hkv,L,S", [(4, 2, 9, 70), (3, 3, 65, 129), (4, 1, 1, 700)])
def test_attention_weights_and_materialised_path(rng, dtype, Hq, Hkv, L, S):
    q = randn(rng, (2, Hq, L, 16), dtype)
    k = randn(rng, (2, Hkv, S, 16), dtype)
    v = randn(rng, (2, Hkv, S, 8), dtype)
    m = rng.random((2, 1, L, S)) > 0.3
    for kw in ({}, {"is_causal": True}, {"attn_mask": m},
               {"attn_mask": np.where(m, 0.5, -np.inf).astype(dtype),
                "causal_alignment": "bottom_right", "is_causal": True},
               {"window": (5, 2), "alibi_slopes": np.linspace(0.2, 1, Hq),
                "scale": 0.3}):
        w = fastattn.attention_weights(q, k, enable_gqa=True, **kw)
        expected = ref.attention_weights(q, k, enable_gqa=True, **kw)
        assert w.dtype == dtype
        assert_close(w, expected, np.finfo(dtype).tiny, tol(dtype, "softmax_rtol") * 10,
                     what=str(kw))
        # the materialised path gives the fused result
        G = Hq // Hkv
        o = fastattn.weighted_sum(w, np.repeat(v, G, axis=1))
        assert_close(o, sdpa(q, k, v, enable_gqa=True, **kw), tol(dtype))


def test_attention_weights_rows_sum_to_one_or_zero(rng):
    q, k, _ = qkv(rng, np.float32, 70, 130, 16)
    m = rng.random((70, 130)) > 0.5
    m[3] = False
    w = fastattn.attention_weights(q, k, attn_mask=m, is_causal=True)
    sums = w.sum(-1)
    assert np.all(sums[..., 3] == 0)
    rest = np.delete(sums, 3, axis=-1)
    visible_any = np.delete((m & np.tril(np.ones((70, 130), bool))).any(-1), 3)
    assert_close(rest[..., visible_any], np.ones_like(rest[..., visible_any]), 1e-5)
    assert np.all(w[..., ~m] == 0)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

class _NoKernels:
    """Stands in for the compiled module: constants read through, but calling
    any kernel means C code ran before the input was rejected."""

    def __getattr__(self, name):
        real = getattr(_REAL_KERNELS, name)
        if not callable(real):
            return real

        def refuse(*args, **kwargs):
            raise AssertionError(f"kernel {name!r} ran despite invalid input")
        return refuse


_REAL_KERNELS = F._k


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setattr(F, "_k", _NoKernels())


def _bad_sdpa_cases():
    f32 = np.float32
    q = np.ones((2, 4, 5, 8), f32)
    k = np.ones((2, 4, 6, 8), f32)
    v = np.ones((2, 4, 6, 3), f32)
    ro = np.empty((2, 4, 5, 3), f32)
    ro.flags.writeable = False
    buf = np.ones((2, 4, 5, 6), f32)
    qq = np.ones((2, 4, 5, 3), f32)
    m4 = np.ones((2, 4, 5, 5), f32)
    return [
        # (id, args, kwargs, exception, match)
        ("q 1-d", (q[0, 0, 0], k, v), {}, ValueError, r"query.*\(8,\)"),
        ("k 1-d", (q, k[0, 0, 0], v), {}, ValueError, r"key.*\(8,\)"),
        ("v 0-d", (q, k, np.float32(1)), {}, ValueError, r"value.*\(\)"),
        ("E mismatch", (q, k[..., :4], v), {}, ValueError, r"query.*\(2, 4, 5, 8\).*key.*\(2, 4, 6, 4\)"),
        ("S mismatch", (q, k, v[..., :5, :]), {}, ValueError, r"key.*\(2, 4, 6, 8\).*value.*\(2, 4, 5, 3\)"),
        ("batch mismatch", (q, k[:1].repeat(3, 0), v[:1].repeat(3, 0)), {}, ValueError, r"\(3, 4, 6, 8\)"),
        ("head mismatch", (q, k[:, :2], v[:, :2]), {}, ValueError, r"enable_gqa"),
        ("kv head mismatch", (q, k[:, :2], v), {}, ValueError, r"\(2, 2, 6, 8\)"),
        ("gqa not divide", (q, k[:, :3], v[:, :3]), {"enable_gqa": True}, ValueError, r"\(4\).*\(3\)"),
        ("gqa k/v heads differ", (q, k[:, :2], v[:, :1]), {"enable_gqa": True}, ValueError, r"key.*value"),
        ("gqa no head axis", (q[0, 0], k[0, 0], v[0, 0]), {"enable_gqa": True}, ValueError, r"head axis"),
        ("gqa zero kv heads", (q, k[:, :0], v[:, :0]), {"enable_gqa": True}, ValueError, r"heads"),
        ("mask wrong S", (q, k, v), {"attn_mask": np.ones((5, 7), bool)}, ValueError, r"attn_mask.*\(5, 7\)"),
        ("mask wrong L", (q, k, v), {"attn_mask": np.ones((4, 6), bool)}, ValueError, r"attn_mask.*\(4, 6\)"),
        ("mask wrong heads", (q, k, v), {"attn_mask": np.ones((3, 5, 6), bool)}, ValueError, r"attn_mask"),
        ("mask too many dims", (q, k, v), {"attn_mask": np.ones((3, 2, 4, 5, 6), bool)}, ValueError, r"attn_mask"),
        ("mask int", (q, k, v), {"attn_mask": np.ones((5, 6), np.int32)}, TypeError, r"attn_mask.*int32"),
        ("mask other float", (q, k, v), {"attn_mask": np.ones((5, 6), np.float64)}, TypeError, r"attn_mask.*float64"),
        ("scale nan", (q, k, v), {"scale": float("nan")}, ValueError, r"scale"),
        ("scale inf", (q, k, v), {"scale": np.inf}, ValueError, r"scale"),
        ("scale -inf f32", (q, k, v), {"scale": np.float32(-np.inf)}, ValueError, r"scale"),
        ("scale str", (q, k, v), {"scale": "0.5"}, TypeError, r"scale"),
        ("scale complex", (q, k, v), {"scale": 1j}, TypeError, r"scale"),
        ("ragged", ([[1.0, 2.0], [1.0]], k, v), {}, TypeError, r"query"),
        ("object", (object(), k, v), {}, TypeError, r"query"),
        ("None", (q, None, v), {}, TypeError, r"key"),
        ("string", (q, k, "abc"), {}, TypeError, r"value"),
        ("int dtype", (q.astype(np.int32), k, v), {}, TypeError, r"query.*int32"),
        ("float16", (q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)), {}, TypeError, r"float16"),
        ("complex", (q, k.astype(np.complex64), v), {}, TypeError, r"key.*complex64"),
        ("longdouble", (q, k, v.astype(np.longdouble)), {}, TypeError, r"value"),
        ("mixed", (q, k.astype(np.float64), v), {}, TypeError, r"key: float64"),
        ("out shape", (q, k, v), {"out": np.empty((2, 4, 5, 4), f32)}, ValueError, r"out.*\(2, 4, 5, 4\).*\(2, 4, 5, 3\)"),
        ("out dtype", (q, k, v), {"out": np.empty((2, 4, 5, 3), np.float64)}, TypeError, r"out.*float64"),
        ("out read-only", (q, k, v), {"out": ro}, ValueError, r"read-only"),
        ("out list", (q, k, v), {"out": [0.0]}, TypeError, r"out"),
        ("out broadcast", (q, k, v), {"out": np.broadcast_to(np.empty((1, 4, 5, 3), f32), (2, 4, 5, 3))}, ValueError, r"out"),
        ("out is query", (qq, qq.copy(), qq.copy()), {"out": qq}, ValueError, r"out overlaps query"),
        ("out overlaps query view", (buf[..., :3], qq, qq.copy()), {"out": buf[..., 2:5]}, ValueError, r"overlaps query"),
        ("out overlaps mask", (qq, qq.copy(), qq.copy()), {"attn_mask": m4, "out": m4[..., :3]}, ValueError, r"attn_mask"),
        ("out strided last", (q, k, v), {"out": np.empty((2, 4, 5, 6), f32)[..., ::2]}, ValueError, r"out"),
        ("window int", (q, k, v), {"window": 3}, ValueError, r"window"),
        ("window negative", (q, k, v), {"window": (-2, 1)}, ValueError, r"window"),
        ("window float", (q, k, v), {"window": (1.5, 1)}, ValueError, r"window"),
        ("window triple", (q, k, v), {"window": (1, 2, 3)}, ValueError, r"window"),
        ("alignment", (q, k, v), {"is_causal": True, "causal_alignment": "center"}, ValueError, r"causal_alignment"),
        ("alibi count", (q, k, v), {"alibi_slopes": np.ones(3)}, ValueError, r"alibi_slopes.*\(4,\)"),
        ("alibi 2-d", (q, k, v), {"alibi_slopes": np.ones((4, 1))}, ValueError, r"alibi_slopes"),
        ("alibi nan", (q, k, v), {"alibi_slopes": [1, 2, np.nan, 3]}, ValueError, r"alibi_slopes"),
        ("alibi str", (q, k, v), {"alibi_slopes": ["a"] * 4}, TypeError, r"alibi_slopes"),
        ("is_causal int", (q, k, v), {"is_causal": 1}, TypeError, r"is_causal"),
        ("enable_gqa str", (q, k, v), {"enable_gqa": "yes"}, TypeError, r"enable_gqa"),
        ("dropout str", (q, k, v), {"dropout_p": "0"}, TypeError, r"dropout_p"),
        ("E = 0", (q[..., :0], k[..., :0], v), {}, ValueError, r"embedding"),
        ("num_threads 0", (q, k, v), {"num_threads": 0}, ValueError, r"num_threads"),
        ("num_threads -1", (q, k, v), {"num_threads": -1}, ValueError, r"num_threads"),
        ("num_threads float", (q, k, v), {"num_threads": 2.0}, ValueError, r"num_threads"),
        ("num_threads bool", (q, k, v), {"num_threads": True}, ValueError, r"num_threads"),
    ]


_BAD = _bad_sdpa_cases()


@pytest.mark.parametrize("args,kwargs,exc,match", [c[1:] for c in _BAD],
                         ids=[c[0] for c in _BAD])
def test_sdpa_bad_input(no_kernels, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sdpa(*args, **kwargs)


def test_bad_out_leaves_out_untouched():
    q = np.ones((2, 3, 4), np.float32)
    out = np.full((2, 3, 4), 5, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        sdpa(q, q + 1, q + 2, out=q)
    with pytest.raises(ValueError, match="attn_mask"):
        sdpa(q, q + 1, q + 2, attn_mask=np.ones((2, 4), bool), out=out)
    assert np.all(out == 5)
    assert np.all(q == 1)


def _bad_other_cases():
    f32 = np.float32
    q = np.ones((2, 4, 5, 8), f32)
    k = np.ones((2, 4, 6, 8), f32)
    x = np.ones((3, 3), f32)
    ro = np.ones((3, 3), f32)
    ro.flags.writeable = False
    return [
        ("scores 1-d", fastattn.attention_scores, (q[0, 0, 0], k), {}, ValueError, r"q.*\(8,\)"),
        ("scores E", fastattn.attention_scores, (q, k[..., :3]), {}, ValueError, r"q.*k"),
        ("scores E=0", fastattn.attention_scores, (q[..., :0], k[..., :0]), {}, ValueError, r"embedding"),
        ("scores batch", fastattn.attention_scores, (q, k[:, :3]), {}, ValueError, r"\(2, 4\).*\(2, 3\)"),
        ("scores scale", fastattn.attention_scores, (q, k), {"scale": np.nan}, ValueError, r"scale"),
        ("scores mixed", fastattn.attention_scores, (q, k.astype(np.float64)), {}, TypeError, r"float64"),
        ("scores int", fastattn.attention_scores, (q.astype(int), k), {}, TypeError, r"q"),
        ("scores out", fastattn.attention_scores, (q, k), {"out": np.empty((2, 4, 5, 5), f32)}, ValueError, r"out"),
        ("scores out overlaps q", fastattn.attention_scores, (q, k), {"out": q[..., :6]}, ValueError, r"overlaps q"),
        ("wsum S", fastattn.weighted_sum, (np.ones((2, 5, 6), f32), np.ones((2, 5, 3), f32)), {}, ValueError, r"\(2, 5, 6\).*\(2, 5, 3\)"),
        ("wsum batch", fastattn.weighted_sum, (np.ones((2, 5, 6), f32), np.ones((3, 6, 3), f32)), {}, ValueError, r"batch"),
        ("wsum mixed", fastattn.weighted_sum, (np.ones((5, 6), f32), np.ones((6, 3))), {}, TypeError, r"float64"),
        ("wsum 1-d", fastattn.weighted_sum, (np.ones(6, f32), np.ones((6, 3), f32)), {}, ValueError, r"p"),
        ("wsum out ro", fastattn.weighted_sum, (np.ones((3, 6), f32), np.ones((6, 3), f32)), {"out": ro}, ValueError, r"read-only"),
        ("softmax int", fastattn.softmax, (np.ones(3, int),), {}, TypeError, r"x"),
        ("softmax scalar", fastattn.softmax, (np.float64(1.0),), {}, ValueError, r"dimension"),
        ("softmax axis", fastattn.softmax, (x,), {"axis": 2}, ValueError, r"axis"),
        ("softmax axis -3", fastattn.softmax, (x,), {"axis": -3}, ValueError, r"axis"),
        ("softmax axis float", fastattn.softmax, (x,), {"axis": 1.0}, TypeError, r"axis"),
        ("softmax out overlap", fastattn.softmax, (x,), {"out": x.T}, ValueError, r"overlaps"),
        ("softmax out shape", fastattn.softmax, (x,), {"out": np.ones((3, 4), f32)}, ValueError, r"shape"),
        ("softmax out dtype", fastattn.softmax, (x,), {"out": np.ones((3, 3))}, TypeError, r"dtype"),
        ("softmax out=x read-only", fastattn.softmax, (ro,), {"out": ro}, ValueError, r"read-only"),
        ("softmax out bcast", fastattn.softmax, (x,), {"out": np.broadcast_to(np.ones(3, f32), (3, 3))}, ValueError, r"out"),
        ("weights gqa", fastattn.attention_weights, (q, k[:, :3]), {"enable_gqa": True}, ValueError, r"\(4\).*\(3\)"),
        ("weights heads", fastattn.attention_weights, (q, k[:, :2]), {}, ValueError, r"\(2, 4\).*\(2, 2\)"),
        ("weights mask", fastattn.attention_weights, (q, k), {"attn_mask": np.ones((5, 7), bool)}, ValueError, r"attn_mask"),
        ("weights mask dtype", fastattn.attention_weights, (q, k), {"attn_mask": np.ones((5, 6), int)}, TypeError, r"attn_mask"),
        ("weights alibi", fastattn.attention_weights, (q, k), {"alibi_slopes": [1.0, 2.0]}, ValueError, r"alibi_slopes"),
        ("weights window", fastattn.attention_weights, (q, k), {"window": (-3, 1)}, ValueError, r"window"),
    ]


_BAD_OTHER = _bad_other_cases()


@pytest.mark.parametrize("fn,args,kwargs,exc,match", [c[1:] for c in _BAD_OTHER],
                         ids=[c[0] for c in _BAD_OTHER])
def test_other_functions_bad_input(no_kernels, fn, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_validation_is_consistent_between_sdpa_and_attention_weights():
    """attention_weights takes the same arguments and rules as sdpa: what one
    rejects the other rejects."""
    q = np.ones((2, 4, 5, 8))
    k = np.ones((2, 4, 6, 8))
    for kw in ({"alibi_slopes": np.ones((2, 2))}, {"alibi_slopes": np.ones((4, 1))}):
        with pytest.raises(ValueError):
            sdpa(q, k, k, **kw)
        with pytest.raises(ValueError):
            fastattn.attention_weights(q, k, **kw)


def test_2d_inputs_with_alibi(rng):
    """(L, E) inputs have one implicit head: alibi_slopes of shape (1,)."""
    q, k, v = qkv(rng, np.float64, 5, 6, 8, lead=())
    out = sdpa(q, k, v, alibi_slopes=[0.5])
    assert out.shape == (5, 8)
    dist = np.abs(np.arange(5)[:, None] - np.arange(6)[None, :])
    expected = ref.scaled_dot_product_attention(q, k, v, attn_mask=-0.5 * dist)
    assert_close(out, expected, 1e-12)
    w = fastattn.attention_weights(q, k, alibi_slopes=[0.5])
    assert w.shape == (5, 6)
    assert_close(w, ref.attention_weights(q, k, attn_mask=-0.5 * dist), 1e-13)


def test_value_heads_broadcast_when_key_has_one_head(rng):
    """Regression (found by the fuzz test): key with one head, value with two
    and fewer leading dims; the head axis aligns on the right, so the kernel
    must not group query heads onto a single kv head."""
    q = rng.standard_normal((1, 1, 2, 3, 4)).astype(np.float32)
    k = rng.standard_normal((1, 1, 1, 5, 4)).astype(np.float32)
    v = rng.standard_normal((1, 2, 5, 3)).astype(np.float32)
    out = sdpa(q, k, v)
    expected = ref.scaled_dot_product_attention(q, k, v)
    assert out.shape == expected.shape == (1, 1, 2, 3, 3)
    assert_close(out, expected, tol(np.float32))
