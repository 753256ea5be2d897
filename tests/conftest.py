"""Shared fixtures and helpers for fastattn's tests.

* ``rng``: a seeded ``numpy.random.Generator``, different per test (seeded from
  the test's node id) but identical from run to run.
* ``TOL``: the per-dtype tolerance table every comparison uses.
* ``assert_close``: compare against a float64 reference, NaN positions
  included, with the table's tolerance and a helpful message.
* ``many_threads``: lowers the "work per thread" threshold so that even small
  problems really run on the requested number of OpenMP threads.
* ``run_in_threads``: runs ``work(i)`` on several Python threads at once and
  re-raises what any of them raised.
* ``gemm_path``: runs a test twice, once with every projection of the layers
  on fastattn's tiled GEMM (even a 1-row input) and once with every
  projection on BLAS; the layer tests use it so both paths meet torch.
"""
import os
import sys
import zlib

import numpy as np
import pytest

import fastattn

DTYPES = (np.float32, np.float64)

# The one tolerance table of the suite: TOL[dtype][kind].
#   atol          max abs error of an attention output against the float64
#                 reference for N(0, 1) inputs (outputs are convex
#                 combinations of V rows, so O(1))
#   softmax_rtol  the bound against scipy.special.softmax
#   scores_rtol   attention_scores, relative to sum_k |q||k|
#   module        a layer (MultiHeadAttention, transformer layers and stacks)
#                 against torch or a float64 NumPy composition: max abs error
#   layer         Linear / LayerNorm / RMSNorm / FeedForward: max abs error
#   row_kernel    one fused row kernel (add_norm, bias_act, swiglu) against
#                 its NumPy reference, in units scaled per test (x2 .. x8)
#   gemm          the tiled GEMM, relative to sum_k |x||w| per element
TOL = {
    np.dtype(np.float32): {"atol": 1e-5, "softmax_rtol": 1e-6, "scores_rtol": 1e-5,
                           "module": 1e-5, "layer": 1e-5, "row_kernel": 2e-6,
                           "gemm": 2e-6},
    np.dtype(np.float64): {"atol": 1e-12, "softmax_rtol": 1e-13, "scores_rtol": 1e-12,
                           "module": 1e-11, "layer": 1e-12, "row_kernel": 1e-13,
                           "gemm": 1e-14},
}


def tol(dtype, key="atol"):
    return TOL[np.dtype(dtype)][key]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long-running test (deselect with -m 'not slow')")
    # hypothesis imports mypy_extensions while reporting a failing example;
    # under filterwarnings=error its DeprecationWarning would turn a test
    # failure into a pytest INTERNALERROR and hide the falsifying example.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


@pytest.fixture
def rng(request):
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture
def many_threads(monkeypatch):
    """Make every call big enough to use all the threads it is given."""
    monkeypatch.setattr(sys.modules["fastattn.threads"], "_FLOPS_PER_THREAD", 1)


@pytest.fixture(autouse=True)
def _restore_thread_setting():
    """A test that calls set_num_threads must not leak it to other tests."""
    _threads = sys.modules["fastattn.threads"]   # the module, not fastattn.threads()
    saved = _threads._global
    yield
    _threads._global = saved


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def assert_close(actual, expected, atol, rtol=0.0, what=""):
    """Shape, NaN positions and max abs error (finite entries) agree."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape} != expected {expected.shape}")
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN positions differ ({int(np.sum(nan_a & ~nan_e))} "
        f"unexpected NaN, {int(np.sum(nan_e & ~nan_a))} missing NaN)")
    inf_a, inf_e = np.isinf(actual), np.isinf(expected)
    assert np.array_equal(inf_a, inf_e), f"{what}: inf positions differ"
    assert np.array_equal(actual[inf_a], expected[inf_e]), f"{what}: inf signs differ"
    fin = ~(nan_e | inf_e)
    if not fin.any():
        return
    a = actual[fin].astype(np.float64)
    e = expected[fin].astype(np.float64)
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {err.size} entries off; max abs error "
        f"{err.max():.3e} (atol {atol:g}, rtol {rtol:g})")


skip_no_openmp_test = pytest.mark.skipif(
    os.environ.get("FASTATTN_SKIP_OPENMP_TEST", "0") == "1",
    reason="FASTATTN_SKIP_OPENMP_TEST=1")

__all__ = ["DTYPES", "TOL", "PinnedBuild", "assert_close", "fastattn", "randn", "tol"]


class PinnedBuild:
    """A kernel module with both flash entries (float and bf16) pinned to one
    layout of the fused kernel (``call.path``: ``PATH_LANES``, ``PATH_ROWS``
    or ``PATH_AUTO``); everything else is the module's own."""

    def __init__(self, mod, force_path):
        self._mod, self._force = mod, force_path

    def __getattr__(self, name):
        return getattr(self._mod, name)

    def flash(self, call):
        call.path = self._force
        return self._mod.flash(call)

    def flash_bf16(self, call):
        call.path = self._force
        return self._mod.flash_bf16(call)


@pytest.fixture
def use(monkeypatch):
    """``use(build_name, force_path=None)`` routes fastattn.functional to
    that kernel build, its fused kernel pinned to one layout (None: its own
    choice); returns the build's module."""
    import fastattn.functional as F
    from fastattn import _dispatch

    def _use(name, force_path=None):
        mod = _dispatch.load_build(name)
        force_path = mod.PATH_AUTO if force_path is None else force_path
        monkeypatch.setattr(F, "_k", PinnedBuild(mod, force_path))
        return mod
    return _use


@pytest.fixture(params=["tiles", "blas"])
def gemm_path(request, monkeypatch):
    """Route every projection of fastattn.nn through one GEMM path."""
    import fastattn.nn.layers as layers
    monkeypatch.setattr(layers, "TILE_GEMM_MIN_ROWS",
                        1 if request.param == "tiles" else 1 << 62)
    monkeypatch.setattr(sys.modules["fastattn.threads"], "_FLOPS_PER_THREAD", 1)  # all threads, even tiny
    return request.param


def run_in_threads(work, n):
    """Run ``work(i)`` for i < n on n Python threads at once; re-raise the
    first exception any of them raised."""
    import threading
    errors = []

    def guarded(i):
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - reported in the caller
            errors.append(e)

    ts = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
