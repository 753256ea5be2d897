"""The tiled GEMM of the layers (fastattn.nn.layers.gemm on the kernels'
``linear``): relu?(x @ w.T + bias) against a float64 NumPy reference."""
import sys

import numpy as np
import pytest

import fastattn
import fastattn.nn.layers as layers
from fastattn._dispatch import kernels as _kern
from conftest import run_in_threads, tol



@pytest.fixture
def tiles(monkeypatch):
    """Every call on the tiled path, on all threads."""
    monkeypatch.setattr(layers, "TILE_GEMM_MIN_ROWS", 1)
    monkeypatch.setattr(sys.modules["fastattn.threads"], "_FLOPS_PER_THREAD", 1)


def _ref(x, w, bias, relu):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        y = y + bias
    if relu:
        y = np.maximum(y, 0)
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + 1
    return y, scale


def _check(y, x, w, bias, relu):
    ref, scale = _ref(x, w, bias, relu)
    assert y.shape == ref.shape and y.dtype == x.dtype
    err = np.abs(y - ref) / scale
    assert np.all(err <= tol(x.dtype, "gemm")), (x.shape, w.shape, float(np.nanmax(err)))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 7, 63, 64, 65, 130, 257])
@pytest.mark.parametrize("K", [1, 5, 8, 255, 256, 257, 600])
def test_shapes_and_remainders(rng, tiles, dt, M, K):
    # N covers every remainder of the 6- (AVX2) / 8-row (AVX-512) micro-tiles
    # and of the W blocks (48 .. 384 rows)
    for N in (1, 5, 6, 7, 9, 47, 97, 385):
        x = rng.standard_normal((M, K)).astype(dt)
        w = rng.standard_normal((N, K)).astype(dt)
        b = rng.standard_normal(N).astype(dt)
        for bias, relu in ((None, False), (b, False), (b, True), (None, True)):
            _check(layers.gemm(x, w, bias, relu=relu), x, w, bias, relu)


def test_strided_operands_read_and_written_in_place(rng, tiles):
    # x: every other row of a wider array; w: a row slice of a fused weight;
    # out: columns of a wider buffer (row stride > N)
    big = rng.standard_normal((300, 2, 200)).astype(np.float32)
    x = big[::2, 1, 3:131]                       # (150, 128), row stride 800
    W = rng.standard_normal((3 * 70, 128)).astype(np.float32)
    w = W[70:140]
    b = rng.standard_normal(3 * 70).astype(np.float32)[70:140]
    buf = np.full((150, 100), np.nan, np.float32)
    out = buf[:, 10:80]
    y = layers.gemm(x, w, b, out=out)
    assert y is out
    _check(out, x, w, b, False)
    assert np.isnan(buf[:, :10]).all() and np.isnan(buf[:, 80:]).all()


def test_unusual_layouts_fall_back_to_blas(rng, tiles):
    x = np.asfortranarray(rng.standard_normal((100, 64)).astype(np.float32))
    w = rng.standard_normal((30, 64)).astype(np.float32)
    _check(layers.gemm(x, w), x, w, None, False)
    # negative row stride
    x2 = rng.standard_normal((100, 64)).astype(np.float32)[::-1]
    _check(layers.gemm(x2, w), x2, w, None, False)


def test_non_finite_values_stay_in_their_rows_and_columns(rng, tiles):
    M, N, K = 130, 50, 70
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    x[3, 5] = np.nan
    x[100, 0] = np.inf
    w[7, 9] = np.nan
    for relu in (False, True):
        y = layers.gemm(x, w, relu=relu)
        with np.errstate(invalid="ignore"):
            ref = x.astype(np.float64) @ w.astype(np.float64).T
            if relu:
                ref = np.where(np.isnan(ref), ref, np.maximum(ref, 0))
        assert np.array_equal(np.isnan(y), np.isnan(ref))   # ReLU keeps NaN
        assert np.array_equal(np.isinf(y), np.isinf(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(y[fin], ref[fin], atol=1e-4, rtol=1e-5)


def test_relu_edge_values(tiles):
    # K = N = 1 and w = 1: the output is x itself, then ReLU
    vals = np.array([-1.0, -0.0, 0.0, 2.5, np.inf, -np.inf, np.nan, 1e-40], np.float32)
    x = np.tile(vals, 9)[:, None]                      # 72 rows
    y = layers.gemm(x, np.ones((1, 1), np.float32), relu=True)
    expect = np.array([0.0, 0.0, 0.0, 2.5, np.inf, 0.0, np.nan, 1e-40], np.float32)
    np.testing.assert_array_equal(y[:, 0], np.tile(expect, 9))
    y = layers.gemm(x, np.ones((1, 1), np.float32), np.zeros(1, np.float32))
    np.testing.assert_array_equal(y[:, 0], x[:, 0] + np.float32(0))


def test_results_do_not_depend_on_the_thread_count(rng, tiles):
    x = rng.standard_normal((333, 700)).astype(np.float32)
    w = rng.standard_normal((200, 700)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    with fastattn.threads(1):
        y1 = layers.gemm(x, w, b)
    for n in (2, 3, 5):
        with fastattn.threads(n):
            assert np.array_equal(layers.gemm(x, w, b), y1)


def test_concurrent_calls_from_python_threads(rng, tiles):
    xs = [rng.standard_normal((150, 96)).astype(np.float32) for _ in range(6)]
    w = rng.standard_normal((120, 96)).astype(np.float32)
    expect = [layers.gemm(x, w) for x in xs]

    def work(i):
        for _ in range(20):
            assert np.array_equal(layers.gemm(xs[i], w), expect[i])

    run_in_threads(work, len(xs))


def test_empty_dimensions(tiles):
    for M, N, K in ((0, 5, 3), (5, 0, 3), (70, 5, 0)):
        x = np.ones((M, K), np.float32)
        w = np.ones((N, K), np.float32)
        b = np.full(N, 2.0, np.float32)
        y = layers.gemm(x, w, b)
        assert y.shape == (M, N)
        np.testing.assert_array_equal(y, np.full((M, N), 2.0, np.float32))


def test_small_inputs_take_blas_by_default(rng):
    """Below TILE_GEMM_MIN_ROWS the result is BLAS's (decoding); from it on,
    the tiles'; both agree to rounding."""
    w = rng.standard_normal((40, 32)).astype(np.float32)
    for M in (layers.TILE_GEMM_MIN_ROWS - 1, layers.TILE_GEMM_MIN_ROWS):
        x = rng.standard_normal((M, 32)).astype(np.float32)
        _check(layers.gemm(x, w), x, w, None, False)
    # one row (decoding one token): BLAS's result exactly; two rows: the tiles'
    x = rng.standard_normal((1, 32)).astype(np.float32)
    assert layers.TILE_GEMM_MIN_ROWS == 2
    assert layers.gemm_via(x, w)[1] == "blas"
    np.testing.assert_array_equal(layers.gemm(x, w), x @ w.T)
    x2 = rng.standard_normal((2, 32)).astype(np.float32)
    assert layers.gemm_via(x2, w)[1] == "tiles"


def test_kernel_direct_call_with_row_strides(rng):
    # the raw kernel entry point: element row strides, bias, relu flag
    x = rng.standard_normal((70, 50)).astype(np.float64)
    w = rng.standard_normal((20, 50)).astype(np.float64)
    b = rng.standard_normal(20)
    out = np.zeros((70, 25))
    _kern.linear(_kern.LinearCall(x=x, xs=50, w=w, ws=50, bias=b, relu=True,
                                  out=out, ys=25, nthreads=2))
    _check(out[:, :20], x, w, b, True)
    assert not out[:, 20:].any()


def test_mismatched_operands_raise_before_any_kernel_runs(rng, tiles):
    x = rng.standard_normal((70, 16)).astype(np.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(out_features, 16\).*\(5, 15\)"):
        layers.gemm(x, np.ones((5, 15), np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\), got \(4,\)"):
        layers.gemm(x, np.ones((5, 16), np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(70, 5\), got \(70, 6\)"):
        layers.gemm(x, np.ones((5, 16), np.float32), out=np.empty((70, 6), np.float32))


def test_linear_module_with_a_replaced_weight_of_the_wrong_shape(rng, tiles):
    lin = fastattn.nn.Linear(16, 5)
    x = rng.standard_normal((80, 16)).astype(np.float32)
    _check(lin(x), x, lin.weight, lin.bias, False)
    lin.weight = np.ones((5, 8), np.float32)  # a plain attribute: accepted here...
    with pytest.raises(ValueError, match="weight"):   # ...and refused by the call
        lin(x)
