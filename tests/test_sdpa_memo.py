"""scaled_dot_product_attention's memo: calls of the same shapes, strides and
options are validated once (functional._SDPA_MEMO).  What the memo must not
change: the bits, the errors, the thread choice at each call, and what it
keeps alive."""
import gc
import weakref

import numpy as np
import pytest

import fastattn
import fastattn.functional as F


@pytest.fixture(autouse=True)
def _empty_memo():
    F._SDPA_MEMO.clear()
    yield
    F._SDPA_MEMO.clear()


def _qkv(rng, B, Hq, Hkv, L, S, D, dtype=np.float32):
    q = rng.standard_normal((B, Hq, L, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, S, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, S, D)).astype(dtype)
    return q, k, v


CASES = [
    # B, Hq, Hkv, L, S, D, kwargs
    (1, 8, 8, 1, 1000, 64, {}),
    (2, 8, 8, 3, 257, 32, {"is_causal": True, "causal_alignment": "bottom_right"}),
    (1, 8, 2, 5, 300, 80, {"enable_gqa": True}),
    (2, 4, 4, 70, 70, 128, {"is_causal": True, "scale": 0.3}),
    (1, 2, 2, 16, 1, 16, {}),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memoised_call_is_bit_identical(rng, case, dtype):
    B, Hq, Hkv, L, S, D, kw = case
    q, k, v = _qkv(rng, B, Hq, Hkv, L, S, D, dtype)
    first = F.scaled_dot_product_attention(q, k, v, **kw)      # full path, memoised
    assert len(F._SDPA_MEMO) == 1
    # new arrays of the same layout through the memo, against the full path
    q2, k2, v2 = _qkv(rng, B, Hq, Hkv, L, S, D, dtype)
    memo = F.scaled_dot_product_attention(q2, k2, v2, **kw)
    F._SDPA_MEMO.clear()
    full = F.scaled_dot_product_attention(q2, k2, v2, **kw)
    assert memo.dtype == full.dtype and memo.shape == full.shape
    np.testing.assert_array_equal(memo, full)
    assert not np.array_equal(first, memo)
    # out= through the memo too (its own key)
    out = np.empty_like(full)
    F.scaled_dot_product_attention(q2, k2, v2, out=out, **kw)
    out2 = np.full_like(full, np.nan)
    assert F.scaled_dot_product_attention(q2, k2, v2, out=out2, **kw) is out2
    np.testing.assert_array_equal(out2, full)


def test_memoised_bf16_call_is_bit_identical(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf = ml_dtypes.bfloat16
    q, k, v = _qkv(rng, 1, 4, 4, 3, 200, 64, bf)
    F.scaled_dot_product_attention(q, k, v)
    q2, k2, v2 = _qkv(rng, 1, 4, 4, 3, 200, 64, bf)
    for kw in ({}, {"out": np.empty((1, 4, 3, 64), np.float32)}):
        F.scaled_dot_product_attention(q2, k2, v2, **kw)         # memoise this form
        memo = F.scaled_dot_product_attention(q2, k2, v2, **kw).copy()
        F._SDPA_MEMO.clear()
        full = F.scaled_dot_product_attention(q2, k2, v2, **kw)
        assert memo.dtype == full.dtype
        np.testing.assert_array_equal(memo.view(np.uint8), full.view(np.uint8))


def test_memo_keeps_no_operand_alive(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 4, 64, 32)
    out = np.empty_like(q)
    refs = [weakref.ref(x) for x in (q, k, v, out)]
    F.scaled_dot_product_attention(q, k, v, out=out)
    F.scaled_dot_product_attention(q, k, v, out=out)
    assert len(F._SDPA_MEMO) == 1
    del q, k, v, out
    gc.collect()
    assert all(r() is None for r in refs)


def test_memo_still_checks_out_at_every_call(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 4, 4, 32)
    out = np.empty_like(q)
    F.scaled_dot_product_attention(q, k, v, out=out)
    assert len(F._SDPA_MEMO) == 1
    # the same layout, but out is the query itself, then a read-only array
    with pytest.raises(ValueError, match="out overlaps query"):
        F.scaled_dot_product_attention(q, k, v, out=q)
    k2 = k.copy()
    with pytest.raises(ValueError, match="out overlaps key"):
        F.scaled_dot_product_attention(q, k2, v, out=k2)
    ro = np.empty_like(q)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        F.scaled_dot_product_attention(q, k, v, out=ro)
    # and a bad num_threads
    with pytest.raises((ValueError, TypeError), match="num_threads"):
        F.scaled_dot_product_attention(q, k, v, out=out, num_threads=0)
    with pytest.raises((ValueError, TypeError), match="num_threads"):
        F.scaled_dot_product_attention(q, k, v, out=out, num_threads="2")


def test_memo_follows_thread_setting(rng, monkeypatch):
    """The thread count is chosen at every call, never remembered."""
    q, k, v = _qkv(rng, 1, 8, 8, 64, 2048, 64)
    seen = []
    real = F._k.flash

    def spy(call):
        seen.append(call.nthreads)
        return real(call)

    monkeypatch.setattr(F._k, "flash", spy)
    F.scaled_dot_product_attention(q, k, v)               # memoised
    with fastattn.threads(1):
        F.scaled_dot_product_attention(q, k, v)
    F.scaled_dot_product_attention(q, k, v, num_threads=1)
    assert seen[1] == seen[2] == 1
    if fastattn.get_num_threads() > 1:
        F.scaled_dot_product_attention(q, k, v, num_threads=2)
        assert seen[-1] == 2


def test_memo_key_separates_layouts_and_options(rng):
    q, k, v = _qkv(rng, 1, 2, 2, 6, 6, 16)
    a = F.scaled_dot_product_attention(q, k, v)
    b = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    c = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    # a transposed view: same shape, other strides
    kt = np.swapaxes(np.ascontiguousarray(np.swapaxes(k, -1, -2)), -1, -2)
    d = F.scaled_dot_product_attention(q, kt, v)
    assert len(F._SDPA_MEMO) == 3      # the view needs the readable copy: not memoised
    np.testing.assert_array_equal(d, a)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    # the same calls again, through the memo
    np.testing.assert_array_equal(F.scaled_dot_product_attention(q, k, v, is_causal=True), b)
    np.testing.assert_array_equal(F.scaled_dot_product_attention(q, k, v, scale=0.5), c)
    # masks, windows and ALiBi always take the full path
    m = np.ones((6, 6), bool)
    F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    F.scaled_dot_product_attention(q, k, v, window=(2, 0))
    F.scaled_dot_product_attention(q, k, v, alibi_slopes=[0.5, 0.25])
    assert len(F._SDPA_MEMO) == 3


def test_memo_is_bounded(rng, monkeypatch):
    monkeypatch.setattr(F, "_SDPA_MEMO_MAX", 4)
    for S in range(1, 11):
        q, k, v = _qkv(rng, 1, 1, 1, 2, S, 8)
        F.scaled_dot_product_attention(q, k, v)
        assert len(F._SDPA_MEMO) <= 4
