"""bfloat16 copies written by the fused row kernels (fastattn.nn._ops):
each must equal ml_dtypes' rounding of the float32 result bit for bit, and
the float32 outputs must not change when a copy is requested."""
import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
from fastattn.nn import _ops  # noqa: E402

BF16 = ml_dtypes.bfloat16


def _bits(x):
    return np.asarray(x).view(np.uint16)


def _rows(rng, n, c, scale=3.0):
    x = (rng.standard_normal((n, c)) * scale).astype(np.float32)
    return x


def test_rounding_matches_ml_dtypes_on_special_values():
    # every rounding case: ties to even both ways, NaN (quiet and
    # signalling, both signs), +-inf, overflow to inf, denormals, zeros
    u = np.array([0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001, 0x7f800001,
                  0xff800001, 0x7fc12345, 0xffc00001, 0x7f800000, 0xff800000,
                  0x7f7fffff, 0xff7fffff, 0x00000001, 0x80008000, 0x00018000,
                  0x00000000, 0x80000000, 0x7f7f8000, 0x3effffff], np.uint32)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2**32, size=4096, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([u, rand]).view(np.float32)
    h = np.ascontiguousarray(x.reshape(1, -1))
    out = np.empty_like(h)
    outb = np.empty(h.shape, BF16)
    with np.errstate(invalid="ignore", over="ignore"):
        _ops.bias_act(h, None, "identity", out=out, outb=outb)
        want = h.astype(BF16)
    assert np.array_equal(_bits(outb), _bits(want))


@pytest.mark.parametrize("mode", ["layer", "rms"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_resid", [False, True])
@pytest.mark.parametrize("store_n", [False, True])
def test_add_norm_bf16_copy(mode, with_bias, with_resid, store_n):
    rng = np.random.default_rng(1)
    N, C = 37, 200
    a = _rows(rng, N, C)
    ab = _rows(rng, 1, C)[0] if with_bias else None
    r = _rows(rng, N, C) if with_resid else None
    w = _rows(rng, 1, C, 1.0)[0]
    b = _rows(rng, 1, C, 0.5)[0] if mode == "layer" else None
    s_ref, n_ref = _ops.add_norm(a, ab, r, mode, w, b, 1e-5, s=np.empty_like(a))
    nb = np.empty((N, C), BF16)
    s = np.empty_like(a)
    n = np.empty_like(a) if store_n else None
    s2, n2 = _ops.add_norm(a, ab, r, mode, w, b, 1e-5, s=s, n=n, nb=nb)
    assert np.array_equal(s2, s_ref)
    if store_n:
        assert np.array_equal(n2, n_ref)
    assert np.array_equal(_bits(nb), _bits(n_ref.astype(BF16)))


def test_add_norm_bf16_only_no_sum_output():
    # neither s nor n: the wrapper gives the sum a float32 row
    rng = np.random.default_rng(2)
    a, r = _rows(rng, 5, 64), _rows(rng, 5, 64)
    w = np.ones(64, np.float32)
    _, n_ref = _ops.add_norm(a, None, r, "rms", w, None, 1e-6)
    nb = np.empty((5, 64), BF16)
    _ops.add_norm(a, None, r, "rms", w, None, 1e-6, nb=nb)
    assert np.array_equal(_bits(nb), _bits(n_ref.astype(BF16)))


def test_add_norm_bf16_strided_rows_and_in_place():
    rng = np.random.default_rng(3)
    big = _rows(rng, 9, 80)
    a = big[:, :64]                         # strided rows
    x = _rows(rng, 9, 64)
    w = _rows(rng, 1, 64)[0]
    b = _rows(rng, 1, 64)[0]
    ref_s, ref_n = _ops.add_norm(a.copy(), None, x.copy(), "layer", w, b, 1e-12)
    nbig = np.zeros((9, 100), BF16)
    nb = nbig[:, 10:74]
    _ops.add_norm(a, None, x, "layer", w, b, 1e-12, n=x, nb=nb)   # n in place on r
    assert np.array_equal(x, ref_n)
    assert np.array_equal(_bits(nb), _bits(ref_n.astype(BF16)))
    assert not _bits(nbig[:, :10]).any() and not _bits(nbig[:, 74:]).any()


@pytest.mark.parametrize("act", ["identity", "relu", "gelu", "gelu_tanh", "silu"])
def test_bias_act_bf16_copy(act):
    rng = np.random.default_rng(4)
    h = _rows(rng, 33, 130)
    bias = _rows(rng, 1, 130)[0]
    ref = _ops.bias_act(h, bias, act)
    out = np.empty_like(h)
    outb = np.empty(h.shape, BF16)
    got = _ops.bias_act(h, bias, act, out=out, outb=outb)
    assert got is outb
    assert np.array_equal(out, ref)
    assert np.array_equal(_bits(outb), _bits(ref.astype(BF16)))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("store_out", [False, True])
def test_swiglu_bf16_copy(with_bias, store_out):
    rng = np.random.default_rng(5)
    h = _rows(rng, 21, 2 * 96)
    bias = _rows(rng, 1, 2 * 96)[0] if with_bias else None
    ref = _ops.swiglu(h, bias)
    outb = np.empty((21, 96), BF16)
    out = np.empty((21, 96), np.float32) if store_out else None
    got = _ops.swiglu(h, bias, out=out, outb=outb)
    assert got is outb
    if store_out:
        assert np.array_equal(out, ref)
    assert np.array_equal(_bits(outb), _bits(ref.astype(BF16)))


def test_bf16_copy_threads_bit_identical():
    import fastattn
    rng = np.random.default_rng(6)
    a = _rows(rng, 500, 384)
    w = _rows(rng, 1, 384)[0]
    outs = []
    for nt in (1, 2, 3):
        nb = np.empty(a.shape, BF16)
        with fastattn.threads(nt):
            _ops.add_norm(a, None, None, "layer", w, w, 1e-12, nb=nb)
        outs.append(_bits(nb).copy())
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_bf16_copy_errors():
    a = np.ones((3, 8), np.float32)
    with pytest.raises(TypeError, match="nb must be a bfloat16"):
        _ops.add_norm(a, None, None, "layer", nb=np.empty((3, 8), np.float32))
    with pytest.raises(ValueError, match="nb must have shape"):
        _ops.add_norm(a, None, None, "layer", nb=np.empty((3, 7), BF16))
    with pytest.raises(TypeError, match="from float32 rows"):
        _ops.bias_act(a.astype(np.float64), None, "relu", outb=np.empty((3, 8), BF16))
    with pytest.raises(ValueError, match="needs a norm"):
        _ops.add_norm(a, None, None, "none", nb=np.empty((3, 8), BF16))
