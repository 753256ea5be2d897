"""Thread counts for fastattn's OpenMP kernels: the setting and the policy.

The setting
-----------
Resolution order for a call: the call's own ``num_threads=`` argument, the
innermost active ``fastattn.threads(n)`` block *of the calling thread or
task* (a ``contextvars`` value, so one server thread's block never changes
another's calls), the process-wide ``set_num_threads(n)``, then
``OMP_NUM_THREADS``, then the CPUs this process may actually use: its CPU
affinity (``os.sched_getaffinity``), capped by a cgroup CPU quota where one
is set (containers: ``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us`` in v1; quota / period rounded up).
:func:`describe_num_threads` says which of these gave the count
(``fastattn info`` prints it).

The policy
----------
How many of those threads one kernel call takes, from the amount of work
(the numbers are measured in ``benchmarks/NOTES.md``):

* :func:`for_flops`: attention, scores, softmax, weighted sums and the tiled
  GEMM take one thread per ``_FLOPS_PER_THREAD`` flops (waking a team costs
  more than a tiny call saves).
* :func:`for_rows`: the layers' fused row kernels, one thread per
  ``_ELEMS_PER_THREAD`` cost-weighted elements.
* :func:`for_attention`: the attention inside a layer, told by the caller
  whether another thread pool (BLAS's) is still spinning next to it.
* :func:`for_stream`: memory-bound kernels that stream an operand once (the
  decode GEMV reading its weight), one thread per ``_BYTES_PER_THREAD``.
"""
import collections
import contextlib
import contextvars
import functools
import operator
import os

__all__ = ["set_num_threads", "get_num_threads", "threads", "resolve",
           "describe_num_threads", "NumThreads", "usable_cpus", "cgroup_cpu_quota",
           "for_flops", "for_rows", "for_attention", "for_stream"]

_global = None
_local = contextvars.ContextVar("fastattn_threads", default=None)

# Below this many flops per thread a call takes fewer threads: waking a
# team costs more than it saves (benchmarks/NOTES.md).
_FLOPS_PER_THREAD = 4_000_000
# Elements (weighted by cost) per extra thread of a row kernel.  They are
# memory-bound; with the projections on the same OpenMP team (no BLAS pool
# spinning next to them) the team is hot between kernels, and a second
# thread halved their time in an encoder layer (B=8, L=128, E=384: 4.6 ms
# -> 2.3 ms for 6 layers) from 2^16 weighted elements per thread on.
_ELEMS_PER_THREAD = 1 << 16
# Bytes streamed per extra thread of a memory-bound kernel (the decode GEMV):
# a 256 KiB read takes ~10 us on one core, about what waking a team costs.
_BYTES_PER_THREAD = 1 << 18
# Flops per thread from which an attention next to a hot BLAS pool takes
# more than one thread (see for_attention).
_BLAS_NEIGHBOUR_FLOPS = 1_000_000_000

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"

#: ``(count, source)``: a thread count and where it came from
NumThreads = collections.namedtuple("NumThreads", ["count", "source"])


def _check(n, what="num_threads"):
    if isinstance(n, bool):
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise ValueError(f"{what} must be a positive integer, got {n!r}") from None
    if n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n}")
    return n


# ---------------------------------------------------------------------------
# the CPUs this process may use
# ---------------------------------------------------------------------------

def _read_ints(path, count):
    """The first ``count`` whitespace-separated fields of a file, as strings,
    or None when the file is missing, unreadable or has fewer fields."""
    try:
        with open(path) as f:
            fields = f.read(4096).split()
    except (OSError, UnicodeDecodeError):
        return None
    return fields[:count] if len(fields) >= count else None


def _limit(quota, period):
    """CPUs allowed by a quota of ``quota`` us per ``period`` us (rounded
    up, at least 1); None for no limit or malformed values."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, -(-q // p))


def _cgroup_paths(proc_cgroup):
    """``{controller: path}`` from ``/proc/self/cgroup`` (``""`` is the
    cgroup v2 entry); empty when unreadable."""
    out = {}
    try:
        with open(proc_cgroup) as f:
            lines = f.read(65536).splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            out[ctrl] = parts[2]
    return out


def _up_from(base, rel):
    """``base/rel`` and each of its parents up to ``base`` itself (a limit
    anywhere above a cgroup applies to it)."""
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    for i in range(len(parts), -1, -1):
        yield os.path.join(base, *parts[:i])


def cgroup_cpu_quota(root=CGROUP_ROOT, proc_cgroup=PROC_CGROUP):
    """The CPU count a cgroup quota allows this process, and the file that
    says so: ``(n, path)``, or ``(None, None)`` without a quota.

    Reads cgroup v2 ``<root>/<group>/cpu.max`` (``"quota period"``, or
    ``"max period"`` for no limit) and cgroup v1
    ``<root>/cpu[,cpuacct]/<group>/cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (quota ``-1`` for no limit), for this process's
    group (from ``proc_cgroup``) and every group above it; the smallest limit
    wins.  Missing or malformed files count as no limit.
    """
    groups = _cgroup_paths(proc_cgroup) if proc_cgroup else {}
    found = []
    for d in _up_from(root, groups.get("", "/")):
        f = os.path.join(d, "cpu.max")
        v = _read_ints(f, 2)
        n = v and _limit(*v)
        if n:
            found.append((n, f))
    rel = groups.get("cpu", "/")
    for ctrl in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for d in _up_from(os.path.join(root, ctrl), rel):
            q = _read_ints(os.path.join(d, "cpu.cfs_quota_us"), 1)
            p = _read_ints(os.path.join(d, "cpu.cfs_period_us"), 1)
            n = q and p and _limit(q[0], p[0])
            if n:
                found.append((n, os.path.join(d, "cpu.cfs_quota_us")))
    if not found:
        return None, None
    return min(found)


def usable_cpus(cgroup_root=CGROUP_ROOT, proc_cgroup=PROC_CGROUP):
    """How many CPUs this process may use, and why: the CPU affinity mask,
    capped by a cgroup CPU quota where one is set.  Returns
    :class:`NumThreads`."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
        source = "CPU affinity (sched_getaffinity)"
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = max(1, os.cpu_count() or 1)
        source = "os.cpu_count()"
    quota, path = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None and quota < n:
        return NumThreads(quota, f"cgroup CPU quota ({path})")
    return NumThreads(n, source)


_usable_cpus = functools.lru_cache(maxsize=1)(usable_cpus)


def _omp_num_threads():
    """``OMP_NUM_THREADS``'s first entry if set and a positive integer."""
    env = os.environ.get("OMP_NUM_THREADS")
    if not env:
        return None
    env = env.split(",")[0].strip()
    try:
        n = int(env)
    except ValueError:
        return None
    return n if n >= 1 else None


# ---------------------------------------------------------------------------
# the setting
# ---------------------------------------------------------------------------

def set_num_threads(n):
    """Set the process-wide number of threads the kernels use.

    Parameters
    ----------
    n : int or None
        A positive integer; ``None`` restores the default
        (``OMP_NUM_THREADS``, else the CPUs this process may use).
    """
    global _global
    _global = None if n is None else _check(n)


def _setting():
    """``(count, source)`` of the setting, as a plain tuple (this runs on
    every kernel call)."""
    n = _local.get()
    if n is not None:
        return n, "fastattn.threads(n) block"
    if _global is not None:
        return _global, "set_num_threads"
    n = _omp_num_threads()
    if n is not None:
        return n, "OMP_NUM_THREADS"
    return _usable_cpus()


def describe_num_threads(num_threads=None):
    """The thread count a kernel call would use (before capping by the
    amount of work) and where it comes from, as :class:`NumThreads`:
    ``source`` is one of ``"num_threads argument"``, ``"fastattn.threads(n)
    block"``, ``"set_num_threads"``, ``"OMP_NUM_THREADS"``, ``"cgroup CPU
    quota (<file>)"``, ``"CPU affinity (sched_getaffinity)"``.
    """
    if num_threads is not None:
        return NumThreads(_check(num_threads), "num_threads argument")
    return NumThreads(*_setting())


def get_num_threads():
    """Number of threads the next kernel call from this thread will use
    (before capping by the amount of work)."""
    return _setting()[0]


@contextlib.contextmanager
def threads(n):
    """Use ``n`` threads for kernel calls made inside the ``with`` block by
    the current thread (or asyncio task).

    >>> with fastattn.threads(1):
    ...     out = fastattn.scaled_dot_product_attention(q, k, v)
    """
    token = _local.set(_check(n))
    try:
        yield n
    finally:
        _local.reset(token)


def resolve(num_threads=None):
    """Thread count for one call: ``num_threads`` if given, else the setting."""
    if num_threads is not None:
        return _check(num_threads)
    return _setting()[0]


# ---------------------------------------------------------------------------
# the policy
# ---------------------------------------------------------------------------

def for_flops(num_threads, flops):
    """Threads for a call of ``flops`` floating-point operations: the
    setting (or ``num_threads``), at most one per ``_FLOPS_PER_THREAD``."""
    n = resolve(num_threads)
    return int(max(1, min(n, flops // _FLOPS_PER_THREAD)))


def for_stream(num_threads, nbytes):
    """Threads for a memory-bound call that reads ``nbytes`` once: the
    setting (or ``num_threads``), at most one per ``_BYTES_PER_THREAD``."""
    n = resolve(num_threads)
    return int(max(1, min(n, nbytes // _BYTES_PER_THREAD)))


def for_rows(n_elems, cost=1):
    """Threads for a fused row kernel over ``n_elems`` elements of relative
    ``cost`` (1 for an add, 16 for an activation with an exp or erf)."""
    n = get_num_threads()
    return int(max(1, min(n, (n_elems * cost) // _ELEMS_PER_THREAD)))


def for_attention(flops, other_pool_hot):
    """Threads for the attention of a layer call; ``None`` leaves the choice
    to :func:`for_flops` inside the kernel call.

    ``other_pool_hot``: the caller's projections just ran on BLAS (decoding:
    too few rows for the tiled GEMM), whose workers still spin when the
    attention starts.  A 2-thread attention then shares the cores with them,
    and the BLAS call after it with OpenMP's spinning workers (a 4-layer
    d_model 768 decode step with a 1000-token cache took 45 ms that way
    against 9 ms with the attention on one thread), so such calls take the
    full team only from ``_BLAS_NEIGHBOUR_FLOPS`` flops per thread.  When
    the projections ran on the tiled GEMM, on the same OpenMP team, there is
    no other pool and the kernel decides alone.
    """
    if not other_pool_hot:
        return None
    n = get_num_threads()
    return int(max(1, min(n, flops // _BLAS_NEIGHBOUR_FLOPS)))
