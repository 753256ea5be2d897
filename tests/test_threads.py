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
    ncpu = _threads_mod.usable_cpus().count
    for bad in ("", "0", "-2", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert fastattn.get_num_threads() == ncpu
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert fastattn.get_num_threads() == ncpu


# ---------------------------------------------------------------------------
# the default: CPU affinity, capped by a cgroup CPU quota
# ---------------------------------------------------------------------------

def _cgroup(tmp_path, files, proc=None):
    """A fake cgroup tree under tmp_path: {relative file: text}; returns
    (root, proc_cgroup file)."""
    root = tmp_path / "cg"
    root.mkdir()
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    pc = tmp_path / "proc_cgroup"
    pc.write_text(proc if proc is not None else "0::/\n")
    return str(root), str(pc)


@pytest.mark.parametrize("files,proc,expected", [
    ({}, None, None),
    ({"cpu.max": "max 100000\n"}, None, None),
    ({"cpu.max": "200000 100000\n"}, None, (2, "cpu.max")),
    ({"cpu.max": "150000 100000"}, None, (2, "cpu.max")),            # rounded up
    ({"cpu.max": "10000 100000"}, None, (1, "cpu.max")),             # at least 1
    ({"cpu.max": "garbage"}, None, None),
    ({"cpu.max": "100000 0"}, None, None),
    ({"cpu.max": "-5 100000"}, None, None),
    ({"cpu.max": ""}, None, None),
    ({"cpu.max": "1.5 100000"}, None, None),
    ({"cpu.max": "\xff\xfe"}, None, None),
    # the process's own group and every group above it: the smallest wins
    ({"a/b/cpu.max": "max 100000", "a/cpu.max": "300000 100000",
      "cpu.max": "500000 100000"}, "0::/a/b\n", (3, "a/cpu.max")),
    # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
     "1:cpu:/\n", None),
    ({"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"},
     "1:cpu:/\n", (3, "cpu/cpu.cfs_quota_us")),
    ({"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "100000",
      "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000"},
     "4:cpu,cpuacct:/docker/x\n", (1, "cpu,cpuacct/docker/x/cpu.cfs_quota_us")),
    # a container: /proc/self/cgroup names the host's path, the mount is the group
    ({"cpu/cpu.cfs_quota_us": "400000", "cpu/cpu.cfs_period_us": "100000"},
     "2:cpu:/docker/abc\n", (4, "cpu/cpu.cfs_quota_us")),
    ({"cpu/cpu.cfs_quota_us": "abc", "cpu/cpu.cfs_period_us": "100000"},
     "1:cpu:/\n", None),
    ({"cpu/cpu.cfs_quota_us": "100000"}, "1:cpu:/\n", None),        # no period file
])
def test_cgroup_cpu_quota(tmp_path, files, proc, expected):
    root, pc = _cgroup(tmp_path, files, proc)
    n, path = _threads_mod.cgroup_cpu_quota(root, pc)
    if expected is None:
        assert (n, path) == (None, None)
    else:
        assert (n, path) == (expected[0], os.path.join(root, expected[1]))


def test_cgroup_quota_unreadable_proc_file(tmp_path):
    root, _ = _cgroup(tmp_path, {"cpu.max": "200000 100000"})
    assert _threads_mod.cgroup_cpu_quota(root, str(tmp_path / "missing")) == \
        (2, os.path.join(root, "cpu.max"))
    assert _threads_mod.cgroup_cpu_quota(str(tmp_path / "nothing"), None) == (None, None)


@pytest.mark.parametrize("quota,expected", [
    ("100000 100000", (1, "cgroup CPU quota ({root}/cpu.max)")),     # quota < affinity
    ("350000 100000", (4, "CPU affinity (sched_getaffinity)")),      # 3.5 rounds up to 4
    ("800000 100000", (4, "CPU affinity (sched_getaffinity)")),      # quota > affinity
    ("max 100000", (4, "CPU affinity (sched_getaffinity)")),
    ("broken", (4, "CPU affinity (sched_getaffinity)")),
])
def test_usable_cpus(tmp_path, monkeypatch, quota, expected):
    root, pc = _cgroup(tmp_path, {"cpu.max": quota})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    got = _threads_mod.usable_cpus(root, pc)
    assert got == (expected[0], expected[1].format(root=root))
    assert got.count == expected[0]


def test_describe_num_threads_sources(tmp_path, monkeypatch):
    root, pc = _cgroup(tmp_path, {"cpu.max": "100000 100000"})
    monkeypatch.setattr(_threads_mod, "_usable_cpus",
                        lambda: _threads_mod.usable_cpus(root, pc))
    describe = fastattn.describe_num_threads
    fastattn.set_num_threads(None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert describe() == (1, f"cgroup CPU quota ({root}/cpu.max)")
    assert fastattn.get_num_threads() == 1
    for bad in ("", "0", "-2", "many", "2.5", ",3"):      # invalid: ignored
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert describe() == (1, f"cgroup CPU quota ({root}/cpu.max)"), bad
    monkeypatch.setenv("OMP_NUM_THREADS", "6")            # beats the quota
    assert describe() == (6, "OMP_NUM_THREADS")
    fastattn.set_num_threads(5)                           # beats OMP_NUM_THREADS
    assert describe() == (5, "set_num_threads")
    with fastattn.threads(3):                             # beats set_num_threads
        assert describe() == (3, "fastattn.threads(n) block")
        assert describe(7) == (7, "num_threads argument")  # beats everything
        assert _threads_mod.resolve(7) == 7
    with pytest.raises(ValueError, match="positive integer"):
        describe(0)


def test_default_count_is_what_the_kernels_get(monkeypatch):
    """The default really reaches the kernel call (for_flops)."""
    fastattn.set_num_threads(None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_threads_mod, "_usable_cpus",
                        lambda: _threads_mod.NumThreads(3, "test"))
    assert _threads_mod.for_flops(None, 10 ** 12) == 3
    assert _threads_mod.for_rows(10 ** 9) == 3


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
    assert F._n_threads is _threads_mod.for_flops          # one home for the policy
    assert F._n_threads(4, 10) == 1
    assert F._n_threads(2, 10**12) == 2
    assert F._n_threads(8, 3 * 4_000_000 + 1) == 3         # one per 4 MFLOP


def test_row_kernel_thread_policy():
    with fastattn.threads(4):
        assert _threads_mod.for_rows(1000) == 1
        assert _threads_mod.for_rows(2 * 65536) == 2
        assert _threads_mod.for_rows(65536, cost=3) == 3
        assert _threads_mod.for_rows(10 ** 9, cost=16) == 4


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
