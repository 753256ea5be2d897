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
    monkeypatch.setattr(F._SDPA_MEMO, "maxsize", 4)
    for S in range(1, 11):
        q, k, v = _qkv(rng, 1, 1, 1, 2, S, 8)
        F.scaled_dot_product_attention(q, k, v)
        assert len(F._SDPA_MEMO) <= 4


# -- varlen_attention: the same memo, the offsets keyed by value -------------

@pytest.fixture
def _empty_varlen_memo():
    F._VARLEN_MEMO.clear()
    yield
    F._VARLEN_MEMO.clear()


def _packed(rng, lens, Hq, Hkv, D, dtype=np.float32, klens=None):
    klens = lens if klens is None else klens
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    cuk = np.concatenate([[0], np.cumsum(klens)]).astype(np.int64)
    q = rng.standard_normal((int(cu[-1]), Hq, D)).astype(dtype)
    k = rng.standard_normal((int(cuk[-1]), Hkv, D)).astype(dtype)
    v = rng.standard_normal((int(cuk[-1]), Hkv, D)).astype(dtype)
    return q, k, v, cu, cuk


VARLEN_CASES = [
    ([5, 0, 9, 1], [5, 0, 9, 1], 4, 4, 32, {}),
    ([3, 7], [10, 20], 8, 2, 64, {"is_causal": True, "causal_alignment": "bottom_right"}),
    ([64, 65], None, 2, 1, 80, {"is_causal": True, "scale": 0.2}),
]


@pytest.mark.usefixtures("_empty_varlen_memo")
@pytest.mark.parametrize("case", VARLEN_CASES)
def test_memoised_varlen_is_bit_identical(rng, case):
    lens, klens, Hq, Hkv, D, kw = case
    q, k, v, cu, cuk = _packed(rng, lens, Hq, Hkv, D, klens=klens)
    cuk_arg = None if klens is None else cuk
    F.varlen_attention(q, k, v, cu, cuk_arg, **kw)
    assert len(F._VARLEN_MEMO) == 1
    q2, k2, v2, _, _ = _packed(rng, lens, Hq, Hkv, D, klens=klens)
    memo = F.varlen_attention(q2, k2, v2, cu.copy(), None if cuk_arg is None else cuk.copy(), **kw)
    F._VARLEN_MEMO.clear()
    full = F.varlen_attention(q2, k2, v2, cu, cuk_arg, **kw)
    np.testing.assert_array_equal(memo, full)
    # views of a fused projection, out= given
    qkv = np.stack([q2, q2, q2], axis=1) if klens is None else None
    if qkv is not None:
        out = np.empty_like(full)
        F.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, **kw, out=out)
        out2 = np.empty_like(full)
        F.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, **kw, out=out2)
        np.testing.assert_array_equal(out, out2)


@pytest.mark.usefixtures("_empty_varlen_memo")
def test_varlen_memo_owns_its_offsets(rng):
    """A caller that reuses one offsets buffer for the next batch must not
    change what a remembered entry computes."""
    q, k, v, cu, _ = _packed(rng, [6, 10], 2, 2, 16)
    buf = cu.astype(np.int64)                     # int64: the checks keep this very array
    a = F.varlen_attention(q, k, v, buf)
    buf[1] = 12                                   # the next batch: [12, 4]
    b = F.varlen_attention(q, k, v, buf)
    assert not np.array_equal(a, b)
    # [6, 10] again, by value, in a new int64 array: a hit on the first entry
    # (still 2 entries), which must not read the mutated buffer
    again = F.varlen_attention(q, k, v, np.array([0, 6, 16], dtype=np.int64))
    assert len(F._VARLEN_MEMO) == 2
    np.testing.assert_array_equal(again, a)
    # the int32 offsets of the same lengths are a key of their own
    np.testing.assert_array_equal(F.varlen_attention(q, k, v, cu), a)
    assert len(F._VARLEN_MEMO) == 3


@pytest.mark.usefixtures("_empty_varlen_memo")
def test_varlen_memo_still_checks_out(rng):
    q, k, v, cu, _ = _packed(rng, [4, 4], 2, 2, 16)
    out = np.empty_like(q)
    F.varlen_attention(q, k, v, cu, out=out)
    with pytest.raises(ValueError, match="out overlaps q"):
        F.varlen_attention(q, k, v, cu, out=q)
    with pytest.raises((ValueError, TypeError), match="num_threads"):
        F.varlen_attention(q, k, v, cu, out=out, num_threads=-1)
    # bad offsets never hit the memo
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        F.varlen_attention(q, k, v, np.array([0, 5, 4], np.int32))


@pytest.mark.usefixtures("_empty_varlen_memo")
def test_varlen_memo_skips_long_offset_arrays(rng, monkeypatch):
    monkeypatch.setattr(F, "_VARLEN_MEMO_MAX_SEQS", 3)
    q, k, v, cu, _ = _packed(rng, [1, 2, 3], 1, 1, 8)
    F.varlen_attention(q, k, v, cu)
    assert len(F._VARLEN_MEMO) == 0
    q, k, v, cu, _ = _packed(rng, [1, 2], 1, 1, 8)
    F.varlen_attention(q, k, v, cu)
    assert len(F._VARLEN_MEMO) == 1


def test_rebind_copies_every_other_field():
    """FlashCall.rebind lists the call's fields a second time (beside
    __init__): every public field but the four operands and the thread
    count must come over unchanged, so a field added later cannot be lost."""
    K = F._k
    arr = lambda *v: np.array(v, dtype=np.int64)
    c = K.FlashCall(q=np.ones(4, np.float32), qoff=arr(0), qs=3,
                    k=np.ones(4, np.float32), koff=arr(1), ks=5,
                    v=np.ones(4, np.float32), voff=arr(2), vs=7,
                    out=np.ones(4, np.float32), ooff=arr(3), os=9,
                    L=2, S=11, D=13, Dv=15, nb=1, Hq=17, Hkv=19, scale=0.25,
                    mask_kind=1, mask=np.ones(2, np.uint8), moff=arr(4), msq=21, msk=23,
                    tab=np.ones(3, np.int8), tidx=arr(5), left=2, right=3, off=29,
                    slopes=np.ones(1), nthreads=2, path=1, cu_q=arr(0, 2), cu_k=arr(0, 3),
                    bottom_right=True)
    ops = {name: np.zeros(1, np.float32) for name in ("q", "k", "v", "out")}
    r = c.rebind(ops["q"], ops["k"], ops["v"], ops["out"], 7)
    fields = [n for n in dir(type(c)) if not n.startswith("_")
              and type(getattr(type(c), n)).__name__ == "getset_descriptor"]
    assert len(fields) >= 36
    for n in fields:
        if n in ops:
            assert getattr(r, n) is ops[n], n
        elif n == "nthreads":
            assert r.nthreads == 7
        else:
            assert getattr(r, n) is getattr(c, n) or getattr(r, n) == getattr(c, n), n
    assert c.nthreads == 2 and c.q is not ops["q"]        # the original is untouched
