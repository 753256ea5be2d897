"""Hardening for long-running servers: no half-written ``out=``, requests too
large to allocate fail cleanly, 16 Python threads agree with the serial
results bit for bit, and resident memory stays flat over many calls
(including calls that fail validation half way).

The long variants (more time, more calls) run with ``pytest -m fuzz``.
"""
import gc
import os
import threading
import time

import numpy as np
import pytest

import fastattn
from fastattn.nn import TransformerEncoderLayer

F32 = np.float32


def _qkv(rng, lead=(2, 3), L=9, S=11, E=8, Ev=5, dtype=F32):
    return (rng.standard_normal(lead + (L, E)).astype(dtype),
            rng.standard_normal(lead + (S, E)).astype(dtype),
            rng.standard_normal(lead + (S, Ev)).astype(dtype))


def _filled(shape, dtype=F32):
    """An out= buffer with a recognisable byte pattern (NaN payloads)."""
    a = np.empty(shape, dtype)
    a.view(np.uint8)[...] = 0xA5
    return a


# ---------------------------------------------------------------------------
# no half-written out=
# ---------------------------------------------------------------------------

def _bad_sdpa_calls(q, k, v):
    L, S = q.shape[-2], k.shape[-2]
    return [
        dict(attn_mask=np.ones((4, L, S), bool)),                 # does not broadcast
        dict(attn_mask=np.ones((L, S), np.int8)),                 # wrong mask dtype
        dict(attn_mask=np.ones((L, S), np.float64)),              # mask dtype != query's
        dict(scale=np.nan), dict(scale="x"), dict(is_causal=1),
        dict(causal_alignment="middle"), dict(window=(1,)), dict(window=(-3, 0)),
        dict(alibi_slopes=np.ones(2)), dict(alibi_slopes=[np.inf, 0, 0]),
        dict(dropout_p=0.1), dict(enable_gqa="yes"),
        dict(num_threads=0), dict(num_threads=-2), dict(num_threads=1.5),
    ]


def test_sdpa_out_untouched_on_every_bad_argument(rng):
    q, k, v = _qkv(rng)
    out = _filled((2, 3, 9, 5))
    before = out.tobytes()
    for kw in _bad_sdpa_calls(q, k, v):
        with pytest.raises((ValueError, TypeError, NotImplementedError)):
            fastattn.scaled_dot_product_attention(q, k, v, out=out, **kw)
        assert out.tobytes() == before, kw
    # out overlapping an input, wrong shape / dtype / read-only
    for bad in (q[..., :5], _filled((2, 3, 9, 6)), _filled((2, 3, 9, 5), np.float64)):
        with pytest.raises((ValueError, TypeError)):
            fastattn.scaled_dot_product_attention(q, k, v, out=bad)
    vv = _filled((2, 3, 11, 5))
    snap = vv.tobytes()
    with pytest.raises(ValueError, match="overlaps"):
        fastattn.scaled_dot_product_attention(q, k, vv, out=vv[:, :, :9])
    assert vv.tobytes() == snap
    # and a good call does write it
    fastattn.scaled_dot_product_attention(q, k, v, out=out)
    assert out.tobytes() != before


@pytest.mark.parametrize("S", [0, 7])
def test_empty_keys_and_outputs_still_validate_num_threads(rng, S):
    """S == 0 (and empty outputs) take early exits: a bad num_threads must
    still be rejected before the zeros are written."""
    q, k, v = _qkv(rng, S=S)
    out = _filled((2, 3, 9, 5))
    before = out.tobytes()
    with pytest.raises(ValueError, match="num_threads"):
        fastattn.scaled_dot_product_attention(q, k, v, out=out, num_threads=0)
    assert out.tobytes() == before
    p = rng.standard_normal((2, 3, 9, S)).astype(F32)
    with pytest.raises(ValueError, match="num_threads"):
        fastattn.weighted_sum(p, v, out=out, num_threads=0)
    assert out.tobytes() == before
    e = np.zeros((0, 4), F32)
    with pytest.raises(ValueError, match="num_threads"):
        fastattn.softmax(e, num_threads=0)
    with pytest.raises(ValueError, match="num_threads"):
        fastattn.attention_scores(e, e, num_threads=-1)
    with pytest.raises(ValueError, match="num_threads"):
        fastattn.attention_weights(e, e, num_threads=0)
    z = np.zeros((0, 2, 4), F32)
    with pytest.raises(ValueError, match="num_threads"):
        fastattn.varlen_attention(z, z, z, [0], num_threads=0)


def test_varlen_out_untouched_on_every_bad_argument(rng):
    q = rng.standard_normal((10, 4, 8)).astype(F32)
    k = rng.standard_normal((12, 2, 8)).astype(F32)
    v = rng.standard_normal((12, 2, 6)).astype(F32)
    cq, ck = [0, 3, 10], [0, 5, 12]
    out = _filled((10, 4, 6))
    before = out.tobytes()
    bad = [dict(cu_seqlens_k=[0, 5, 11]), dict(cu_seqlens_k=[0, 13, 12]),
           dict(cu_seqlens_k=[1, 5, 12]), dict(cu_seqlens_k=[0, 12]),
           dict(cu_seqlens_k=[0.0, 5.0, 12.0]), dict(cu_seqlens_k=[[0, 5, 12]]),
           dict(cu_seqlens_k=ck, scale=np.inf), dict(cu_seqlens_k=ck, is_causal="no"),
           dict(cu_seqlens_k=ck, window=(0, -5)), dict(cu_seqlens_k=ck, alibi_slopes=[1.0]),
           dict(cu_seqlens_k=ck, causal_alignment=None),
           dict(cu_seqlens_k=ck, num_threads=0)]
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            fastattn.varlen_attention(q, k, v, cq, out=out, **kw)
        assert out.tobytes() == before, kw
    for cu in ([0, 3, 11], [0, -1, 10], np.array([0, 2**40, 10])):
        with pytest.raises(ValueError):
            fastattn.varlen_attention(q, k, v, cu, ck, out=out)
        assert out.tobytes() == before, cu
    fastattn.varlen_attention(q, k, v, cq, ck, out=out)
    assert out.tobytes() != before


def test_materialised_kernels_out_untouched_on_bad_arguments(rng):
    q = rng.standard_normal((3, 9, 8)).astype(F32)
    k = rng.standard_normal((3, 11, 8)).astype(F32)
    out = _filled((3, 9, 11))
    before = out.tobytes()
    for kw in (dict(scale=np.nan), dict(scale=True), dict(num_threads=0)):
        with pytest.raises((ValueError, TypeError)):
            fastattn.attention_scores(q, k, out=out, **kw)
        assert out.tobytes() == before, kw
    big = rng.standard_normal((3, 9, 15)).astype(F32)
    with pytest.raises(ValueError, match="overlaps q"):
        fastattn.attention_scores(big[..., :8], k, out=big[..., 4:15])
    x = rng.standard_normal((3, 9, 11)).astype(F32)
    for kw in (dict(axis=3), dict(axis=1.0), dict(num_threads=-1), dict(axis=True)):
        with pytest.raises((ValueError, TypeError)):
            fastattn.softmax(x, out=out, **kw)
        assert out.tobytes() == before, kw
    with pytest.raises(ValueError, match="overlap"):
        fastattn.softmax(x, out=x[::-1])
    y = x.copy()
    with pytest.raises(ValueError):
        fastattn.softmax(y, axis=5, out=y)            # in place, bad axis
    assert np.array_equal(y, x)
    p = rng.standard_normal((3, 9, 11)).astype(F32)
    v = rng.standard_normal((3, 11, 4)).astype(F32)
    o2 = _filled((3, 9, 4))
    b2 = o2.tobytes()
    for args, kw in (((p, v[:, :10]), {}), ((p, v), dict(num_threads=0)),
                     ((p, v.astype(np.float64)), {}), ((p, v[:2, None]), {})):
        with pytest.raises((ValueError, TypeError)):
            fastattn.weighted_sum(*args, out=o2, **kw)
        assert o2.tobytes() == b2, kw


# ---------------------------------------------------------------------------
# requests too large to allocate
# ---------------------------------------------------------------------------

def _huge(shape, dtype=F32):
    """A read-only array of any shape backed by one element (stride 0)."""
    return np.broadcast_to(np.ones((1,) * len(shape), dtype), shape)


# (query lead, key lead): batch products that overflow 32 bits, and output
# element / byte counts that overflow 64 bits (2**80) although each input is
# a valid stride-0 view (NumPy itself refuses views of more than 2**63 bytes)
HUGE_LEADS = [((2**16, 2**16), (2**16, 2**16)), ((2**31 + 1,), (2**31 + 1,)),
              ((2**40, 1), (1, 2**40)), ((2**44,), (1,))]


@pytest.mark.parametrize("lq,lk", HUGE_LEADS, ids=str)
def test_huge_broadcast_batch_fails_cleanly(lq, lk):
    # every output is at least 2**32 * 64 * 3 * 4 bytes (3 TiB): no machine
    # can allocate it, whatever its overcommit policy
    q, k, v = _huge(lq + (64, 8)), _huge(lk + (64, 8)), _huge(lk + (64, 3))
    for fn, args in ((fastattn.scaled_dot_product_attention, (q, k, v)),
                     (fastattn.attention_weights, (q, k)),
                     (fastattn.attention_scores, (q, k)),
                     (fastattn.weighted_sum, (_huge(lq + (64, 64)), v)),
                     (fastattn.softmax, (_huge(lq + (64, 64)),))):
        with pytest.raises((MemoryError, ValueError)) as ei:
            fn(*args)
        if ei.type is ValueError:
            assert "too big" in str(ei.value) or "too large" in str(ei.value), ei.value


def test_huge_sequence_lengths_fail_cleanly():
    # L * S overflows 32 and 64 bits; only the output would be large
    for L, S in ((2**31 + 3, 2**31 + 5), (2**40, 2**40), (2**40, 3)):
        q, k, v = _huge((L, 8)), _huge((S, 8)), _huge((S, 4))
        with pytest.raises((MemoryError, ValueError)):
            fastattn.attention_scores(q, k)
        with pytest.raises((MemoryError, ValueError)):
            fastattn.attention_weights(q, k)
        if L > 2**35:   # the (L, 4) output itself: 16 TiB
            with pytest.raises((MemoryError, ValueError)):
                fastattn.scaled_dot_product_attention(q, k, v)
    # huge feature sizes are rejected by the checks (the kernels take int)
    for E in (2**31, 2**33):
        q = _huge((3, E))
        with pytest.raises(ValueError, match="too large"):
            fastattn.scaled_dot_product_attention(q, q, _huge((3, 2)))
        with pytest.raises(ValueError, match="too large"):
            fastattn.attention_scores(q, q)


def test_huge_varlen_fails_cleanly():
    T = 2**40
    q = _huge((T, 2, 8))
    with pytest.raises((MemoryError, ValueError)):
        fastattn.varlen_attention(q, q, q, [0, T])
    # offsets past the arrays, or beyond int64 when cast from uint64
    small = np.zeros((4, 2, 8), F32)
    with pytest.raises(ValueError):
        fastattn.varlen_attention(small, small, small, np.array([0, 2**63 + 4], np.uint64))
    with pytest.raises(ValueError):
        fastattn.varlen_attention(small, small, small, np.array([0, 2**62, 4], np.int64))


def test_huge_mask_broadcast_fails_cleanly():
    q = _huge((2**40, 1, 4, 8))
    m = _huge((2**40, 1, 4, 5), np.bool_)
    k, v = np.ones((1, 1, 5, 8), F32), np.ones((1, 1, 5, 2), F32)
    with pytest.raises((MemoryError, ValueError)):
        fastattn.scaled_dot_product_attention(q, k, v, attn_mask=m)


# ---------------------------------------------------------------------------
# server-style load: 16 Python threads, mixed per-thread thread counts
# ---------------------------------------------------------------------------

def _server_work(seed):
    """The requests of one client: (kind, args, kwargs, threads)."""
    rng = np.random.default_rng(seed)
    jobs = []
    for j in range(3):
        B = int(rng.integers(1, 4))
        L = int(rng.integers(1, 70))
        dt = (np.float32, np.float64)[j % 2]
        q, k, v = _qkv(rng, (B, 2), L, L + 3, 16, 16, dt)
        jobs.append(("sdpa", (q, k, v), dict(is_causal=bool(j % 2),
                                             causal_alignment="bottom_right")))
        lens = rng.integers(0, 40, size=B + 1)
        cu = np.concatenate([[0], np.cumsum(lens)])
        T = int(cu[-1])
        x = rng.standard_normal((T, 3, 4, 8)).astype(dt)
        jobs.append(("varlen", (x[:, 0], x[:, 1, :2], x[:, 2, :2], cu), dict(is_causal=True)))
        jobs.append(("layer", (rng.standard_normal((B, L, 32)).astype(F32),), {}))
    return jobs


_LAYER = TransformerEncoderLayer(32, 4, 64, batch_first=True, rng=3, dtype=F32)


def _run(kind, args, kw):
    if kind == "sdpa":
        return fastattn.scaled_dot_product_attention(*args, **kw)
    if kind == "varlen":
        return fastattn.varlen_attention(*args, **kw)
    return _LAYER(*args, **kw)


def _server_load(seconds, nclients=16):
    work = [_server_work(i) for i in range(nclients)]
    serial = [[_run(*job) for job in w] for w in work]
    stop = time.monotonic() + seconds
    rounds = [0] * nclients
    errors = []

    def client(i):
        try:
            n = 1 + i % 3                    # 1, 2 or 3 OpenMP threads per client
            while True:
                with fastattn.threads(n):
                    for job, want in zip(work[i], serial[i]):
                        got = _run(*job)
                        if not np.array_equal(got, want, equal_nan=True):
                            raise AssertionError(f"client {i} job {job[0]} differs")
                rounds[i] += 1
                if time.monotonic() > stop:
                    return
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    ts = [threading.Thread(target=client, args=(i,)) for i in range(nclients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    assert min(rounds) >= 1
    return sum(rounds)


def test_server_threads_bit_identical():
    assert _server_load(float(os.environ.get("FASTATTN_LOAD_SECONDS", "4"))) >= 16


@pytest.mark.fuzz
def test_server_threads_bit_identical_long():
    _server_load(float(os.environ.get("FASTATTN_LOAD_SECONDS", "120")))


# ---------------------------------------------------------------------------
# resident memory stays flat
# ---------------------------------------------------------------------------

def _rss_mib():
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss / 2**20


def _calls(n, rng):
    q, k, v = _qkv(rng, (2,), 4, 6, 8, 8)
    m = np.ones((4, 6), bool)
    out = np.empty((2, 4, 8), F32)
    x = rng.standard_normal((6, 2, 8)).astype(F32)
    cu = np.array([0, 2, 6])
    bad_mask = np.ones((3, 4, 6), bool)
    for i in range(n):
        r = i % 5
        if r == 0:
            fastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, out=out)
        elif r == 1:
            fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif r == 2:
            fastattn.varlen_attention(x, x, x, cu)
        elif r == 3:   # fails half way: after the shape checks, at the mask
            try:
                fastattn.scaled_dot_product_attention(q, k, v, attn_mask=bad_mask, out=out)
            except ValueError:
                pass
        else:          # fails at the offsets, after the arrays were validated
            try:
                fastattn.varlen_attention(x, x, x, [0, 7, 6])
            except ValueError:
                pass


def _rss_growth(n):
    rng = np.random.default_rng(0)
    _calls(5000, rng)                        # warm-up: caches, allocator pools
    gc.collect()
    before = _rss_mib()
    _calls(n, rng)
    gc.collect()
    return _rss_mib() - before


@pytest.mark.skipif(os.environ.get("FASTATTN_SANITIZED") == "1",
                    reason="under AddressSanitizer freed memory sits in its quarantine, "
                           "so RSS is not a leak measure (ASan checks heap use itself)")
def test_resident_memory_flat():
    n = int(os.environ.get("FASTATTN_RSS_CALLS", "100000"))
    grown = _rss_growth(n)
    # a leak of even 64 bytes per call would be 6 MiB
    assert grown < 4.0, f"RSS grew by {grown:.1f} MiB over {n} calls"


# ---------------------------------------------------------------------------
# regressions for what the sanitizers found
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_activations_of_nan_and_inf(dt):
    """UBSan found undefined behaviour in the float32 exp of the row kernels
    (silu, gelu, gelu_tanh, swiglu): a NaN input was converted to int and
    shifted.  The result happened to be NaN on x86, so this test only fails
    outright under tools/sanitize.sh, which stops at the undefined operation;
    it also pins the values: NaN stays NaN, +-inf saturate."""
    from fastattn import reference
    from fastattn.nn import _ops
    x = np.array([[np.nan, -np.inf, np.inf, -1e30, 1e30, -88.0, 89.0, 0.0] * 3], dt)
    for act in ("silu", "gelu", "gelu_tanh"):
        out = _ops.bias_act(x, None, act)
        with np.errstate(all="ignore"):
            ref = reference.activation(x.astype(np.float64), act)
        assert np.isnan(out[0, 0]) and np.isnan(out[0, 8]), act
        fin = ~np.isnan(ref)
        # float32 exp saturates at exp(88.3): silu(-1e30) is -4.5e-9, not -0
        np.testing.assert_allclose(out[fin], ref[fin], rtol=1e-6, atol=1e-8, err_msg=act)
    h = np.concatenate([x, np.ones_like(x)], axis=1)
    s = _ops.swiglu(h)
    assert np.isnan(s[0, 0])
    np.testing.assert_allclose(s, _ops.bias_act(x, None, "silu"), rtol=1e-6, atol=1e-8)


def test_attention_weights_inf_score_under_float_mask_no_warning():
    """Found by the long fuzz: a +inf score (a -inf query entry times a
    negative key entry) hidden by a float -inf mask raised NumPy's
    'invalid value encountered in add' RuntimeWarning (an error under
    -W error) from attention_weights, although the result is defined: the
    key is hidden."""
    import warnings
    from fastattn import reference as ref
    q = np.array([[-np.inf, 0.0], [1.0, 2.0]], F32)
    k = np.array([[-1.0, 0.5], [1.0, 1.0], [2.0, -1.0]], F32)
    m = np.array([[-np.inf, 0.0, -np.inf], [0.0, -np.inf, 1.0]], F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = fastattn.attention_weights(q, k, m)
        o = fastattn.scaled_dot_product_attention(q, k, k, m)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(w, ref.attention_weights(q, k, m), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(o, ref.scaled_dot_product_attention(q, k, k, m),
                                   rtol=1e-6, atol=1e-6)
