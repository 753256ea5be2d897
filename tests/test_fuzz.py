"""Hypothesis fuzzing of the public API against the float64 reference.

Shapes, leading dims, strides (transposed, negative, padded rows, a
non-contiguous last axis, stride-0 broadcasts), masks (bool / float,
broadcast shapes, random fully masked rows), causal / alignment / window /
ALiBi, GQA, scale, out= views and both dtypes.  Derandomized and without an
example database, so CI sees the same examples every run; example counts are
bounded to keep the file around 30-60 s on 2 cores.
"""
import numpy as np
import pytest
import scipy.special
from conftest import assert_close, tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn
from fastattn import reference as ref

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)

seq = st.one_of(st.integers(0, 80), st.sampled_from([63, 64, 65, 127, 128, 129, 200]),
                st.sampled_from([1023, 1025, 1500]))
small_seq = st.one_of(st.integers(1, 20), st.sampled_from([63, 64, 65, 130]))
emb = st.one_of(st.integers(1, 20), st.sampled_from([31, 32, 33, 64, 80, 96, 128]))


def view(rng, shape, dtype, layout):
    """An array of ``shape`` laid out as ``layout`` says (values random)."""
    shape = tuple(shape)
    nd = len(shape)
    if layout == "transposed" and nd >= 3:
        sw = shape[:-3] + (shape[-2], shape[-3], shape[-1])
        return rng.standard_normal(sw).astype(dtype).swapaxes(-2, -3)
    if layout == "negative":
        a = rng.standard_normal(shape).astype(dtype)
        return a[(slice(None, None, -1),) * (nd - 1)]     # last axis stays contiguous
    if layout == "padded":
        a = rng.standard_normal(shape[:-1] + (shape[-1] + 5,)).astype(dtype)
        return a[..., 2:2 + shape[-1]]
    if layout == "last_strided":
        a = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)
        return a[..., ::2]
    if layout == "reversed_last":
        return rng.standard_normal(shape).astype(dtype)[..., ::-1]   # copied once
    if layout == "broadcast" and nd >= 3:
        small = tuple(1 if i < nd - 2 else n for i, n in enumerate(shape))
        return np.broadcast_to(rng.standard_normal(small).astype(dtype), shape)
    return rng.standard_normal(shape).astype(dtype)


layouts = st.sampled_from(["c", "transposed", "negative", "padded",
                           "last_strided", "broadcast", "reversed_last"])


@st.composite
def attention_case(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    L, S = draw(seq), draw(seq)
    if L > 200 and S > 200:
        S = draw(small_seq)
    E, Ev = draw(emb), draw(emb)
    gqa = draw(st.booleans())
    Hkv = draw(st.integers(1, 3))
    Hq = Hkv * draw(st.integers(1, 3)) if gqa else Hkv
    nbatch = draw(st.integers(0, 2))
    batch = tuple(draw(st.lists(st.integers(1, 2), min_size=nbatch, max_size=nbatch)))
    if not gqa and draw(st.booleans()):
        lead_q = batch + (Hq,)
        lead_k = batch + (draw(st.sampled_from([1, Hq])),)
        lead_v = batch[-1:] + (draw(st.sampled_from([1, Hq])),) if batch else (Hq,)
    elif not gqa and draw(st.booleans()):
        lead_q = lead_k = lead_v = batch                   # no head axis at all
    else:
        lead_q, lead_k, lead_v = batch + (Hq,), batch + (Hkv,), batch + (Hkv,)
    q = view(rng, lead_q + (L, E), dtype, draw(layouts))
    k = view(rng, lead_k + (S, E), dtype, draw(layouts))
    v = view(rng, lead_v + (S, Ev), dtype, draw(layouts))
    kw = {"enable_gqa": gqa}
    try:
        out_lead = np.broadcast_shapes(lead_q, lead_k, lead_v) if not gqa \
            else np.broadcast_shapes(lead_q[:-1], lead_k[:-1], lead_v[:-1]) + (Hq,)
    except ValueError:
        out_lead = None
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    if mask_kind != "none" and out_lead is not None:
        full = tuple(out_lead) + (L, S)
        keep = draw(st.lists(st.booleans(), min_size=len(full), max_size=len(full)))
        ndrop = draw(st.integers(0, max(0, len(full) - 2)))
        mshape = tuple(n if k_ else 1 for n, k_ in zip(full, keep))[ndrop:]
        vis = rng.random(mshape) > draw(st.sampled_from([0.0, 0.3, 0.9]))
        if len(mshape) >= 2 and mshape[-2] > 1 and draw(st.booleans()):
            vis[..., rng.integers(0, mshape[-2]), :] = False   # a fully masked row
        if mask_kind == "bool":
            m = vis
        else:
            m = np.where(vis, rng.standard_normal(mshape), -np.inf).astype(dtype)
        if draw(st.booleans()) and m.ndim >= 2:
            m = np.ascontiguousarray(np.swapaxes(m, -1, -2)).swapaxes(-1, -2)
        kw["attn_mask"] = m
    kw["is_causal"] = draw(st.booleans())
    kw["causal_alignment"] = draw(st.sampled_from(["top_left", "bottom_right"]))
    if draw(st.booleans()):
        side = st.one_of(st.none(), st.just(-1), st.integers(0, 70))
        kw["window"] = (draw(side), draw(side))
    # (2-D inputs with ALiBi: known reference shape bug, covered by
    # test_reference.py::test_reference_2d_alibi_shape; kept out of the fuzz
    # so it can find other things)
    if draw(st.booleans()) and out_lead:
        # |bias| <= ~8 keeps float32 logits O(1), where the 1e-5 bound holds
        heads = out_lead[-1]
        kw["alibi_slopes"] = rng.random(heads) * 8 / max(L, S, 1)
    if draw(st.booleans()):
        kw["scale"] = draw(st.floats(-0.5, 0.5, allow_nan=False))
    return q, k, v, kw, out_lead


@FUZZ
@given(case=attention_case(), use_out=st.booleans())
def test_sdpa_fuzz(case, use_out):
    q, k, v, kw, out_lead = case
    try:
        expected = ref.scaled_dot_product_attention(q, k, v, **kw)
    except ValueError:
        expected = None             # shapes the reference cannot broadcast either
    if expected is None or out_lead is None:
        # same dtypes throughout: only the shapes can be wrong, a ValueError
        with pytest.raises(ValueError):
            fastattn.scaled_dot_product_attention(q, k, v, **kw)
        return
    out = None
    if use_out:
        # write into a transposed view of a (…, L, H, Ev)-ordered buffer
        shp = expected.shape
        if len(shp) >= 3:
            out = np.full(shp[:-3] + (shp[-2], shp[-3], shp[-1]), np.nan,
                          q.dtype).swapaxes(-2, -3)
        else:
            out = np.full(shp, np.nan, q.dtype)
    res = fastattn.scaled_dot_product_attention(q, k, v, out=out, **kw)
    if out is not None:
        assert res is out
    assert res.dtype == q.dtype
    # N(0,1) inputs; an explicit scale is at most 0.5 so logits stay O(sqrt(E))
    atol = tol(q.dtype) * (1 if q.dtype == np.float64 else 2)
    assert_close(res, expected, atol, what=str({k_: getattr(v_, "shape", v_)
                                                 for k_, v_ in kw.items()}))
    if not np.all(np.isfinite(res)):
        raise AssertionError("non-finite output from finite inputs")


@FUZZ
@given(case=attention_case())
def test_attention_weights_fuzz(case):
    q, k, _, kw, out_lead = case
    if out_lead is None or k.shape[-2] > 300 or q.shape[-2] > 300:
        return
    try:
        expected = ref.attention_weights(q, k, **kw)
    except ValueError:
        return
    w = fastattn.attention_weights(q, k, **kw)
    assert w.dtype == q.dtype
    assert_close(w, expected, 10 * tol(q.dtype, "softmax_rtol") + np.finfo(q.dtype).tiny,
                 20 * tol(q.dtype, "softmax_rtol") if q.dtype == np.float32 else 1e-11)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1),
       shape=st.lists(st.integers(0, 9), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]),
       data=st.data())
def test_softmax_fuzz(seed, shape, dtype, data):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([n + 1 for n in shape]).astype(dtype)
    # random strided / reversed / transposed view of it
    idx = tuple(slice(None, None, data.draw(st.sampled_from([1, -1, 2, -2])))
                for _ in x.shape)
    x = x[idx]
    perm = data.draw(st.permutations(range(x.ndim)))
    x = x.transpose(perm)
    if data.draw(st.booleans()):
        x = x.copy()
        x[rng.random(x.shape) < 0.3] = -np.inf
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    in_place = data.draw(st.booleans())
    with np.errstate(invalid="ignore"):
        expected = ref.softmax(x, axis=axis)
        if not np.any(np.isneginf(x)):
            expected_scipy = scipy.special.softmax(x.astype(np.float64), axis=axis)
            assert_close(expected, expected_scipy, 0, 1e-13)
    if in_place:
        y = x.copy() if not x.flags.writeable or data.draw(st.booleans()) else x
        res = fastattn.softmax(y, axis=axis, out=y)
        assert res is y
    else:
        res = fastattn.softmax(x, axis=axis)
    assert_close(res, expected, np.finfo(dtype).tiny, tol(dtype, "softmax_rtol"))
