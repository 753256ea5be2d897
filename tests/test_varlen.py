"""fastattn.varlen_attention: packed variable-length batches in one kernel
call.  Every sequence against the float64 reference, both tile layouts on
every build, batch invariance (bit-identical whatever else is in the batch,
in any order, at any thread count), in-place reads of fused QKV views, and
every validation error."""
import sys
import numpy as np
import pytest
from conftest import DTYPES, PinnedBuild, assert_close, randn, tol

import fastattn
import fastattn.functional as F
from fastattn import _dispatch
from fastattn import reference as ref

BUILDS = _dispatch.available_builds()
varlen = fastattn.varlen_attention
sdpa = fastattn.scaled_dot_product_attention

# lengths: empty, 1, a tile edge, several query blocks, the rows layout
# (L * G <= ROWS_PATH_MAX) with more than one split-K chunk of keys
LENS_Q = [3, 0, 1, 64, 65, 130, 2, 1, 7]
LENS_K = [5, 0, 1, 64, 90, 130, 1100, 2500, 0]     # last: queries, no keys


def _cu(lens, dtype=np.int32):
    return np.concatenate([[0], np.cumsum(lens)]).astype(dtype)


def _packed(rng, lens_q, lens_k, Hq, Hkv, D, Dv, dtype):
    q = randn(rng, (sum(lens_q), Hq, D), dtype)
    k = randn(rng, (sum(lens_k), Hkv, D), dtype)
    v = randn(rng, (sum(lens_k), Hkv, Dv), dtype)
    return q, k, v


def _expected(q, k, v, cu_q, cu_k, **kw):
    """Per sequence, from the float64 reference on (H, L, D) slices."""
    out = np.zeros((q.shape[0], q.shape[1], v.shape[2]))
    for i in range(len(cu_q) - 1):
        a, b, c, d = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        if a == b or c == d:      # no queries, or nothing to see: zeros
            continue
        e = ref.scaled_dot_product_attention(
            q[a:b].transpose(1, 0, 2), k[c:d].transpose(1, 0, 2),
            v[c:d].transpose(1, 0, 2), enable_gqa=True, **kw)
        out[a:b] = e.transpose(1, 0, 2)
    return out


OPTIONS = [{}, {"is_causal": True}, {"is_causal": True, "causal_alignment": "bottom_right"},
           {"window": (6, 3)}, {"window": (40, 0), "causal_alignment": "bottom_right"},
           {"alibi_slopes": [0.3, 0.1, 0.05, 0.02], "is_causal": True},
           {"scale": 0.3, "window": (None, 2), "alibi_slopes": [0.5, 0.25, 0.1, 0.0]}]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
def test_every_sequence_matches_reference(rng, monkeypatch, dtype, heads):
    Hq, Hkv = heads
    q, k, v = _packed(rng, LENS_Q, LENS_K, Hq, Hkv, 24, 20, dtype)
    cu_q, cu_k = _cu(LENS_Q), _cu(LENS_K, np.int64)
    monkeypatch.setattr(sys.modules["fastattn.threads"], "_FLOPS_PER_THREAD", 1)       # really use 2 threads
    for kw in OPTIONS:
        expected = _expected(q, k, v, cu_q, cu_k, **kw)
        for name in BUILDS:
            mod = _dispatch.load_build(name)
            for path in (mod.PATH_AUTO, mod.PATH_LANES, mod.PATH_ROWS):
                monkeypatch.setattr(F, "_k", PinnedBuild(mod, path))
                out = varlen(q, k, v, cu_q, cu_k, num_threads=2, **kw)
                assert out.dtype == dtype and out.shape == (q.shape[0], Hq, 20)
                assert_close(out, expected, tol(dtype), what=f"{name} path={path} {kw}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_self_attention_default_cu_seqlens_k(rng, dtype):
    lens = [5, 0, 1, 70, 33]
    q, k, v = _packed(rng, lens, lens, 2, 2, 16, 16, dtype)
    cu = _cu(lens)
    for kw in ({}, {"is_causal": True}):
        out = varlen(q, k, v, cu, **kw)
        assert_close(out, _expected(q, k, v, cu, cu, **kw), tol(dtype), what=str(kw))
        assert np.array_equal(out, varlen(q, k, v, cu, cu, **kw))


def test_one_sequence_equals_dense_attention_bit_for_bit(rng):
    """varlen over one sequence runs the same tiles as the dense kernel."""
    for L, S in ((1, 40), (3, 1500), (130, 130), (64, 200)):
        q, k, v = _packed(rng, [L], [S], 4, 2, 32, 16, np.float32)
        for kw in ({}, {"is_causal": True, "causal_alignment": "bottom_right"},
                   {"window": (10, 10)}):
            out = varlen(q, k, v, [0, L], [0, S], **kw)
            dense = sdpa(q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2),
                         enable_gqa=True, **kw).transpose(1, 0, 2)
            assert np.array_equal(out, dense), (L, S, kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{"is_causal": True}, {"window": (20, 5)},
                                {"is_causal": True, "causal_alignment": "bottom_right",
                                 "alibi_slopes": [0.2, 0.1, 0.05, 0.01]}])
def test_batch_invariance_bit_identical(rng, monkeypatch, dtype, kw):
    """A sequence's result is the same bits alone, in any batch, in any
    order, at any thread count, on every build."""
    monkeypatch.setattr(sys.modules["fastattn.threads"], "_FLOPS_PER_THREAD", 1)
    lens_q = [1, 9, 64, 130, 3, 0, 200]
    lens_k = [1, 9, 64, 130, 1300, 4, 250]
    seqs = []
    for L, S in zip(lens_q, lens_k):
        seqs.append((randn(rng, (L, 4, 32), dtype), randn(rng, (S, 2, 32), dtype),
                     randn(rng, (S, 2, 24), dtype)))

    def run(order, nt):
        q = np.concatenate([seqs[i][0] for i in order])
        k = np.concatenate([seqs[i][1] for i in order])
        v = np.concatenate([seqs[i][2] for i in order])
        cu_q = _cu([lens_q[i] for i in order])
        cu_k = _cu([lens_k[i] for i in order])
        out = varlen(q, k, v, cu_q, cu_k, num_threads=nt, **kw)
        return {i: out[cu_q[j]:cu_q[j + 1]] for j, i in enumerate(order)}

    for name in BUILDS:
        monkeypatch.setattr(F, "_k", _dispatch.load_build(name))
        alone = {i: run([i], 1)[i] for i in range(len(seqs))}
        for i in range(len(seqs)):
            e = _expected(*seqs[i], [0, lens_q[i]], [0, lens_k[i]], **kw)
            assert_close(alone[i], e, tol(dtype), what=f"{name} seq {i}")
        n = len(seqs)
        orders = [list(range(n)), list(range(n))[::-1], [4, 0, 6, 2, 5, 1, 3],
                  [2, 2, 0, 2], [6, 3]]
        for order in orders:
            for nt in (1, 2, 3):
                got = run(order, nt)
                for i in order:
                    assert np.array_equal(got[i], alone[i]), (name, order, nt, i)


def test_fused_qkv_views_are_read_in_place(rng, monkeypatch):
    lens = [7, 0, 66, 1]
    T, H, D = sum(lens), 3, 16
    qkv = randn(rng, (T, 3, H, D), np.float32)
    seen = {}
    real = F._k

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def flash(self, call):
            seen["q"], seen["k"], seen["v"] = call.q, call.k, call.v
            return real.flash(call)

    monkeypatch.setattr(F, "_k", Spy())
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    out = varlen(q, k, v, _cu(lens), is_causal=True)
    for name, view in (("q", q), ("k", k), ("v", v)):
        assert seen[name].base is not None and np.shares_memory(seen[name], qkv), name
        assert seen[name].strides == view.strides
    cu = _cu(lens)
    assert_close(out, _expected(q, k, v, cu, cu, is_causal=True), tol(np.float32))
    # a contiguous copy gives the same numbers
    assert_close(varlen(np.ascontiguousarray(q), k, v, cu, is_causal=True), out, 1e-6)


def test_out_and_strided_out(rng):
    lens = [4, 0, 70]
    q, k, v = _packed(rng, lens, lens, 2, 1, 8, 6, np.float64)
    cu = _cu(lens, np.int64)
    expected = _expected(q, k, v, cu, cu)
    buf = np.full((sum(lens), 2, 10), 7.0)
    out = buf[..., 2:8]
    r = varlen(q, k, v, cu, out=out)
    assert r is out
    assert_close(out, expected, 1e-12)
    assert np.all(buf[..., :2] == 7) and np.all(buf[..., 8:] == 7)


def test_empty_batches_and_sequences_without_keys(rng):
    q, k, v = _packed(rng, [0], [0], 2, 2, 8, 8, np.float32)
    assert varlen(q, k, v, [0]).shape == (0, 2, 8)
    assert varlen(q, k, v, [0, 0, 0]).shape == (0, 2, 8)
    q, k, v = _packed(rng, [3, 2], [0, 0], 2, 2, 8, 8, np.float32)
    out = varlen(q, k, v, [0, 3, 5], [0, 0, 0])
    assert out.shape == (5, 2, 8) and not out.any()
    q, k, v = _packed(rng, [1, 1, 1], [1, 1, 1], 1, 1, 4, 4, np.float32)
    out = varlen(q, k, v, [0, 1, 2, 3], is_causal=True)
    assert np.array_equal(out, v)      # one key each: the output is its value


def test_exported():
    assert "varlen_attention" in fastattn.__all__
    assert fastattn.varlen_attention is F.varlen_attention


def test_validation_errors(rng):
    q, k, v = _packed(rng, [3, 4], [3, 4], 4, 2, 8, 6, np.float32)
    cu = _cu([3, 4])
    with pytest.raises(ValueError, match=r"q must have shape \(total_q, Hq, D\)"):
        varlen(q[0], k, v, cu)
    with pytest.raises(ValueError, match=r"v must have shape"):
        varlen(q, k, v[None], cu)
    with pytest.raises(TypeError, match="mixed dtypes"):
        varlen(q, k.astype(np.float64), v, cu)
    with pytest.raises(TypeError, match="float32 or float64"):
        varlen(q.astype(np.int32), k, v, cu)
    with pytest.raises(ValueError, match="same tokens and heads"):
        varlen(q, k, v[:6], cu)
    with pytest.raises(ValueError, match="same tokens and heads"):
        varlen(q, k, v[:, :1], cu)
    with pytest.raises(ValueError, match="feature sizes differ"):
        varlen(q, k[..., :7], v, cu)
    with pytest.raises(ValueError, match="feature size must be >= 1"):
        varlen(q[..., :0], k[..., :0], v, cu)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple"):
        varlen(q[:, :3], k, v, cu)
    with pytest.raises(TypeError, match="cu_seqlens_q must be an integer array"):
        varlen(q, k, v, cu.astype(np.float32))
    with pytest.raises(TypeError, match="cu_seqlens_k must be an integer array"):
        varlen(q, k, v, cu, np.array([False, True, True]))
    with pytest.raises(ValueError, match="cu_seqlens_q must be 1-D"):
        varlen(q, k, v, cu[None])
    with pytest.raises(ValueError, match="cu_seqlens_q must be 1-D"):
        varlen(q, k, v, np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="cu_seqlens_q must start at 0"):
        varlen(q, k, v, [1, 3, 7])
    with pytest.raises(ValueError, match="non-decreasing, got 5 then 4"):
        varlen(q, k, v, [0, 5, 4, 7])
    with pytest.raises(ValueError, match=r"cu_seqlens_q must end at total_q = q.shape\[0\] \(7\), got 6"):
        varlen(q, k, v, [0, 3, 6])
    with pytest.raises(ValueError, match=r"cu_seqlens_k must end at total_k = k.shape\[0\] \(7\), got 9"):
        varlen(q, k, v, cu, [0, 3, 9])
    with pytest.raises(ValueError, match="same number of sequences, got 2 and 1"):
        varlen(q, k, v, cu, [0, 7])
    with pytest.raises(ValueError, match="cu_seqlens_k is required"):
        varlen(q, k[:5], v[:5], cu)
    with pytest.raises(ValueError, match="scale must be finite"):
        varlen(q, k, v, cu, scale=np.inf)
    with pytest.raises(TypeError, match="scale must be a real number"):
        varlen(q, k, v, cu, scale="1")
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        varlen(q, k, v, cu, is_causal=1)
    with pytest.raises(ValueError, match="causal_alignment must be"):
        varlen(q, k, v, cu, causal_alignment="left")
    with pytest.raises(ValueError, match="window must be a pair"):
        varlen(q, k, v, cu, window=3)
    with pytest.raises(ValueError, match="window left must be"):
        varlen(q, k, v, cu, window=(-2, 0))
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \(4,\)"):
        varlen(q, k, v, cu, alibi_slopes=[0.1, 0.2])
    with pytest.raises(ValueError, match="alibi_slopes must be finite"):
        varlen(q, k, v, cu, alibi_slopes=[0.1, np.nan, 0, 0])
    with pytest.raises(ValueError, match=r"out has shape \(7, 4, 5\), expected \(7, 4, 6\)"):
        varlen(q, k, v, cu, out=np.empty((7, 4, 5), np.float32))
    with pytest.raises(TypeError, match="out has dtype float64"):
        varlen(q, k, v, cu, out=np.empty((7, 4, 6)))
    ro = np.empty((7, 4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        varlen(q, k, v, cu, out=ro)
    with pytest.raises(ValueError, match="out must have a contiguous last axis"):
        varlen(q, k, v, cu, out=np.empty((7, 4, 12), np.float32)[..., ::2])
    vv = np.zeros((7, 4, 6), np.float32)
    with pytest.raises(ValueError, match="out overlaps v"):
        varlen(q, k[:, :4 // 2], vv[:, :2], cu, out=vv)
    with pytest.raises(ValueError, match="num_threads"):
        varlen(q, k, v, cu, num_threads=0)


# ---------------------------------------------------------------------------
# fuzzing: random batches against the reference, and against themselves
# ---------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
_len = st.one_of(st.integers(0, 20), st.sampled_from([63, 64, 65, 129]),
                 st.sampled_from([1023, 1025]))


@FUZZ
@given(pairs=st.lists(st.tuples(_len, _len), min_size=1, max_size=5),
       heads=st.sampled_from([(1, 1), (2, 1), (3, 3), (4, 2), (8, 1)]),
       D=st.sampled_from([1, 7, 32, 33]), Dv=st.sampled_from([1, 5, 32]),
       dtype=st.sampled_from(DTYPES), causal=st.booleans(),
       align=st.sampled_from(["top_left", "bottom_right"]),
       window=st.sampled_from([None, (0, 0), (3, None), (None, 2), (17, 40)]),
       alibi=st.booleans(), layout=st.sampled_from(["contiguous", "qkv", "reversed"]),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_against_reference_and_alone(pairs, heads, D, Dv, dtype, causal, align,
                                          window, alibi, layout, seed):
    rng = np.random.default_rng(seed)
    Hq, Hkv = heads
    lens_q = [p[0] for p in pairs]
    lens_k = [p[1] for p in pairs]
    Tq, Tk = sum(lens_q), sum(lens_k)
    if layout == "qkv" and D == Dv and Tq == Tk and Hq == Hkv:
        x = randn(rng, (Tq, 3, Hq, D), dtype)
        q, k, v = x[:, 0], x[:, 1], x[:, 2]
    elif layout == "reversed":         # negative token strides, read in place
        q = randn(rng, (Tq, Hq, D), dtype)[::-1]
        k = randn(rng, (Tk, Hkv, D), dtype)[::-1]
        v = randn(rng, (Tk, Hkv, Dv), dtype)[::-1]
    else:
        q, k, v = _packed(rng, lens_q, lens_k, Hq, Hkv, D, Dv, dtype)
    kw = {"is_causal": causal, "causal_alignment": align, "window": window}
    if alibi:
        # |bias| <= 8, as in test_fuzz.py: float32 rounds a bias of size b
        # to ~b * 6e-8, beyond any fixed tolerance for very long rows
        kw["alibi_slopes"] = rng.random(Hq) * 8 / max(lens_q + lens_k + [1])
    cu_q, cu_k = _cu(lens_q, np.int64), _cu(lens_k)
    out = varlen(q, k, v, cu_q, cu_k, **kw)
    assert_close(out, _expected(q, k, v, cu_q, cu_k, **kw), 4 * tol(dtype), what=str(kw))
    for i in range(len(pairs)):
        a, b, c, d = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        alone = varlen(q[a:b], k[c:d], v[c:d], [0, b - a], [0, d - c], **kw)
        assert np.array_equal(alone, out[a:b]), i
