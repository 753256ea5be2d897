"""fastattn.threads: thread-count settings, and the kernels' thread safety and
thread-count invariance (bit-identical results for 1..4 OpenMP threads and
under 8 concurrent Python threads)."""
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import DTYPES, randn, skip_no_openmp_test

import fastattn

_threads_mod = sys.modules["fastattn.threads"]
sdpa = fastattn.scaled_dot_product_attention


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------

def test_default_from_omp_num_threads(monkeypatch):
    fastattn.set_num_threads(None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert fastattn.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5,2")        # nested spec: first level
    assert fastattn.get_num_threads() == 5
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    for bad in ("", "0", "-2", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert fastattn.get_num_threads() == ncpu
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert fastattn.get_num_threads() == ncpu


def test_set_get_and_reset(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    fastattn.set_num_threads(3)
    assert fastattn.get_num_threads() == 3
    fastattn.set_num_threads(np.int64(1))
    assert fastattn.get_num_threads() == 1
    fastattn.set_num_threads(None)
    assert fastattn.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, "2", True, False, [2], np.float64(2)])
def test_invalid_counts_raise_value_error(bad):
    before = fastattn.get_num_threads()
    with pytest.raises(ValueError, match="positive integer"):
        fastattn.set_num_threads(bad)
    assert fastattn.get_num_threads() == before
    with pytest.raises(ValueError, match="positive integer"), fastattn.threads(bad):
        pass
    q = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="num_threads"):
        sdpa(q, q, q, num_threads=bad)
    with pytest.raises(ValueError, match="num_threads"):
        fastattn.softmax(q, num_threads=bad)


def test_threads_context_nesting_and_precedence():
    fastattn.set_num_threads(2)
    with fastattn.threads(3) as n:
        assert n == 3
        assert fastattn.get_num_threads() == 3
        with fastattn.threads(1):
            assert fastattn.get_num_threads() == 1
            assert _threads_mod.resolve(4) == 4        # per-call argument wins
        assert fastattn.get_num_threads() == 3
        fastattn.set_num_threads(4)                    # the block still wins
        assert fastattn.get_num_threads() == 3
    assert fastattn.get_num_threads() == 4


def test_threads_context_restores_on_exception():
    fastattn.set_num_threads(2)
    with pytest.raises(RuntimeError), fastattn.threads(1):
        raise RuntimeError
    assert fastattn.get_num_threads() == 2


def test_threads_context_is_local_to_the_calling_thread():
    fastattn.set_num_threads(2)
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def other():
        inside.wait(5)
        seen["other"] = fastattn.get_num_threads()
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with fastattn.threads(1):
        inside.set()
        release.wait(5)
        seen["mine"] = fastattn.get_num_threads()
    t.join()
    assert seen == {"other": 2, "mine": 1}


# ---------------------------------------------------------------------------
# OpenMP
# ---------------------------------------------------------------------------

@skip_no_openmp_test
def test_openmp_is_on():
    """The kernels were built with OpenMP (set FASTATTN_SKIP_OPENMP_TEST=1 on a
    platform without it)."""
    assert fastattn.kernels.OPENMP is True
    for name in fastattn._dispatch.available_builds():
        assert fastattn._dispatch.load_build(name).OPENMP is True, name
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    if ncpu > 1 and "OMP_NUM_THREADS" not in os.environ:
        assert fastattn.kernels.omp_max_threads() > 1


# ---------------------------------------------------------------------------
# invariance across thread counts
# ---------------------------------------------------------------------------

# (B, Hq, Hkv, L, S): lanes layout, rows layout with several split-K chunks
# (S > 1024), GQA, L not a multiple of the tile.
SHAPES = [(2, 3, 3, 200, 300), (1, 8, 2, 129, 1100), (1, 1, 1, 1, 5000),
          (2, 4, 2, 3, 2100), (1, 2, 1, 7, 9), (3, 2, 2, 65, 1030)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sdpa_bit_identical_across_thread_counts(rng, many_threads, dtype, shape):
    B, Hq, Hkv, L, S = shape
    q = randn(rng, (B, Hq, L, 64), dtype)
    k = randn(rng, (B, Hkv, S, 64), dtype)
    v = randn(rng, (B, Hkv, S, 48), dtype)
    m = rng.random((L, S)) > 0.2
    for kw in ({}, {"attn_mask": m, "is_causal": True, "causal_alignment": "bottom_right"},
               {"attn_mask": np.where(m, 0.1, -np.inf).astype(dtype),
                "alibi_slopes": np.linspace(0.1, 1, Hq), "window": (700, 50)}):
        results = [sdpa(q, k, v, enable_gqa=True, num_threads=n, **kw)
                   for n in (1, 2, 3, 4)]
        for n, r in zip((2, 3, 4), results[1:]):
            assert np.array_equal(results[0], r, equal_nan=True), (n, list(kw))
        with fastattn.threads(3):
            assert np.array_equal(results[0], sdpa(q, k, v, enable_gqa=True, **kw))


@pytest.mark.parametrize("dtype", DTYPES)
def test_materialised_path_bit_identical_across_thread_counts(rng, many_threads, dtype):
    q = randn(rng, (2, 3, 130, 32), dtype)
    k = randn(rng, (2, 3, 200, 32), dtype)
    v = randn(rng, (2, 3, 200, 16), dtype)
    ref_s = fastattn.attention_scores(q, k, num_threads=1)
    ref_p = fastattn.softmax(ref_s, num_threads=1)
    ref_o = fastattn.weighted_sum(ref_p, v, num_threads=1)
    ref_w = fastattn.attention_weights(q, k, is_causal=True, num_threads=1)
    for n in (2, 3, 4):
        assert np.array_equal(ref_s, fastattn.attention_scores(q, k, num_threads=n))
        assert np.array_equal(ref_p, fastattn.softmax(ref_s, num_threads=n))
        assert np.array_equal(ref_p.swapaxes(-1, -2),
                              fastattn.softmax(ref_s.swapaxes(-1, -2), axis=-2, num_threads=n))
        assert np.array_equal(ref_o, fastattn.weighted_sum(ref_p, v, num_threads=n))
        assert np.array_equal(ref_w, fastattn.attention_weights(q, k, is_causal=True,
                                                                num_threads=n))


def test_many_threads_fixture_really_spreads_work(many_threads):
    """Guard for the invariance tests: with the fixture a tiny call asks for
    the requested team, without it the call would run on one thread."""
    from fastattn import functional as F
    assert F._n_threads(4, 10) == 4


def test_small_calls_use_one_thread():
    from fastattn import functional as F
    assert F._n_threads(4, 10) == 1
    assert F._n_threads(2, 10**12) == 2


# ---------------------------------------------------------------------------
# concurrent Python threads
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_concurrent_python_threads_match_serial(rng, many_threads, dtype):
    """8 Python threads calling at once, each on its own inputs and shapes
    (so a shared scratch buffer or a data race would show), give exactly the
    serial results."""
    jobs = []
    for t in range(8):
        L = (1, 3, 70, 129)[t % 4]
        S = (1500, 300, 150, 90)[t % 4]
        q = randn(rng, (2, 4, L, 32), dtype)
        k = randn(rng, (2, 2, S, 32), dtype)
        v = randn(rng, (2, 2, S, 24), dtype)
        m = rng.random((L, S)) > 0.3
        jobs.append((q, k, v, m))

    def work(job, n):
        q, k, v, m = job
        a = sdpa(q, k, v, attn_mask=m, enable_gqa=True, is_causal=True,
                 causal_alignment="bottom_right", num_threads=n)
        w = fastattn.attention_weights(q, k, attn_mask=m, enable_gqa=True,
                                       num_threads=n)
        s = fastattn.softmax(q, axis=-2, num_threads=n)
        return a, w, s

    serial = [work(j, 1) for j in jobs]
    with ThreadPoolExecutor(8) as ex:
        for rep in range(3):
            futs = [ex.submit(work, jobs[i], 2) for i in range(8)]
            for i, f in enumerate(futs):
                for a, b in zip(serial[i], f.result()):
                    assert np.array_equal(a, b), (rep, i)


def test_concurrent_threads_with_own_settings(rng):
    """fastattn.threads() in one Python thread does not leak into another."""
    q = randn(rng, (4, 64, 32), np.float32)
    expected = sdpa(q, q, q)
    barrier = threading.Barrier(8)

    def work(i):
        with fastattn.threads(1 + i % 3):
            barrier.wait(10)
            n = fastattn.get_num_threads()
            return n, sdpa(q, q, q)

    with ThreadPoolExecutor(8) as ex:
        res = list(ex.map(work, range(8)))
    for i, (n, out) in enumerate(res):
        assert n == 1 + i % 3
        assert np.array_equal(out, expected)
