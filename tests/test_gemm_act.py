"""Activations fused into the float32 GEMM's store (``LinearCall(act=...)``,
``fastattn.models._ops.dense(act=...)``) and the models' GEMM thread rule.

The fused GELU / tanh-GELU / SiLU must give the same bits on packed and
unpacked weights (both tile families), for any row count (a row's result
never depends on the rows next to it: the encoders' batch invariance) and
any thread count, and stay within float32 rounding of the float64
reference; float64 keeps the row pass."""
import numpy as np
import pytest

import fastattn
from fastattn import reference
from fastattn._dispatch import available_builds, load_build
from fastattn.models import _ops
from fastattn.nn import _ops as _row

BUILDS = available_builds()
UNSET = -4611686018427387904
FUSED = ("gelu", "gelu_tanh", "silu")


def _ref(x, w, b, act):
    h = x.astype(np.float64) @ w.astype(np.float64).T + b
    return reference.activation(h, act)


@pytest.mark.parametrize("act", FUSED)
@pytest.mark.parametrize("M,N,K", [(1, 1536, 384), (12, 1536, 384), (13, 77, 50),
                                   (64, 100, 300), (130, 1536, 384), (3, 31, 1)])
def test_fused_activation_packed_unpacked_rows_threads(act, M, N, K):
    rng = np.random.default_rng(M * 7 + N)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    wp = _ops.pack(w)
    y = _ops.dense(x, wp, b, act=act)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _ref(x, w, b, act), rtol=2e-5, atol=2e-5)
    # the unpacked weight (lanes-layout / narrow tiles): the same bits
    assert np.array_equal(_ops.dense(x, w, b, act=act), y)
    # any thread count
    for nt in (1, 2, 3):
        with fastattn.threads(nt):
            assert np.array_equal(_ops.dense(x, wp, b, act=act), y)
            assert np.array_equal(_ops.dense(x, w, b, act=act), y)
    # a row alone, or in another batch, gives the same bits
    for i in sorted({0, M // 2, M - 1}):
        assert np.array_equal(_ops.dense(x[i:i + 1], wp, b, act=act)[0], y[i])
    other = rng.standard_normal((5, K), dtype=np.float32)
    big = np.concatenate([other, x, other])
    assert np.array_equal(_ops.dense(big, wp, b, act=act)[5:5 + M], y)
    # the fused store agrees with GEMM + row pass to float32 rounding
    h = _ops.dense(x, wp, None)
    _row.bias_act(h, b, act, out=h)
    np.testing.assert_allclose(y, h, rtol=1e-6, atol=1e-6)


def test_fused_activation_without_bias_and_special_values():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 40), dtype=np.float32) * 4
    x[0, 0] = np.nan
    x[1, :] = np.inf
    w = rng.standard_normal((33, 40), dtype=np.float32)
    y = _ops.dense(x, _ops.pack(w), None, act="gelu")
    h = _ops.dense(x, _ops.pack(w), None)
    assert np.array_equal(np.isnan(y), np.isnan(h))
    ok = ~np.isnan(h)
    np.testing.assert_allclose(y[ok], reference.activation(h[ok].astype(np.float64), "gelu"),
                               rtol=2e-6, atol=2e-6)


def test_float64_keeps_row_pass():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 16))
    w = rng.standard_normal((10, 16))
    b = rng.standard_normal(10)
    y = _ops.dense(x, _ops.pack(w), b, act="gelu")
    np.testing.assert_allclose(y, _ref(x, w, b, "gelu"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("isa", BUILDS)
def test_linearcall_act_checks(isa):
    mod = load_build(isa)
    x = np.ones((4, 8), np.float32)
    w = np.ones((6, 8), np.float32)
    out = np.empty((4, 6), np.float32)

    def call(**kw):
        args = dict(x=x, xs=8, w=w, ws=8, out=out, ys=6, nthreads=1)
        args.update(kw)
        return mod.linear(mod.LinearCall(**args))

    call(act=mod.LIN_GELU)
    np.testing.assert_allclose(out, reference.activation(np.full((4, 6), 8.0), "gelu"),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="act"):
        call(act=1)                     # ReLU is the relu flag
    with pytest.raises(ValueError, match="act"):
        call(act=99)
    with pytest.raises(ValueError, match="act"):
        call(act=mod.LIN_SILU, relu=True)
    xd, wd, od = x.astype(np.float64), w.astype(np.float64), out.astype(np.float64)
    with pytest.raises(TypeError, match="float32 only"):
        call(x=xd, w=wd, out=od, act=mod.LIN_GELU)
    assert (mod.LIN_GELU, mod.LIN_GELU_TANH, mod.LIN_SILU) == \
        (mod.ACT_GELU, mod.ACT_GELU_TANH, mod.ACT_SILU)


def test_small_calls_take_the_threads_streaming_the_weight_needs(monkeypatch):
    """A call of few rows (a short query) is bound by reading the weight:
    dense gives it the threads for_stream asks for, not only those its flops
    would get -- and the bits stay the same for any count."""
    seen = []
    real = _ops._kern.linear

    def spy(call):
        seen.append(call.nthreads)
        return real(call)
    monkeypatch.setattr(_ops._kern, "linear", spy)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 384), dtype=np.float32)
    w = _ops.pack(rng.standard_normal((384, 384), dtype=np.float32))   # 590 KB
    b = rng.standard_normal(384).astype(np.float32)
    outs = {}
    for nt in (1, 2, 3):
        with fastattn.threads(nt):
            outs[nt] = _ops.dense(x, w, b)
    # 2 x 384 x 384 x 2 flops would take one thread; the weight's bytes two
    assert seen == [1, 2, 2]
    assert np.array_equal(outs[1], outs[2]) and np.array_equal(outs[1], outs[3])
    # and a tiny weight stays on one thread
    seen.clear()
    with fastattn.threads(3):
        _ops.dense(x[:, :8], _ops.pack(np.ones((4, 8), np.float32)))
    assert seen == [1]


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("act", [None, "relu", "gelu", "silu", "quick_gelu"])
@pytest.mark.parametrize("M", [1, 13, 130])
def test_dense_plan_is_dense(dtype, act, M):
    """The encoders' per-forward GEMM plans (``_ops.dense_plan``, built once
    for four shapes and run once per layer) give dense()'s bits for every
    weight they are run with, packed or not, fused activation or row pass,
    float32 / float64 / bfloat16, and fit no other shape."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(M + 11)
    N, K = 77, 50
    x32 = rng.standard_normal((M, K), dtype=np.float32)
    ws = [(rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32) for _ in range(3)]
    bs = [rng.standard_normal(N).astype(np.float32) for _ in range(3)] + [None]
    if dtype == "bfloat16":
        bf = _ops.bf16()
        x = bf.to_bfloat16(x32)
        packs = [[_ops.pack_bf16(w) for w in ws]]
        outs = [np.empty((M, N), np.float32), np.empty((M, N), x.dtype)]
        ref = lambda w, b, out: _ops.dense_bf16(x, w, b, act=act, out=out.copy())  # noqa: E731
    else:
        x = x32.astype(dtype)
        ws = [w.astype(dtype) for w in ws]
        bs = [b.astype(dtype) if b is not None else None for b in bs]
        packs = [[_ops.pack(w) for w in ws], ws]        # packed and plain weights
        outs = [np.empty((M, N), dtype)]
        ref = lambda w, b, out: _ops.dense(x, w, b, act=act)  # noqa: E731
    for weights in packs:
        for out in outs:
            run = _ops.dense_plan(x, weights[0], act, out)
            for i, w in enumerate(weights):
                for b in (bs[i], None):
                    want = ref(w, b, out)
                    out[...] = 0
                    run(w, b)
                    assert np.array_equal(out.view(np.uint8), np.asarray(want, out.dtype)
                                          .view(np.uint8)), (i, b is None)
    # a weight of another shape is refused by the kernel, not misread
    run = _ops.dense_plan(x, packs[0][0], act, outs[0])
    pack = _ops.pack_bf16 if dtype == "bfloat16" else _ops.pack
    with pytest.raises(ValueError):
        run(pack(np.ascontiguousarray(ws[0][:, :K - 1])), None)
