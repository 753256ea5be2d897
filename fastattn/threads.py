"""Thread count for fastattn's OpenMP kernels.

Resolution order for a call: the call's own ``num_threads=`` argument, the
innermost active ``fastattn.threads(n)`` block *of the calling thread or
task* (a ``contextvars`` value, so one server thread's block never changes
another's calls), the process-wide ``set_num_threads(n)``, then
``OMP_NUM_THREADS``, then the number of CPUs this process may run on.
"""
import contextlib
import functools
import contextvars
import operator
import os

_global = None
_local = contextvars.ContextVar("fastattn_threads", default=None)


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


@functools.lru_cache(maxsize=1)
def _cpu_count():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_num_threads():
    """``OMP_NUM_THREADS`` (its first entry) if set and valid, else the CPUs
    available to this process."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n
        except ValueError:
            pass
    return _cpu_count()


def set_num_threads(n):
    """Set the process-wide number of threads the kernels use.

    Parameters
    ----------
    n : int or None
        A positive integer; ``None`` restores the default
        (``OMP_NUM_THREADS``, else all available CPUs).
    """
    global _global
    _global = None if n is None else _check(n)


def get_num_threads():
    """Number of threads the next kernel call from this thread will use
    (before capping by the amount of work)."""
    n = _local.get()
    if n is not None:
        return n
    if _global is not None:
        return _global
    return default_num_threads()


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
    return get_num_threads()
