"""The tiled GEMM's narrow-lane tile (fastattn/src/fa_narrow.h): row blocks of
fewer than 64 rows must give, row for row, the same bits as the 64-lane tile,
so a row's result never depends on how many other rows are in the call
(batch invariance) nor on the thread count.  Checked for every kernel build
installed here, float32 and float64, strided operands and special values."""
import numpy as np
import pytest

from fastattn._dispatch import available_builds, load_build

BUILDS = available_builds()


def _linear(mod, x, w, bias, relu, out, nthreads):
    it = x.itemsize
    mod.linear(mod.LinearCall(x=x, xs=x.strides[0] // it, w=w, ws=w.strides[0] // it,
                              bias=bias, relu=bool(relu), out=out,
                              ys=out.strides[0] // it, nthreads=nthreads))
    return out


def _same_bits(a, b):
    """Equal bit patterns (so -0.0 != +0.0), any NaN equal to any NaN in the
    same position."""
    assert a.shape == b.shape and a.dtype == b.dtype
    ia = a.view(np.int32 if a.dtype == np.float32 else np.int64)
    ib = b.view(ia.dtype)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((ia == ib) | both_nan)) and np.array_equal(np.isnan(a), np.isnan(b))


def _operands(rng, dt, M, N, K, specials):
    # x: every other row of a wider buffer, shifted columns (row stride > K);
    # w: a row slice of a fused weight (row stride > K); bias: a slice
    xb = rng.standard_normal((2 * M, K + 5)).astype(dt)
    x = xb[::2, 3:3 + K]
    wb = rng.standard_normal((N + 7, K + 2)).astype(dt)
    w = wb[4:4 + N, :K]
    b = rng.standard_normal(N + 3).astype(dt)[2:2 + N]
    if specials:
        ii = rng.integers(0, M, 40)
        kk = rng.integers(0, K, 40)
        vals = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0,
                         np.finfo(dt).tiny / 8, -np.finfo(dt).tiny / 3,
                         np.finfo(dt).max / 2], dt)
        x[ii, kk] = vals[rng.integers(0, len(vals), 40)]
        w[rng.integers(0, N, 10), rng.integers(0, K, 10)] = vals[rng.integers(0, len(vals), 10)]
        # a row of zeros of both signs and a bias of -0.0: the sign of zero
        x[M // 2] = np.where(np.arange(K) % 2, -0.0, 0.0).astype(dt)
        b[::5] = -0.0
    return x, w, b


def _out(M, N, dt):
    buf = np.full((M, N + 9), 1234.5, dt)
    return buf, buf[:, 4:4 + N]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("specials", [False, True])
def test_every_prefix_equals_the_full_batch_bit_for_bit(rng, build, dt, specials):
    mod = load_build(build)
    MMAX, N, K = 130, 101, 300          # K > 256 and no multiple of anything
    x, w, b = _operands(rng, dt, MMAX, N, K, specials)
    for bias, relu in ((None, False), (b, True)):
        fbuf, full = _out(MMAX, N, dt)
        _linear(mod, x, w, bias, relu, full, 2)
        if not specials:   # the 64-lane and narrow rows both against float64
            ref = x.astype(np.float64) @ w.astype(np.float64).T
            if bias is not None:
                ref = ref + bias
            if relu:
                ref = np.maximum(ref, 0)
            scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + 1
            tol = 2e-6 if dt == np.float32 else 1e-14
            assert np.all(np.abs(full - ref) / scale <= tol)
        for M in range(1, MMAX + 1):
            nt = (1, 2, 3)[M % 3]
            buf, y = _out(M, N, dt)
            _linear(mod, x[:M], w, bias, relu, y, nt)
            assert _same_bits(y, full[:M]), (build, dt, M, nt, bias is None, relu)
            # nothing written outside the output's columns
            assert np.all(buf[:, :4] == 1234.5) and np.all(buf[:, 4 + N:] == 1234.5)
        assert np.all(fbuf[:, :4] == 1234.5) and np.all(fbuf[:, 4 + N:] == 1234.5)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_rows_alone_and_threads(rng, build, dt):
    # every row computed alone (M = 1, the decode shape), on 1..4 threads,
    # equals its row in a 64-row (wide-tile) call; several N and K, including
    # K = 0 (bias only) and K that are multiples of the slice length
    mod = load_build(build)
    for N, K in ((1, 1), (7, 17), (48, 256), (97, 513), (385, 64), (30, 0)):
        x, w, b = _operands(rng, dt, 64, N, K, specials=False)
        _, full = _out(64, N, dt)
        _linear(mod, x, w, b, False, full, 1)
        for i in range(0, 64, 7):
            for nt in (1, 2, 4):
                _, y = _out(1, N, dt)
                _linear(mod, x[i:i + 1], w, b, False, y, nt)
                assert _same_bits(y, full[i:i + 1]), (build, dt, N, K, i, nt)
        # and a block of 12 rows starting anywhere (the short-sentence shape)
        for i0 in (0, 5, 52):
            _, y = _out(12, N, dt)
            _linear(mod, x[i0:i0 + 12], w, b, True, y, 2)
            _, yf = _out(64, N, dt)
            _linear(mod, x, w, b, True, yf, 2)
            assert _same_bits(y, yf[i0:i0 + 12]), (build, dt, N, K, i0)


def test_the_builds_are_all_checked():
    # the default build at least; on x86-64 the baseline build always loads
    assert BUILDS, "no kernel build importable"
