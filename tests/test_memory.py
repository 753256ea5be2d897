"""Resident weights in huge-page-advised memory (fastattn/_memory.py): the
arena's arrays, the ``alloc=`` of both packers, and that the models load
their streamed weights there with unchanged results."""
import gc
import mmap
import os

import numpy as np
import pytest

from fastattn import _memory
from fastattn._dispatch import available_builds, load_build
from fastattn._memory import HUGE_PAGE, WeightArena

import _tiny_models as tm

LINUX_THP = hasattr(mmap, "MADV_HUGEPAGE")
MMAP = mmap.mmap            # the type (a test replaces the module's function)


@pytest.fixture
def any_size(monkeypatch):
    """Arenas take small first requests too (the tiny test models)."""
    monkeypatch.setattr(_memory, "_MIN_BYTES", 0)


def _in_mapping(a):
    """Whether ``a``'s memory is one of the arena's mmap chunks."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, MMAP)


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return fh.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def test_arena_arrays_are_aligned_zeroed_and_independent(any_size):
    ar = WeightArena(enabled=True)
    got = [ar.empty(n, dt) for n, dt in ((1, np.float32), (1000, np.float64), (0, np.uint16),
                                          (33, np.uint16), (5 << 20, np.float32))]
    for a, (n, dt) in zip(got, ((1, np.float32), (1000, np.float64), (0, np.uint16),
                                (33, np.uint16), (5 << 20, np.float32))):
        assert a.dtype == dt and a.shape == (n,) and a.flags.c_contiguous and a.flags.writeable
        assert n == 0 or a.ctypes.data % 64 == 0
        assert not a.any()
    for i, a in enumerate(got):
        a[...] = i + 1
    for i, a in enumerate(got):        # no two arrays overlap
        assert np.all(a == i + 1)
    if LINUX_THP:
        assert ar.chunks >= 1 and ar.advised == ar.chunks
        assert _in_mapping(got[0]) and _in_mapping(got[-1])
        # every chunk starts on a 2 MiB boundary: the first array of one
        assert got[0].ctypes.data % HUGE_PAGE == 0
    with pytest.raises(ValueError, match="n must be >= 0"):
        ar.empty(-1, np.float32)


def test_chunks_grow_and_large_tensors_get_their_own():
    ar = WeightArena(enabled=True)
    if not LINUX_THP:
        pytest.skip("no MADV_HUGEPAGE on this platform: the arena is NumPy memory")
    small = [ar.empty(1 << 20, np.uint8) for _ in range(20)]       # 20 MiB in 1 MiB pieces
    assert ar.chunks == 2                                            # 16 MiB, then 32 MiB
    big = ar.empty(300 << 20, np.uint8)                              # its own chunk
    assert ar.chunks == 3
    nxt = ar.empty(1 << 20, np.uint8)                                # back in the 32 MiB one
    assert ar.chunks == 3
    assert not np.shares_memory(nxt, big)
    assert all(not np.shares_memory(nxt, s) for s in small)


def test_arrays_outlive_the_arena(any_size):
    ar = WeightArena(enabled=True)
    a = ar.copy(np.arange(12, dtype=np.float32).reshape(3, 4))
    del ar
    gc.collect()
    assert a.shape == (3, 4) and np.array_equal(a, np.arange(12).reshape(3, 4))


def test_small_first_requests_stay_numpy_memory():
    ar = WeightArena(enabled=True)
    small = ar.empty(1000, np.float32)              # 4 kB: no chunk for it
    assert not _in_mapping(small) and ar.chunks == 0
    assert small.ctypes.data % 64 == 0 and not small.any()
    big = ar.empty((1 << 20) // 4, np.float32)      # 1 MiB opens the first chunk
    after = ar.empty(1000, np.float32)              # and later small ones share it
    if LINUX_THP:
        assert ar.chunks == 1 and _in_mapping(big) and _in_mapping(after)


def test_disabled_arena_is_numpy_memory(monkeypatch):
    monkeypatch.setenv("FASTATTN_HUGEPAGES", "0")
    assert not _memory.hugepages_enabled()
    ar = WeightArena()
    a = ar.empty(1000, np.float32)
    assert not ar.enabled and ar.chunks == 0 and not _in_mapping(a)
    assert a.ctypes.data % 64 == 0 and not a.any()
    monkeypatch.setenv("FASTATTN_HUGEPAGES", "1")
    assert _memory.hugepages_enabled() == LINUX_THP


@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"),
                    reason="transparent huge pages are off on this system")
def test_advised_memory_gets_huge_pages():
    ar = WeightArena(enabled=True)
    a = ar.empty(8 << 20, np.uint8)
    a[::4096] = 1                                # touch every page
    start = a.ctypes.data
    huge = 0
    with open("/proc/self/smaps") as fh:
        inside = False
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= start < hi
            elif inside and head == "AnonHugePages:":
                huge = int(line.split()[1]) * 1024
    # the kernel may decline a huge page under fragmentation, but not all four
    assert huge >= HUGE_PAGE, huge


@pytest.mark.parametrize("build", available_builds())
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_pack_weight_into_the_arena_is_the_same_weight(build, dt, any_size):
    mod = load_build(build)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((77, 130)).astype(dt)
    x = rng.standard_normal((9, 130)).astype(dt)
    ar = WeightArena(enabled=True)
    p0, p1 = mod.pack_weight(w), mod.pack_weight(w, alloc=ar.empty)
    assert np.array_equal(p1.unpack(), w) and p1.nbytes <= p0.nbytes
    if LINUX_THP:
        assert _in_mapping(p1.storage)
    y0, y1 = (np.full((9, 77), np.nan, dt) for _ in range(2))
    it = x.itemsize
    for p, y in ((p0, y0), (p1, y1)):
        mod.linear(mod.LinearCall(x=x, xs=x.strides[0] // it, wp=p, bias=None, relu=False,
                                  out=y, ys=y.strides[0] // it, nthreads=2))
    assert np.array_equal(y0.view(np.uint8), y1.view(np.uint8))


def test_pack_weight_checks_what_alloc_returns():
    mod = load_build(available_builds()[0])
    w = np.ones((8, 8), np.float32)
    misaligned = lambda n, dt: np.zeros(n + 1, dt)[1:]             # noqa: E731
    bad = {"must return a NumPy array": lambda n, dt: bytearray(4 * n),
           "64-byte boundary": misaligned,
           "at least": lambda n, dt: WeightArena(False).empty(n - 1, dt),
           "float32": lambda n, dt: WeightArena(False).empty(n, np.float64)}
    for msg, alloc in bad.items():
        with pytest.raises((TypeError, ValueError), match=msg):
            mod.pack_weight(w, alloc=alloc)


def test_bf16_pack_into_the_arena_is_the_same_weight(any_size):
    B = pytest.importorskip("fastattn.bf16")
    pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(4)
    w = rng.standard_normal((45, 70)).astype(np.float32)
    ar = WeightArena(enabled=True)
    p0, p1 = B.pack_weight(w), B.pack_weight(w, alloc=ar.empty)
    assert np.array_equal(p0._data, p1._data)
    if LINUX_THP:
        assert _in_mapping(p1._data)
    x = rng.standard_normal((3, 70)).astype(np.float32).astype(B.bfloat16)
    assert np.array_equal(B.linear(x, p0), B.linear(x, p1))
    with pytest.raises(ValueError, match="64-byte boundary"):
        B.pack_weight(w, alloc=lambda n, dt: np.zeros(n + 1, dt)[1:])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_models_stream_their_weights_from_the_arena(tmp_path, monkeypatch, dtype, any_size):
    """An encoder's packed GEMM weights and a decoder's block matrices and
    head are arena arrays; with FASTATTN_HUGEPAGES=0 they are not, and the
    outputs are bit-identical either way."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    from fastattn.models import AutoModel, AutoModelForCausalLM
    enc = tm.write_folder(tmp_path / "bert", *tm.bert())
    dec = tm.write_folder(tmp_path / "gpt2", *tm.gpt2())
    ids = np.array([[1, 5, 9, 3, 2]])
    outs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("FASTATTN_HUGEPAGES", flag)
        e = AutoModel.from_pretrained(enc, dtype=dtype)
        d = AutoModelForCausalLM.from_pretrained(dec, dtype=dtype)
        wq = e._layers[0][0]
        wq = wq.storage if hasattr(wq, "storage") else wq._data
        blk = d.blocks[0]
        heads = [blk.w_qkv, blk.w_down, d.lm_head]
        heads = [h if isinstance(h, np.ndarray) else h._data for h in heads]
        want = flag == "1" and LINUX_THP
        assert _in_mapping(wq) == want
        assert all(_in_mapping(h) == want for h in heads)
        if dtype == "float32":
            assert d.lm_head is d.embed            # tied, still one array
        outs.append((e(ids), d(ids), d.generate(ids, 6)))
    for a, b in zip(*outs):
        assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_empty_weights_pack_through_an_arena():
    B = load_build(available_builds()[0])
    ar = WeightArena(enabled=True)
    for N, K in ((0, 5), (5, 0), (0, 0)):
        p = B.pack_weight(np.zeros((N, K), np.float32), alloc=ar.empty)
        assert p.shape == (N, K) and p.unpack().shape == (N, K)


def test_a_refused_mapping_falls_back_to_smaller_then_numpy(monkeypatch, any_size):
    """Strict overcommit or an address-space limit refuses a large mapping:
    the arena retries at the request's own size, then uses NumPy memory."""
    if not LINUX_THP:
        pytest.skip("no MADV_HUGEPAGE on this platform: the arena is NumPy memory")
    real = mmap.mmap
    sizes = []

    def limited(fileno, length, *a, **k):
        sizes.append(length)
        if length > limit[0]:
            raise OSError(12, "Cannot allocate memory")
        return real(fileno, length, *a, **k)
    monkeypatch.setattr(mmap, "mmap", limited)
    limit = [8 << 20]                                # a 16 MiB chunk is refused
    ar = WeightArena(enabled=True)
    a = ar.empty(1 << 20, np.uint8)                  # 2 MiB chunk at its own size
    assert _in_mapping(a) and ar.chunks == 1
    assert sizes == [(16 << 20) + HUGE_PAGE, (2 << 20) + HUGE_PAGE]
    limit[0] = 0                                     # nothing maps any more
    b = ar.empty(3 << 20, np.uint8)
    assert not _in_mapping(b) and b.size == 3 << 20 and not b.any()
    assert b.ctypes.data % 64 == 0 and ar.chunks == 1
    a[...] = 1
    b[...] = 2
    assert np.all(a == 1) and np.all(b == 2)
