"""Kernel level: every compiled build (baseline, avx2, avx512 where the CPU
runs it) and both layouts of the fused kernel (``PATH_LANES`` lanes,
``PATH_ROWS`` rows/split-K) give the reference's results on the same
inputs; the tile classifier is exact."""
import numpy as np
import pytest
from conftest import DTYPES, PinnedBuild, assert_close, randn, tol

import fastattn
import fastattn.functional as F
from fastattn import _dispatch
from fastattn import reference as ref

BUILDS = _dispatch.available_builds()
# the fused kernel's two layouts, by the kernel modules' own names
PATHS = (F._k.PATH_LANES, F._k.PATH_ROWS)
sdpa = fastattn.scaled_dot_product_attention


@pytest.fixture(params=BUILDS)
def build(request, monkeypatch):
    mod = _dispatch.load_build(request.param)
    monkeypatch.setattr(F, "_k", mod)
    return mod


def test_build_metadata():
    assert BUILDS[-1] == "baseline"
    for name in BUILDS:
        mod = _dispatch.load_build(name)
        assert mod.ISA == name
        assert mod.TILE_ROWS == F._k.TILE_ROWS and mod.TILE_KEYS == F._k.TILE_KEYS
        assert mod.SPLIT_KEYS == 1024
        assert mod.ROWS_PATH_MAX >= 1


# Cases: (Hq, Hkv, L, S, E, Ev).  E/Ev cover 1, odd, not a multiple of the
# vector width, and > one register block; S > 1024 gives several split-K
# chunks on the rows layout.
CASES = [(1, 1, 1, 1, 1, 1), (2, 1, 1, 2500, 64, 64), (4, 2, 3, 130, 80, 96),
         (2, 2, 17, 63, 7, 5), (4, 1, 65, 129, 128, 33), (1, 1, 70, 1030, 256, 8),
         (3, 3, 129, 65, 96, 1),
         # few-query rows (chunked prefill, speculative verification, GQA
         # groups): L * G of 16-32 takes the rows path with the narrow-tile
         # scores, 33 the lanes (or, forced, rows with the narrow tile)
         (8, 2, 5, 1100, 64, 64), (2, 2, 16, 1500, 32, 40), (4, 1, 8, 300, 80, 80),
         (1, 1, 33, 2100, 64, 64)]


def _options(rng, dtype, Hq, L, S, E):
    bm = rng.random((2, Hq, L, S)) > 0.3
    bm[0, 0, 0] = False                                   # a fully masked row
    fm = np.where(rng.random((L, S)) > 0.4, randn(rng, (L, S), dtype), -np.inf)
    return [
        {},
        {"is_causal": True},
        {"is_causal": True, "causal_alignment": "bottom_right", "attn_mask": bm},
        {"attn_mask": fm.astype(dtype)},
        {"attn_mask": bm[:, :1, :1]},                      # (B, 1, 1, S)
        {"window": (40, 3), "alibi_slopes": np.linspace(0.05, 1, Hq)},
        {"window": (0, 0), "causal_alignment": "bottom_right"},
        {"scale": 1.5 / np.sqrt(E)},
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_build_and_layout_matches_reference(rng, use, dtype, case):
    Hq, Hkv, L, S, E, Ev = case
    q = randn(rng, (2, Hq, L, E), dtype)
    k = randn(rng, (2, Hkv, S, E), dtype)
    v = randn(rng, (2, Hkv, S, Ev), dtype)
    for kw in _options(rng, dtype, Hq, L, S, E):
        expected = ref.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        results = {}
        for name in BUILDS:
            for path in PATHS:
                use(name, path)
                out = sdpa(q, k, v, enable_gqa=True, **kw)
                assert_close(out, expected, tol(dtype), what=f"{name} path={path} {kw}")
                results[name, path] = out
        # the two layouts, and the builds, agree with each other
        first = results[BUILDS[0], PATHS[0]]
        for key, out in results.items():
            assert_close(out, first, 2 * tol(dtype), what=f"{key} vs {BUILDS[0]}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
def test_layouts_with_strided_views(rng, use, dtype, path):
    x = randn(rng, (2, 1100, 3, 4, 32), dtype)             # (B, S, qkv, H, D)
    q = x[:, :5, 0].transpose(0, 2, 1, 3)
    k = x[:, ::-1, 1].transpose(0, 2, 1, 3)
    v = np.broadcast_to(x[:1, :, 2, :1].transpose(0, 2, 1, 3), (2, 4, 1100, 32))
    expected = ref.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                causal_alignment="bottom_right")
    for name in BUILDS:
        use(name, path)
        out = np.zeros((2, 5, 4, 32), dtype).transpose(0, 2, 1, 3)
        sdpa(q, k, v, is_causal=True, causal_alignment="bottom_right", out=out)
        assert_close(out, expected, tol(dtype), what=name)


@pytest.mark.parametrize("path", PATHS)
def test_rows_path_split_chunks_fully_hidden(rng, use, path):
    """Decode with a sliding window: whole split-K chunks see no key for some
    rows, and some rows see nothing at all."""
    q = randn(rng, (1, 4, 2, 16), np.float64)
    k = randn(rng, (1, 1, 3500, 16), np.float64)
    v = randn(rng, (1, 1, 3500, 8), np.float64)
    m = np.ones((2, 3500), bool)
    m[1] = False
    for name in BUILDS:
        use(name, path)
        for kw in ({"window": (10, 0), "causal_alignment": "bottom_right"},
                   {"window": (0, 5)}, {"attn_mask": m, "window": (2000, None)}):
            out = sdpa(q, k, v, enable_gqa=True, **kw)
            expected = ref.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
            assert_close(out, expected, 1e-12, what=f"{name} {kw}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_path_nan_query_row(use, path, dtype):
    """Every score of a row is NaN -> the output row is NaN on both layouts
    (not zeros, which would mean "fully masked")."""
    q = np.zeros((1, 2, 3, 4), dtype)
    q[0, 0, 1, 0] = np.nan
    k = np.ones((1, 2, 1500, 4), dtype)
    v = np.ones((1, 2, 1500, 2), dtype)
    for name in BUILDS:
        use(name, path)
        out = sdpa(q, k, v)
        assert np.all(np.isnan(out[0, 0, 1])), (name, out[0, 0, 1])
        assert np.all(out[0, 0, [0, 2]] == 1) and np.all(out[0, 1] == 1)
        # all keys NaN
        out = sdpa(np.ones((1, 4), dtype), np.full((3, 4), np.nan, dtype),
                   np.ones((3, 2), dtype))
        assert np.all(np.isnan(out)), (name, out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layout_bit_identical_across_nthreads(rng, build, dtype, many_threads):
    """Direct kernel calls: the thread count (also above the task count)
    never changes a bit, on either layout."""
    q = randn(rng, (1, 4, 3, 32), dtype)
    k = randn(rng, (1, 2, 2100, 32), dtype)
    v = randn(rng, (1, 2, 2100, 32), dtype)
    for path in PATHS:
        F._k = PinnedBuild(build, path)
        outs = [sdpa(q, k, v, enable_gqa=True, num_threads=n) for n in (1, 2, 4, 64)]
        for o in outs[1:]:
            assert np.array_equal(outs[0], o)


@pytest.mark.parametrize("dtype", DTYPES)
def test_materialised_kernels_every_build(rng, build, dtype):
    q = randn(rng, (2, 3, 67, 40), dtype)
    k = randn(rng, (1, 3, 131, 40), dtype)
    v = randn(rng, (2, 1, 131, 9), dtype)
    s = fastattn.attention_scores(q, k, scale=0.15)   # ~N(0, 1) logits
    assert_close(s, ref.attention_scores(q, k, 0.15), 100 * tol(dtype, "scores_rtol"))
    p = fastattn.softmax(s)
    assert_close(p, ref.softmax(s), np.finfo(dtype).tiny, tol(dtype, "softmax_rtol"))
    o = fastattn.weighted_sum(p, v)
    assert_close(o, ref.weighted_sum(p, v), tol(dtype))
    w = fastattn.attention_weights(q, k, is_causal=True, alibi_slopes=[0.1, 0.2, 0.3])
    assert_close(w, ref.attention_weights(q, k, is_causal=True,
                                          alibi_slopes=[0.1, 0.2, 0.3]),
                 np.finfo(dtype).tiny, 10 * tol(dtype, "softmax_rtol"))


# ---------------------------------------------------------------------------
# classify_mask
# ---------------------------------------------------------------------------

def _expected_classes(m, kind, BR, BC):
    """(nq, nk) classes of one (Lm, Sm) mask slice: 0 hidden, 1 visible, 2 partial."""
    Lm, Sm = m.shape
    nq = -(-Lm // BR) if Lm > 1 else 1
    nk = -(-Sm // BC) if Sm > 1 else 1
    out = np.empty((nq, nk), np.uint8)
    for a in range(nq):
        for b in range(nk):
            t = m[a * BR:(a + 1) * BR, b * BC:(b + 1) * BC]
            vis = t if kind == F._k.MASK_BOOL else (t == 0)
            hid = ~t if kind == F._k.MASK_BOOL else (t == -np.inf)
            out[a, b] = (F._k.TILE_HIDDEN if hid.all() else
                         F._k.TILE_VISIBLE if vis.all() else F._k.TILE_PARTIAL)
    return out


@pytest.mark.parametrize("mdtype", [np.bool_, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 200), (200, 1), (130, 129), (64, 64), (65, 63)])
def test_classify_mask(rng, build, mdtype, shape):
    BR, BC = build.TILE_ROWS, build.TILE_KEYS
    Lm, Sm = shape
    n = 3
    if mdtype is np.bool_:
        m = np.ones((n, Lm, Sm), bool)
        m[1] = False
        m[2] = rng.random((Lm, Sm)) > 0.002      # mostly visible, some partial tiles
        m[2, :BR, BC:] = False                   # a hidden block
        kind = build.MASK_BOOL
    else:
        m = np.zeros((n, Lm, Sm), mdtype)
        m[1] = -np.inf
        m[2] = np.where(rng.random((Lm, Sm)) > 0.5, 0.0, -np.inf)
        m[2, :BR, :BC] = 0.0
        m[2, -1, -1] = 0.5                        # a non-zero finite bias is partial
        m[2, 0, 0] = np.nan                       # NaN is neither visible nor hidden
        kind = build.MASK_FLOAT
    nq = -(-Lm // BR) if Lm > 1 else 1
    nk = -(-Sm // BC) if Sm > 1 else 1
    tab = np.full((n, nq, nk), 9, np.uint8)
    moff = np.arange(n, dtype=np.int64) * Lm * Sm
    msq = Sm if Lm > 1 else 0
    msk = 1 if Sm > 1 else 0
    build.classify_mask(build.MaskCall(mask=m, kind=kind, moff=moff, msq=msq, msk=msk,
                                       Lm=Lm, Sm=Sm, tab=tab, nthreads=2))
    for i in range(n):
        assert np.array_equal(tab[i], _expected_classes(m[i], kind, BR, BC)), i


# ---------------------------------------------------------------------------
# the call objects at the Python/kernel boundary
# ---------------------------------------------------------------------------

def _flash_fields(mod, rng, dtype=np.float64, L=5, S=7, D=4, Dv=3):
    q, k = randn(rng, (L, D), dtype), randn(rng, (S, D), dtype)
    v, out = randn(rng, (S, Dv), dtype), np.zeros((L, Dv), dtype)
    z = np.zeros(1, np.int64)
    return dict(q=q, qoff=z, qs=D, k=k, koff=z, ks=D, v=v, voff=z, vs=Dv,
                out=out, ooff=z, os=Dv, L=L, S=S, D=D, Dv=Dv, nb=1, Hq=1, Hkv=1,
                scale=0.5, nthreads=1)


def test_named_constants_are_distinct_and_shared_by_builds():
    for name in BUILDS:
        mod = _dispatch.load_build(name)
        assert len({mod.MASK_NONE, mod.MASK_BOOL, mod.MASK_FLOAT}) == 3
        assert len({mod.PATH_AUTO, mod.PATH_LANES, mod.PATH_ROWS}) == 3
        assert len({mod.TILE_HIDDEN, mod.TILE_VISIBLE, mod.TILE_PARTIAL}) == 3
        for c in ("MASK_NONE", "MASK_BOOL", "MASK_FLOAT", "PATH_AUTO", "PATH_LANES",
                  "PATH_ROWS", "TILE_HIDDEN", "TILE_VISIBLE", "TILE_PARTIAL"):
            assert getattr(mod, c) == getattr(F._k, c)


@pytest.mark.parametrize("path", PATHS)
def test_flash_call_fields_by_name(rng, build, path):
    kw = _flash_fields(build, rng)
    call = build.FlashCall(**kw, right=0, path=path)
    assert call.L == 5 and call.right == 0 and call.left is None and call.path == path
    assert build.flash(call) is kw["out"]
    expected = ref.scaled_dot_product_attention(kw["q"], kw["k"], kw["v"], is_causal=True,
                                                scale=0.5)
    assert_close(kw["out"], expected, 1e-12)


@pytest.mark.parametrize("field", ["q", "k", "v", "out", "qoff", "koff", "voff", "ooff",
                                   "qs", "ks", "vs", "os", "L", "S", "D", "Dv", "nb",
                                   "Hq", "Hkv", "scale", "nthreads"])
def test_flash_call_refuses_unset_fields(rng, build, field):
    kw = _flash_fields(build, rng)
    out = kw["out"]
    del kw[field]
    with pytest.raises(ValueError, match=f"'{field}' was never set"):
        build.flash(build.FlashCall(**kw))
    assert not out.any()


def test_flash_call_refuses_inconsistent_fields(rng, build):
    kw = _flash_fields(build, rng)
    with pytest.raises(ValueError, match="qoff must be a contiguous int64 array of at least 2"):
        build.flash(build.FlashCall(**{**kw, "nb": 2}))
    with pytest.raises(ValueError, match="qoff must be a contiguous int64"):
        build.flash(build.FlashCall(**{**kw, "qoff": np.zeros(1, np.int32)}))
    with pytest.raises(TypeError, match="share one"):
        build.flash(build.FlashCall(**{**kw, "out": np.zeros((5, 3), np.float32)}))
    with pytest.raises(ValueError, match="'Hkv'"):
        build.flash(build.FlashCall(**{**kw, "Hq": 3, "Hkv": 2}))
    with pytest.raises(ValueError, match="'mask'"):
        build.flash(build.FlashCall(**kw, mask_kind=build.MASK_BOOL))
    with pytest.raises(ValueError, match="'slopes"):
        build.flash(build.FlashCall(**kw, slopes=np.ones(1, np.float32)))
    with pytest.raises(TypeError):
        build.FlashCall(q=[1.0])              # arrays only
    with pytest.raises(TypeError):
        build.FlashCall(qs=1, bogus=2)        # no unknown fields
    with pytest.raises(TypeError):
        build.flash(None)
    assert not kw["out"].any()


def test_flash_call_keeps_its_arrays_alive(rng, build):
    """The call object owns references to every array it points into: the
    caller's names can go away before the kernel runs."""
    import gc
    kw = _flash_fields(build, rng)
    expected = ref.scaled_dot_product_attention(kw["q"], kw["k"], kw["v"], scale=0.5)
    arrays = {n: np.array(a) for n, a in kw.items() if isinstance(a, np.ndarray)}
    call = build.FlashCall(**{**kw, **arrays})
    del arrays, kw
    gc.collect()
    assert_close(build.flash(call), expected, 1e-12)


def test_other_calls_refuse_unset_fields(rng, build):
    x = randn(rng, (4, 6), np.float64)
    z = np.zeros(1, np.int64)
    out = np.zeros((4, 6))
    with pytest.raises(ValueError, match="'C' was never set"):
        build.softmax(build.SoftmaxCall(x=x, xoff=np.arange(4) * 6, xs=1, out=out,
                                        ooff=np.arange(4) * 6, os=1, nthreads=1))
    with pytest.raises(ValueError, match="'scale' was never set"):
        build.scores(build.ScoresCall(q=x, qoff=z, qs=6, k=x, koff=z, ks=6, out=np.zeros((4, 4)),
                                      ooff=z, os=4, L=4, S=4, D=6, nthreads=1))
    with pytest.raises(ValueError, match="'Dv' was never set"):
        build.weighted_sum(build.WeightedSumCall(p=x, poff=z, ps=6, v=x, voff=z, vs=6,
                                                 out=out, ooff=z, os=6, L=4, S=6, nthreads=1))
    with pytest.raises(ValueError, match="'tab"):
        build.classify_mask(build.MaskCall(mask=x, kind=build.MASK_FLOAT, moff=z, Lm=4, Sm=6,
                                           nthreads=1))
    with pytest.raises(ValueError, match="'nthreads' was never set"):
        build.linear(build.LinearCall(x=x, xs=6, w=x, ws=6, out=np.zeros((4, 4)), ys=4))
    with pytest.raises(TypeError, match="share one"):
        build.linear(build.LinearCall(x=x, xs=6, w=x.astype(np.float32), ws=6,
                                      out=np.zeros((4, 4)), ys=4, nthreads=1))
    assert not out.any()
    # and work once every field is there
    build.softmax(build.SoftmaxCall(x=x, xoff=np.arange(4) * 6, xs=1, out=out,
                                    ooff=np.arange(4) * 6, os=1, C=6, nthreads=1))
    assert_close(out, ref.softmax(x), 1e-15)
