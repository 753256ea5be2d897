"""bfloat16 q/k/v in scaled_dot_product_attention and varlen_attention.

Oracle: the float64 reference (fastattn.reference) run on the bf16-rounded
inputs (widened exactly to float64).  The error bound, per output element
(i, d), with u = 2**-8 the unit roundoff of bf16 and p the reference's
probabilities:

    |o - ref| <= e32 + u * sum_j p_ij |v_jd| + u * |ref|        (bf16 output)
    |o - ref| <= e32 + u * sum_j p_ij |v_jd|                    (float32 output)

e32 is the float32 kernel's own error (its tolerance in conftest's table):
scores, softmax statistics and accumulators are float32.  The middle term is
the rounding of P to bf16 for the PV product (the bf16 dot-product builds
round P; the portable, widening path keeps P in float32 and has no such
error, which the bit-identity test below checks exactly), the last the one
rounding of the float32 result into the bf16 output.

Also: the portable path equals the float32 kernel on the widened inputs bit
for bit (and its bf16 output is ml_dtypes' rounding of that); every option
(masks bool/float32 with broadcasts, causal both alignments, window, ALiBi,
GQA and MQA, strided and negative-stride views, out= of both dtypes) on every
build and both layouts; varlen batch invariance and thread-count
bit-identity; every validation error.
"""
import sys

import numpy as np
import pytest
from conftest import randn, tol

ml_dtypes = pytest.importorskip("ml_dtypes")

import fastattn
import fastattn.functional as F
from fastattn import _dispatch
from fastattn import reference as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
U = 2.0 ** -8
BUILDS = _dispatch.available_builds()
PATHS = (F._k.PATH_LANES, F._k.PATH_ROWS)
sdpa = fastattn.scaled_dot_product_attention
varlen = fastattn.varlen_attention
E32 = tol(np.float32)


def bf(rng, shape):
    return rng.standard_normal(shape).astype(BF16)


def f64(x):
    return np.asarray(x).astype(np.float64)


def _bound(q, k, v, out_bf16, **kw):
    """(reference, per-element bound) for sdpa on bf16 inputs."""
    q64, k64, v64 = f64(q), f64(k), f64(v)
    expected = ref.scaled_dot_product_attention(q64, k64, v64, **kw)
    wkw = {key: val for key, val in kw.items()}
    gqa = wkw.pop("enable_gqa", False)
    p = ref.attention_weights(q64, k64, enable_gqa=gqa, **wkw)
    vv = np.abs(v64)
    if gqa:
        vv = np.repeat(vv, q.shape[-3] // v.shape[-3], axis=-3)
    bound = E32 + U * (p @ vv)
    if out_bf16:
        bound = bound + U * (np.abs(expected) + E32)
    return expected, bound


def _check(out, expected, bound, what):
    out = f64(out)
    assert out.shape == expected.shape, what
    assert np.all(np.isfinite(out)), what
    err = np.abs(out - expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}")


def test_every_build_exposes_the_bf16_entry():
    for name in BUILDS:
        mod = _dispatch.load_build(name)
        assert callable(mod.flash_bf16)
        assert mod.ATTN_BF16_PATH in ("widen", "amx", "dp")


# (Hq, Hkv, L, S, E, Ev): 1-sized, odd, not a vector multiple, several split-K
# chunks on the rows layout, query blocks with a ragged end, head dims of models;
# on the dp lanes path query blocks of 1-16, 17-32, 33-48 and 49-64 rows (1 to 4
# query vectors) and an odd key count (a half-filled last key pair)
CASES = [(1, 1, 1, 1, 1, 1), (2, 1, 1, 2500, 64, 64), (4, 2, 3, 130, 80, 80),
         (2, 2, 17, 63, 7, 5), (4, 1, 65, 129, 128, 33), (2, 2, 130, 200, 32, 32),
         (2, 1, 40, 101, 48, 96)]


def _options(rng, Hq, L, S, E):
    bm = rng.random((2, Hq, L, S)) > 0.3
    bm[0, 0, 0] = False                                   # a fully masked row
    fm = np.where(rng.random((L, S)) > 0.4, rng.standard_normal((L, S)), -np.inf)
    return [
        {},
        {"is_causal": True},
        {"is_causal": True, "causal_alignment": "bottom_right", "attn_mask": bm},
        {"attn_mask": fm.astype(np.float32)},
        {"attn_mask": bm[:, :1, :1]},                      # (B, 1, 1, S)
        {"attn_mask": bm[0, 0]},                           # (L, S)
        {"window": (40, 3), "alibi_slopes": np.linspace(0.05, 1, Hq)},
        {"window": (0, 0), "causal_alignment": "bottom_right"},
        {"scale": 1.5 / np.sqrt(E)},
    ]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_build_and_layout_within_the_bound(rng, use, case):
    Hq, Hkv, L, S, E, Ev = case
    q, k, v = bf(rng, (2, Hq, L, E)), bf(rng, (2, Hkv, S, E)), bf(rng, (2, Hkv, S, Ev))
    for kw in _options(rng, Hq, L, S, E):
        kw["enable_gqa"] = True
        exp16, b16 = _bound(q, k, v, True, **kw)
        b32 = b16 - U * (np.abs(exp16) + E32)
        for name in BUILDS:
            for path in PATHS:
                use(name, path)
                o16 = sdpa(q, k, v, **kw)
                assert o16.dtype == BF16
                _check(o16, exp16, b16, f"{name} path={path} bf16 out {kw}")
                o32 = sdpa(q, k, v, out_dtype=np.float32, **kw)
                assert o32.dtype == np.float32
                _check(o32, exp16, b32, f"{name} path={path} f32 out {kw}")
                # the bf16 output is the float32 result rounded once
                assert np.array_equal(o16.view(np.uint16), o32.astype(BF16).view(np.uint16))


# feature sizes in whole vectors of every build (16 floats): the scalar tails
# of the row tiles for other sizes are the same operations, but the compiler
# is free to contract a tail's multiply-add into an FMA in one and not the other
WHOLE_VECTOR_CASES = [(1, 1, 1, 1, 16, 16), (2, 1, 1, 2500, 64, 64), (4, 2, 3, 130, 80, 80),
                      (4, 1, 65, 129, 128, 32), (2, 2, 130, 200, 32, 32)]


@pytest.mark.parametrize("case", WHOLE_VECTOR_CASES, ids=str)
def test_widening_path_is_the_fp32_kernel_bit_for_bit(rng, use, case):
    """The portable path: float32 result == float32 kernel on the widened
    inputs (same build, same layout), bf16 result == ml_dtypes' rounding."""
    Hq, Hkv, L, S, E, Ev = case
    q, k, v = bf(rng, (2, Hq, L, E)), bf(rng, (2, Hkv, S, E)), bf(rng, (2, Hkv, S, Ev))
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    checked = 0
    for name in BUILDS:
        if _dispatch.load_build(name).ATTN_BF16_PATH != "widen":
            continue
        for path in PATHS:
            use(name, path)
            for kw in _options(rng, Hq, L, S, E):
                kw["enable_gqa"] = True
                want = sdpa(q32, k32, v32, **kw)
                got = sdpa(q, k, v, out_dtype="float32", **kw)
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (name, path, kw)
                got16 = sdpa(q, k, v, **kw)
                assert np.array_equal(got16.view(np.uint16), want.astype(BF16).view(np.uint16))
                checked += 1
    assert checked   # the baseline build always widens


def test_strided_views_and_out_of_both_dtypes(rng, use):
    x = bf(rng, (2, 1100, 3, 4, 32))                       # (B, S, qkv, H, D)
    q = x[:, :70, 0].transpose(0, 2, 1, 3)
    k = x[:, ::-1, 1].transpose(0, 2, 1, 3)                # negative stride
    v = np.broadcast_to(x[:1, :, 2, :1].transpose(0, 2, 1, 3), (2, 4, 1100, 32))
    kw = {"is_causal": True, "causal_alignment": "bottom_right"}
    expected, b16 = _bound(q, k, v, True, **kw)
    b32 = b16 - U * (np.abs(expected) + E32)
    for name in BUILDS:
        for path in PATHS:
            use(name, path)
            for dt, b in ((BF16, b16), (np.float32, b32)):
                out = np.zeros((2, 70, 4, 32), dt).transpose(0, 2, 1, 3)
                res = sdpa(q, k, v, out=out, **kw)
                assert res is out and out.dtype == dt
                _check(out, expected, b, f"{name} {path} out={dt}")
                res = sdpa(q, k, v, out=out, out_dtype=dt, **kw)
                assert res is out


def test_mqa_by_broadcasting_and_plain_2d(rng, use):
    q, k, v = bf(rng, (3, 8, 20, 16)), bf(rng, (3, 1, 90, 16)), bf(rng, (3, 1, 90, 16))
    expected, b = _bound(q, k, v, True)
    for name in BUILDS:
        use(name)
        _check(sdpa(q, k, v), expected, b, name)
    q2, k2, v2 = q[0, 0], k[0, 0], v[0, 0]
    expected, b = _bound(q2, k2, v2, True)
    _check(sdpa(q2, k2, v2), expected, b, "2-D")


def test_thread_count_bit_identity(rng, many_threads):
    for shape_q, shape_k in (((2, 4, 130, 64), (2, 2, 300, 64)),
                             ((2, 8, 1, 64), (2, 2, 5000, 64))):
        q, k, v = bf(rng, shape_q), bf(rng, shape_k), bf(rng, shape_k)
        outs = [sdpa(q, k, v, is_causal=True, causal_alignment="bottom_right",
                     enable_gqa=True, num_threads=n).view(np.uint16) for n in (1, 2, 3)]
        for o in outs[1:]:
            assert np.array_equal(o, outs[0])


def test_nan_in_hidden_keys_and_fully_masked_rows(rng, use):
    q, k, v = bf(rng, (1, 2, 5, 8)), bf(rng, (1, 2, 300, 8)), bf(rng, (1, 2, 300, 8))
    k[..., 200:, :] = np.nan
    k[..., 250:, :] = np.inf
    m = np.zeros((5, 300), bool)
    m[1:, :200] = True                                    # row 0 sees nothing
    for name in BUILDS:
        for path in PATHS:
            use(name, path)
            out = sdpa(q, k, v, attn_mask=m)
            assert np.all(np.isfinite(f64(out)))
            assert np.all(f64(out[..., 0, :]) == 0)


def test_empty_and_no_keys(rng):
    q = bf(rng, (2, 3, 4, 8))
    out = sdpa(q, bf(rng, (2, 3, 0, 8)), bf(rng, (2, 3, 0, 8)))
    assert out.dtype == BF16 and np.all(f64(out) == 0)
    out = sdpa(q[:, :, :0], bf(rng, (2, 3, 5, 8)), bf(rng, (2, 3, 5, 8)), out_dtype="float32")
    assert out.shape == (2, 3, 0, 8) and out.dtype == np.float32


# ---------------------------------------------------------------------------
# varlen
# ---------------------------------------------------------------------------

LENS_Q = [3, 0, 1, 64, 65, 130, 2, 1, 7]
LENS_K = [5, 0, 1, 64, 90, 130, 1100, 2500, 0]


@pytest.mark.parametrize("D,G", [(32, 1), (64, 1), (128, 1), (64, 4)])
def test_auto_layout_is_the_fp32_rule_off_amx(rng, use, D, G):
    """Off the amx build (whose lanes tiles always run 64 query lanes),
    flash_bf16 chooses its layout with the fp32 kernel's rule: rows for at
    most rows_auto_max_l(D, G) rows per head while L * G <= 64, else lanes
    (it had sent every L * G <= 32 to rows, 1.3-4.8x slower than the lanes
    from 8-12 rows on Zen 4).  Dense and varlen calls alike."""
    S = 70
    for name in BUILDS:
        mod = use(name)
        if mod.ATTN_BF16_PATH == "amx":
            continue
        lim = mod.rows_auto_max_l(D, G)
        for L in sorted({1, lim, lim + 1, 20, 32 // G, 64 // G + 1}):
            q, k, v = bf(rng, (1, 2 * G, L, D)), bf(rng, (1, 2, S, D)), bf(rng, (1, 2, S, D))
            got = {}
            for path in (None,) + PATHS:
                use(name, path)
                got[path] = sdpa(q, k, v, enable_gqa=True, out_dtype=np.float32).view(np.uint32)
            rows, lanes = got[F._k.PATH_ROWS], got[F._k.PATH_LANES]
            assert not np.array_equal(rows, lanes), (name, D, G, L)   # the check can tell
            want = rows if (L <= lim and L * G <= 64) else lanes
            assert np.array_equal(got[None], want), (name, D, G, L, lim)
            use(name)
            o = varlen(q[0].transpose(1, 0, 2), k[0].transpose(1, 0, 2), v[0].transpose(1, 0, 2),
                       [0, L], [0, S], out_dtype=np.float32)
            assert np.array_equal(o.transpose(1, 0, 2)[None].view(np.uint32), want), (name, L)


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


@pytest.mark.parametrize("kw", [{}, {"is_causal": True, "causal_alignment": "bottom_right"},
                                {"window": (30, 2), "alibi_slopes": [0.1, 0.3, 0.5, 0.9]}],
                         ids=str)
def test_varlen_every_build_layout_and_sequence(rng, use, kw):
    Hq, Hkv, D = 4, 2, 40
    q = bf(rng, (sum(LENS_Q), Hq, D))
    k, v = bf(rng, (sum(LENS_K), Hkv, D)), bf(rng, (sum(LENS_K), Hkv, D))
    cq, ck = _cu(LENS_Q), _cu(LENS_K)
    for name in BUILDS:
        for path in (None,) + PATHS:
            use(name, path)
            o16 = varlen(q, k, v, cq, ck, **kw)
            o32 = varlen(q, k, v, cq, ck, out_dtype=np.float32, **kw)
            assert o16.dtype == BF16 and o32.dtype == np.float32
            assert np.array_equal(o16.view(np.uint16), o32.astype(BF16).view(np.uint16))
            for i in range(len(LENS_Q)):
                rq, rk = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
                qs, ks, vs = (x.transpose(1, 0, 2)[None] for x in (q[rq], k[rk], v[rk]))
                alone = sdpa(qs, ks, vs, enable_gqa=True, out_dtype=np.float32, **kw)
                # the same sequence through sdpa: the same bits (same layout)
                if path is None:
                    assert np.array_equal(o32[rq].transpose(1, 0, 2)[None].view(np.uint32),
                                          alone.view(np.uint32)), (name, i)
                if LENS_Q[i] and LENS_K[i]:
                    exp, b = _bound(qs, ks, vs, True, enable_gqa=True, **kw)
                    _check(o16[rq].transpose(1, 0, 2)[None], exp, b, f"{name} {path} seq {i}")
                else:
                    assert np.all(f64(o16[rq]) == 0)


def test_varlen_batch_invariance_and_threads(rng, many_threads):
    Hq, Hkv, D = 4, 1, 64
    q = bf(rng, (sum(LENS_Q), Hq, D))
    k, v = bf(rng, (sum(LENS_K), Hkv, D)), bf(rng, (sum(LENS_K), Hkv, D))
    cq, ck = _cu(LENS_Q), _cu(LENS_K)
    kw = {"is_causal": True, "causal_alignment": "bottom_right"}
    full = varlen(q, k, v, cq, ck, **kw, num_threads=2).view(np.uint16)
    for n in (1, 3):
        assert np.array_equal(varlen(q, k, v, cq, ck, **kw, num_threads=n).view(np.uint16), full)
    order = rng.permutation(len(LENS_Q))
    for i in order:
        rq, rk = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        alone = varlen(q[rq], k[rk], v[rk], [0, LENS_Q[i]], [0, LENS_K[i]], **kw)
        assert np.array_equal(alone.view(np.uint16), full[rq]), i
    # reversed batch
    idx = order
    qr = np.concatenate([q[cq[i]:cq[i + 1]] for i in idx])
    kr = np.concatenate([k[ck[i]:ck[i + 1]] for i in idx])
    vr = np.concatenate([v[ck[i]:ck[i + 1]] for i in idx])
    o = varlen(qr, kr, vr, _cu([LENS_Q[i] for i in idx]), _cu([LENS_K[i] for i in idx]), **kw)
    o = o.view(np.uint16)
    pos = 0
    for i in idx:
        assert np.array_equal(o[pos:pos + LENS_Q[i]], full[cq[i]:cq[i + 1]]), i
        pos += LENS_Q[i]


def test_varlen_fused_qkv_view_and_out(rng):
    qkv = bf(rng, (100, 3, 2, 16))
    cu = _cu([40, 60])
    out = np.empty((100, 2, 16), np.float32)
    res = varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, is_causal=True, out=out)
    assert res is out
    want = varlen(*(np.ascontiguousarray(qkv[:, i]) for i in range(3)), cu, is_causal=True,
                  out_dtype="float32")
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def test_mixed_dtypes_name_the_arguments(rng):
    q, k = bf(rng, (2, 4, 8)), bf(rng, (2, 5, 8))
    v32 = rng.standard_normal((2, 5, 8)).astype(np.float32)
    with pytest.raises(TypeError, match=r"value: float32"):
        sdpa(q, k, v32)
    with pytest.raises(TypeError, match=r"query: bfloat16.*key: float32"):
        sdpa(q, k.astype(np.float32), v32)
    with pytest.raises(TypeError, match=r"v: float32"):
        varlen(q, k[:, :4], v32[:, :4], [0, 2])


def test_mask_and_out_dtypes(rng):
    q, k, v = bf(rng, (2, 4, 8)), bf(rng, (2, 5, 8)), bf(rng, (2, 5, 8))
    with pytest.raises(TypeError, match="attn_mask for bfloat16 inputs must be bool or float32"):
        sdpa(q, k, v, attn_mask=np.zeros((4, 5)))
    with pytest.raises(TypeError, match="attn_mask for bfloat16"):
        sdpa(q, k, v, attn_mask=np.zeros((4, 5), BF16))
    with pytest.raises(TypeError, match="out_dtype for bfloat16 inputs must be float32 or bfloat16"):
        sdpa(q, k, v, out_dtype=np.float64)
    with pytest.raises(TypeError, match="out_dtype must be a dtype"):
        sdpa(q, k, v, out_dtype="no such dtype")
    with pytest.raises(TypeError, match="out has dtype float64, expected bfloat16"):
        sdpa(q, k, v, out=np.empty((2, 4, 8)))
    with pytest.raises(TypeError, match="out has dtype float32, expected bfloat16"):
        sdpa(q, k, v, out=np.empty((2, 4, 8), np.float32), out_dtype="bfloat16")
    q32 = q.astype(np.float32)
    with pytest.raises(TypeError, match="out_dtype=bfloat16 is not supported for float32"):
        sdpa(q32, q32, q32, out_dtype="bfloat16")
    assert sdpa(q32, q32, q32, out_dtype="float32").dtype == np.float32
    with pytest.raises(TypeError, match="out_dtype for bfloat16"):
        varlen(q, k[:, :4], v[:, :4], [0, 2], out_dtype="float64")
    with pytest.raises(ValueError, match="out overlaps"):
        sdpa(q, k, v, out=q)
    # the materialised path has no bf16 kernels: a clear error
    with pytest.raises(TypeError, match="float32 or float64"):
        fastattn.attention_weights(q, k)


def test_bf16_request_without_ml_dtypes(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ImportError, match=r'pip install "fastattn\[bf16\]"'):
        sdpa(x, x, x, out_dtype="bfloat16")
