"""The rows-layout GEMV of the decoders (fastattn.nn.layers.gemv on the
kernels' ``gemv``): act(x @ w.T + bias) and SwiGLU against float64 NumPy
references; bit-identical for any thread count and any number of rows."""
import sys

import numpy as np
import pytest
from scipy.special import erf

import fastattn.nn.layers as layers
from fastattn.nn.layers import gemv
from fastattn._dispatch import kernels as _kern
from conftest import run_in_threads, tol


@pytest.fixture
def all_threads(monkeypatch):
    """Every call on as many threads as it has tasks."""
    monkeypatch.setattr(sys.modules["fastattn.threads"], "_BYTES_PER_THREAD", 1)


def _act(y, act):
    if act == "relu":
        return np.maximum(y, 0)
    if act == "gelu":
        return 0.5 * y * (1 + erf(y / np.sqrt(2)))
    if act == "gelu_tanh":
        return 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))
    if act == "silu":
        return y / (1 + np.exp(-y))
    return y


def _ref(x, w, bias, act=None, glu=False):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = x64 @ w64.T
    if bias is not None:
        y = y + bias
    scale = np.abs(x64) @ np.abs(w64).T + 1
    if glu:
        F = w.shape[0] // 2
        g, u = y[:, :F], y[:, F:]
        return g / (1 + np.exp(-g)) * u, scale[:, :F] * (np.abs(u) + 1) + scale[:, F:]
    return _act(y, act), scale


def _check(y, x, w, bias, act=None, glu=False):
    ref, scale = _ref(x, w, bias, act, glu)
    assert y.shape == ref.shape and y.dtype == x.dtype
    err = np.abs(y - ref) / scale
    # the activations are evaluated in double and rounded once: their error
    # is the sum's error times |act'| <= 1.13 plus half an ulp
    assert np.all(err <= 4 * tol(x.dtype, "gemm")), (x.shape, w.shape, act, float(np.nanmax(err)))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 13, 16, 17, 70])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 3), (33, 17), (67, 101), (129, 64), (250, 769)])
def test_against_float64(rng, dt, M, N, K, all_threads):
    x = rng.standard_normal((M, K)).astype(dt)
    w = rng.standard_normal((N, K)).astype(dt)
    b = rng.standard_normal(N).astype(dt)
    _check(gemv(x, w, b), x, w, b)
    _check(gemv(x, w), x, w, None)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu", "identity"])
def test_activations(rng, dt, act):
    x = rng.standard_normal((5, 77)).astype(dt)
    w = (rng.standard_normal((130, 77)) * 0.3).astype(dt)
    b = rng.standard_normal(130).astype(dt)
    _check(gemv(x, w, b, act=act), x, w, b, act)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_swiglu(rng, dt, bias):
    x = rng.standard_normal((3, 65)).astype(dt)
    w = (rng.standard_normal((2 * 41, 65)) * 0.3).astype(dt)
    b = rng.standard_normal(2 * 41).astype(dt) if bias else None
    y = gemv(x, w, b, glu=True)
    assert y.shape == (3, 41)
    _check(y, x, w, b, glu=True)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_threads_and_rows_bit_identical(rng, dt, all_threads):
    x = rng.standard_normal((16, 203)).astype(dt)
    w = rng.standard_normal((517, 203)).astype(dt)
    b = rng.standard_normal(517).astype(dt)
    base = gemv(x, w, b, act="gelu_tanh", num_threads=1)
    for nt in (2, 3, 4, 7):
        assert np.array_equal(gemv(x, w, b, act="gelu_tanh", num_threads=nt), base)
    for m in range(16):        # a row alone, and every prefix, gives the same bits
        assert np.array_equal(gemv(x[m:m + 1], w, b, act="gelu_tanh"), base[m:m + 1])
    for M in (1, 2, 3, 5, 8):
        assert np.array_equal(gemv(x[:M], w, b, act="gelu_tanh", num_threads=2), base[:M])


def test_strided_operands(rng, all_threads):
    xb = rng.standard_normal((6, 90)).astype(np.float32)
    wb = rng.standard_normal((80, 120)).astype(np.float32)
    x, w = xb[::2, 5:77], wb[::3, 10:82]        # row strides, offset starts
    ob = np.full((3, 40), 7.0, np.float32)
    out = ob[:, 3:30]
    y = gemv(x, w, out=out)
    assert y is out
    _check(out, x, w, None)
    assert np.all(ob[:, :3] == 7) and np.all(ob[:, 30:] == 7)
    xt = np.asfortranarray(rng.standard_normal((4, 33)).astype(np.float32))
    wt = rng.standard_normal((33, 21)).astype(np.float32).T     # column-major: copied
    _check(gemv(xt, wt), xt, wt, None)
    assert np.array_equal(gemv(xt, wt), gemv(np.ascontiguousarray(xt), np.ascontiguousarray(wt)))


def test_special_values(rng):
    x = rng.standard_normal((2, 40)).astype(np.float32)
    w = rng.standard_normal((9, 40)).astype(np.float32)
    x[0, 3] = np.nan
    w[4, 7] = np.inf
    y = gemv(x, w)
    assert np.isnan(y[0]).all()
    assert np.isinf(y[1, 4]) or np.isnan(y[1, 4])
    assert np.isfinite(np.delete(y[1], 4)).all()
    assert np.isnan(gemv(x, w, act="relu")[0]).all()       # NaN kept by ReLU


def test_empty_and_zero_k(rng):
    w = rng.standard_normal((5, 0)).astype(np.float32)
    b = np.arange(5, dtype=np.float32)
    assert np.array_equal(gemv(np.zeros((2, 0), np.float32), w, b), np.tile(b, (2, 1)))
    assert gemv(np.zeros((0, 4), np.float32), np.zeros((3, 4), np.float32)).shape == (0, 3)


def test_errors(rng):
    x = rng.standard_normal((2, 8)).astype(np.float32)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="weight must have shape"):
        gemv(x, w[:, :7])
    with pytest.raises(ValueError, match="2-D"):
        gemv(x[0], w)
    with pytest.raises(TypeError, match="dtype"):
        gemv(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        gemv(x.astype(np.int32), w.astype(np.int32))
    with pytest.raises(ValueError, match="bias must have shape"):
        gemv(x, w, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="act must be"):
        gemv(x, w, act="tanh")
    with pytest.raises(ValueError, match="glu=True"):
        gemv(x, w, glu=True, act="relu")
    with pytest.raises(ValueError, match="even number"):
        gemv(x, w[:5], glu=True)
    with pytest.raises(ValueError, match="out must be"):
        gemv(x, w, out=np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        buf = np.zeros((2, 8), np.float32)
        gemv(buf, w[:, :8][:8], out=buf[:, :6])
    ro = np.empty((2, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        gemv(x, w, out=ro)
    # the kernel entry refuses an inconsistent call object (never a crash)
    with pytest.raises(ValueError, match="GEMV_MAX_ROWS"):
        _kern.gemv(_kern.GemvCall(x=np.zeros((65, 8), np.float32), xs=8, w=w, ws=8,
                                  out=np.zeros((65, 6), np.float32), ys=6, nthreads=1))
    with pytest.raises(ValueError, match="'x \\(2-D\\)'"):
        _kern.gemv(_kern.GemvCall(w=w, ws=8, out=np.zeros((2, 6), np.float32), ys=6,
                                  nthreads=1))


def test_many_python_threads(rng):
    x = rng.standard_normal((4, 300)).astype(np.float32)
    w = rng.standard_normal((700, 300)).astype(np.float32)
    base = gemv(x, w, num_threads=1)

    def work(i):
        for _ in range(5):
            assert np.array_equal(gemv(x, w, num_threads=1 + i % 2), base)
    run_in_threads(work, 4)


def test_every_build_runs_it(rng):
    """The kernels of every importable build agree with the reference."""
    from fastattn import _dispatch
    x = rng.standard_normal((3, 50)).astype(np.float32)
    w = rng.standard_normal((40, 50)).astype(np.float32)
    builds = _dispatch.available_builds()
    assert "baseline" in builds
    for isa in builds:
        k = _dispatch.load_build(isa)
        y = np.empty((3, 40), np.float32)
        k.gemv(k.GemvCall(x=x, xs=50, w=w, ws=50, out=y, ys=40, nthreads=2))
        _check(y, x, w, None)
