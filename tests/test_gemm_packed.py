"""The tiled GEMM on packed weight panels (fastattn/src/fa_gemm.h,
``pack_weight`` / ``LinearCall(wp=...)``): bit for bit the lanes-layout tiles
for every row count (so the encoders stay batch-invariant whichever path a
call takes), on every kernel build installed here, float32 and float64,
strided operands and special values; and its argument checks."""
import pickle

import numpy as np
import pytest

from fastattn._dispatch import available_builds, load_build

BUILDS = available_builds()
UNSET = -4611686018427387904


def _call(mod, x, w=None, wp=None, bias=None, relu=False, out=None, nthreads=1):
    it = x.itemsize
    mod.linear(mod.LinearCall(x=x, xs=x.strides[0] // it, w=w,
                              ws=w.strides[0] // it if w is not None else UNSET, wp=wp,
                              bias=bias, relu=bool(relu), out=out,
                              ys=out.strides[0] // it, nthreads=nthreads))
    return out


def _same_bits(a, b):
    ia = a.view(np.int32 if a.dtype == np.float32 else np.int64)
    ib = b.view(ia.dtype)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((ia == ib) | both_nan)) and np.array_equal(np.isnan(a), np.isnan(b))


def _operands(rng, dt, M, N, K, specials):
    xb = rng.standard_normal((M, K + 3)).astype(dt)
    x = xb[:, 2:2 + K]                       # row stride > K
    wb = rng.standard_normal((N + 3, K + 1)).astype(dt)
    w = wb[1:1 + N, :K]                      # a slice of a fused weight
    b = rng.standard_normal(N + 2).astype(dt)[1:1 + N]
    if specials and K:
        vals = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, np.finfo(dt).tiny / 8,
                         np.finfo(dt).max / 2], dt)
        x[rng.integers(0, M, 30), rng.integers(0, K, 30)] = vals[rng.integers(0, len(vals), 30)]
        w[rng.integers(0, N, 8), rng.integers(0, K, 8)] = vals[rng.integers(0, len(vals), 8)]
        x[M // 2] = np.where(np.arange(K) % 2, -0.0, 0.0).astype(dt)
        b[::4] = -0.0
    return x, w, b


def _out(M, N, dt):
    buf = np.full((M, N + 6), 1234.5, dt)
    return buf, buf[:, 3:3 + N]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("specials", [False, True])
def test_packed_equals_the_lanes_tiles_bit_for_bit(rng, build, dt, specials):
    mod = load_build(build)
    for N, K in ((77, 300), (32, 256), (5, 1), (130, 513), (9, 0)):  # noqa: E501
        x, w, b = _operands(rng, dt, 300, N, K, specials)
        wp = mod.pack_weight(w, nthreads=2)
        assert wp.shape == (N, K) and wp.dtype == dt and wp.isa == mod.ISA
        for bias, relu in ((None, False), (b, True), (b, False)):
            # the lanes-layout tiles, 64-row blocks, computed row block by row block
            lanes = np.empty((300, N), dt)
            for m0 in range(0, 300, 64):
                _call(mod, x[m0:m0 + 64], w=w, bias=bias, relu=relu,
                      out=lanes[m0:m0 + 64], nthreads=1)
            for M in (1, 2, 3, 7, 13, 14, 15, 29, 64, 111, 112, 113, 200, 300):
                for nt in (1 + M % 3,):
                    buf, y = _out(M, N, dt)
                    _call(mod, x[:M], wp=wp, bias=bias, relu=relu, out=y, nthreads=nt)
                    assert _same_bits(y, lanes[:M]), (build, dt, N, K, M, nt)
                    assert np.all(buf[:, :3] == 1234.5) and np.all(buf[:, 3 + N:] == 1234.5)
            # the unpacked call over all rows: same bits
            buf, y = _out(300, N, dt)
            _call(mod, x, w=w, bias=bias, relu=relu, out=y, nthreads=2)
            assert _same_bits(y, lanes)
            if not specials and K:
                ref = x.astype(np.float64) @ w.astype(np.float64).T
                if bias is not None:
                    ref = ref + bias
                if relu:
                    ref = np.maximum(ref, 0)
                scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + 1
                tol = 2e-6 if dt == np.float32 else 1e-14
                assert np.all(np.abs(lanes - ref) / scale <= tol)


@pytest.mark.parametrize("build", BUILDS)
def test_rows_anywhere_in_a_batch(rng, build):
    # a row's result is the same alone, in any batch and at any position
    mod = load_build(build)
    x, w, b = _operands(rng, np.float32, 1000, 1152, 384, False)
    wp = mod.pack_weight(w)
    _, full = _out(1000, 1152, np.float32)
    _call(mod, x, wp=wp, bias=b, out=full, nthreads=2)
    for i0, n in ((0, 1), (999, 1), (5, 10), (300, 128), (17, 700)):
        _, y = _out(n, 1152, np.float32)
        _call(mod, x[i0:i0 + n], wp=wp, bias=b, out=y, nthreads=1 + n % 2)
        assert _same_bits(y, full[i0:i0 + n]), (i0, n)


def test_pack_weight_checks_its_argument():
    mod = load_build(BUILDS[0])
    with pytest.raises(TypeError, match="float32 or float64"):
        mod.pack_weight(np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        mod.pack_weight(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        mod.pack_weight(np.zeros((4, 6), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="nthreads"):
        mod.pack_weight(np.zeros((4, 6), np.float32), nthreads=0)
    wp = mod.pack_weight(np.ones((4, 6), np.float32))
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(wp)
    assert "PackedWeight" in repr(wp) and wp.nbytes > 0


def test_linear_checks_the_packed_operand():
    mod = load_build(BUILDS[0])
    w = np.ones((4, 6), np.float32)
    wp = mod.pack_weight(w)
    x = np.ones((3, 6), np.float32)
    y = np.empty((3, 4), np.float32)
    with pytest.raises(ValueError, match="wp"):          # K mismatch
        _call(mod, np.ones((3, 5), np.float32), wp=wp, out=y)
    with pytest.raises(TypeError, match="dtype"):
        _call(mod, x.astype(np.float64), wp=wp, out=y.astype(np.float64))
    with pytest.raises(ValueError, match="not with wp"):
        mod.linear(mod.LinearCall(x=x, xs=6, w=w, ws=6, wp=wp, out=y, ys=4, nthreads=1))
    with pytest.raises(ValueError, match="out"):
        _call(mod, x, wp=wp, out=np.empty((3, 3), np.float32))
    np.testing.assert_array_equal(_call(mod, x, wp=wp, out=y), np.full((3, 4), 6, np.float32))


@pytest.mark.skipif(len(BUILDS) < 2, reason="one kernel build installed")
def test_a_packed_weight_belongs_to_its_build():
    # panel widths differ per instruction set: another build's object is refused
    a, b = load_build(BUILDS[0]), load_build(BUILDS[1])
    wp = a.pack_weight(np.ones((4, 6), np.float32))
    with pytest.raises(TypeError):
        b.LinearCall(x=np.ones((1, 6), np.float32), xs=6, wp=wp,
                     out=np.empty((1, 4), np.float32), ys=4, nthreads=1)
