"""Resident weight memory in 2 MiB pages.

A model's weights are read again at every call.  A short query or a decode
step touches tens to hundreds of megabytes of them once each, and in 4 KiB
pages that is one TLB miss (a page walk; under a hypervisor a two-level one)
every 4 KiB.  A :class:`WeightArena` hands out the resident copies (the
packed GEMM panels, the decoders' GEMV rows) from a few large anonymous
mappings, 2 MiB-aligned and advised ``MADV_HUGEPAGE``, so the kernel backs
them with transparent huge pages where the system allows it
(``/sys/kernel/mm/transparent_hugepage/enabled`` ``always`` or ``madvise``).

Measured on a 2-core Sapphire Rapids VM, arena on against off in one process
(benchmarks/RESULTS.md): a 13-token MiniLM query 1.03-1.11x faster warm and
1.63-1.78x after 0.2 s of idle; GPT-2 decode 1.04-1.13x.

Nothing else changes: the bytes, their layout and the results are the same.
Where huge pages are unavailable (another OS, THP ``never``, the advice
refused) the arena's memory is ordinary pages.  ``FASTATTN_HUGEPAGES=0`` in
the environment turns the advice off (the arrays then come from NumPy).

Memory: an arena is a bump allocator that never frees; its chunks live as
long as any array cut from them.  Unused tails of a chunk are address space
only (never touched, never resident), except the partly used last 2 MiB page
of each chunk, so at most 2 MiB per chunk is resident beyond the weights;
chunk sizes double from 16 MiB (to 256 MiB), so a 42 MiB model has 2 chunks
and a 500 MiB one 5.  The first chunk opens with the first request of 1 MiB
or more; smaller ones before it are NumPy arrays.  KV caches stay NumPy memory
(measured: docs/architecture.md).
"""

from __future__ import annotations

import mmap
import os

import numpy as np

__all__ = ["WeightArena", "hugepages_enabled"]

HUGE_PAGE = 2 << 20
ALIGN = 64              # what the GEMM panels ask for
_MIN_BYTES = 1 << 20        # a smaller first request stays NumPy memory: a
                            # 2 MiB page for a tiny model would be mostly empty
_FIRST_CHUNK = 16 << 20     # chunk sizes double from here (a larger tensor
_MAX_CHUNK = 256 << 20      # gets a chunk of its own size)


def hugepages_enabled():
    """Whether arenas advise huge pages: Linux's ``MADV_HUGEPAGE`` exists and
    ``FASTATTN_HUGEPAGES`` is not ``0``/``off``/``false``/``no``."""
    if os.environ.get("FASTATTN_HUGEPAGES", "").strip().lower() in ("0", "off", "false", "no"):
        return False
    return hasattr(mmap, "MADV_HUGEPAGE")


class _Chunk:
    __slots__ = ("buf", "start", "end", "pos", "advised")

    def __init__(self, nbytes):
        # private: shared anonymous memory is shmem, which THP leaves alone
        m = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf = np.frombuffer(m, np.uint8)               # keeps m alive as its base
        addr = buf.ctypes.data
        self.start = (-addr) % HUGE_PAGE               # the first 2 MiB boundary
        self.end = self.start + nbytes
        self.pos = self.start
        self.buf = buf
        try:
            m.madvise(mmap.MADV_HUGEPAGE, self.start, nbytes)
            self.advised = True
        except OSError:       # refused (a kernel without THP): ordinary pages
            self.advised = False

    def take(self, nbytes):
        p = -(-self.pos // ALIGN) * ALIGN
        if p + nbytes > self.end:
            return None
        self.pos = p + nbytes
        return self.buf[p:p + nbytes]


def _numpy_empty(nbytes, dtype):
    """Zero-filled, 64-byte-aligned NumPy memory (a MemoryError if none)."""
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + nbytes].view(dtype)


class WeightArena:
    """Allocator of resident weight arrays in huge-page-advised memory.

    ``empty(n, dtype)`` gives a 1-D, 64-byte-aligned, zero-filled, writable
    array: the ``alloc`` that ``kernels.pack_weight`` and ``kernels.bf16_pack``
    accept (NumPy memory while no chunk is open and the request is under
    1 MiB, so tiny models stay in small pages); ``copy(a)`` an aligned
    C-contiguous copy of ``a``.  Use one arena while loading a model and drop it after: the
    arrays keep their memory alive.  Not thread-safe (loading is one thread).
    """

    def __init__(self, enabled=None):
        self.enabled = hugepages_enabled() if enabled is None else bool(enabled)
        self._chunk = None
        self._next = _FIRST_CHUNK
        self.chunks = 0          # mappings made
        self.advised = 0         # of them, advised huge pages

    def _new_chunk(self, nbytes):
        """A chunk for a request of ``nbytes``; None when no mapping of its
        size can be made (strict overcommit, an address-space limit): the
        request is retried at its own size, then served by NumPy."""
        need = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
        for size in dict.fromkeys((max(self._next, need), need)):
            try:
                c = _Chunk(size)
                break
            except (OSError, ValueError, OverflowError):
                continue
        else:
            return None
        self._next = min(2 * self._next, _MAX_CHUNK)
        self.chunks += 1
        self.advised += c.advised
        return c

    def empty(self, n, dtype):
        dtype = np.dtype(dtype)
        n = int(n)
        if n < 0:
            raise ValueError(f"WeightArena.empty: n must be >= 0, got {n}")
        nbytes = n * dtype.itemsize
        if not self.enabled or nbytes == 0 or (self._chunk is None and nbytes < _MIN_BYTES):
            return _numpy_empty(nbytes, dtype)
        got = self._chunk.take(nbytes) if self._chunk is not None else None
        if got is None:
            c = self._new_chunk(nbytes)
            if c is None:
                return _numpy_empty(nbytes, dtype)
            got = c.take(nbytes)
            # keep filling whichever chunk has more room left
            if self._chunk is None or c.end - c.pos > self._chunk.end - self._chunk.pos:
                self._chunk = c
        return got.view(dtype)

    def copy(self, a):
        a = np.asarray(a)
        out = self.empty(a.size, a.dtype).reshape(a.shape)
        np.copyto(out, a)
        return out
