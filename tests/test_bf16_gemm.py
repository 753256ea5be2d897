"""fastattn.bf16: conversions, packed weights and the bf16 GEMM, on every
kernel build that runs here (amx, avx512bf16, avx512, avx2, baseline).

Accuracy bound (stated in docs/architecture.md, "bfloat16 GEMM"): the
reference is float64 on the *bf16-rounded* inputs.  Each product of two bf16
values is exact in float32, so the only errors are the roundings of the
float32 running sum: at most K + 2 of them (the zero padding of the AMX path
adds exact zeros), each at most 2^-24 of a partial sum bounded by
S = sum_k |x_k w_k|.  So |y - ref| <= K * 2^-23 * S (+ 2^-24 |y| for the bias
add), then the activation (|slope| <= 1.13, its float32 formula within 2e-7
absolute + 2^-21 relative) and, for bf16 output, one rounding: 2^-9 |y|.
"""
import sys

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

import fastattn  # noqa: E402
from fastattn import bf16 as B  # noqa: E402
from fastattn import _dispatch  # noqa: E402

BUILDS = _dispatch.available_builds()
BF = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(params=BUILDS)
def build(request, monkeypatch):
    mod = _dispatch.load_build(request.param)
    monkeypatch.setattr(B, "_k", mod)
    return request.param


def _f64(a):
    return np.asarray(a).astype(np.float32).astype(np.float64)


def _act64(y, act):
    from scipy.special import erf
    if act is None:
        return y
    if act == "relu":
        return np.maximum(y, 0)
    if act == "gelu":
        return 0.5 * y * (1 + erf(y / np.sqrt(2)))
    if act == "gelu_tanh":
        return 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))
    if act == "silu":
        return y / (1 + np.exp(-y))
    if act == "quick_gelu":
        return y / (1 + np.exp(-1.702 * y))
    raise AssertionError(act)


def _reference(x, w, bias, act):
    """float64 reference on the bf16 inputs and the error bound."""
    xb, wb = _f64(x), _f64(w)
    y = xb @ wb.T
    K = xb.shape[1]
    bound = K * 2.0 ** -23 * (np.abs(xb) @ np.abs(wb).T)
    if bias is not None:
        y = y + bias.astype(np.float64)
        bound = bound + 2.0 ** -24 * np.abs(y)
    if act is not None:
        bound = 1.13 * bound + 2e-7 + 2.0 ** -21 * np.abs(y)
        y = _act64(y, act)
    return y, bound


def _rand_bf16(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32).astype(BF)


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------

def _special_f32():
    bits = np.array([0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000,
                     0x7f800001, 0xff800001, 0x7fbfffff, 0x7fff0000, 0x7f7fffff, 0xff7fffff,
                     0x00000001, 0x80000001, 0x007fffff, 0x00008000, 0x00018000,
                     0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001, 0x7f7f8000,
                     0x0000ffff, 0x00010000], np.uint32)
    return bits.view(np.float32)


def test_to_bfloat16_matches_ml_dtypes_bit_for_bit(build):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 300_000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([bits.view(np.float32), _special_f32()])
    for nt in (1, 2, 3):
        got = B.to_bfloat16(x, num_threads=nt)
        assert got.dtype == BF
        with np.errstate(invalid="ignore"):     # NaN payloads: ml_dtypes warns
            want = x.astype(BF)
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), build


def test_conversions_any_shape_and_out(build):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    b = B.to_bfloat16(x)
    assert b.shape == x.shape and np.array_equal(b.view(np.uint16), x.astype(BF).view(np.uint16))
    out = np.empty((3, 5, 7), BF)
    assert B.to_bfloat16(x, out=out) is out
    f = B.to_float32(b)
    assert f.dtype == np.float32 and np.array_equal(f, b.astype(np.float32))
    f2 = np.empty(x.shape, np.float32)
    assert B.to_float32(b, out=f2) is f2 and np.array_equal(f2, f)
    # non-contiguous input is read correctly
    assert np.array_equal(B.to_bfloat16(x[:, ::2]).view(np.uint16),
                          x[:, ::2].astype(BF).view(np.uint16))
    assert B.to_bfloat16(np.zeros((0, 4), np.float32)).shape == (0, 4)
    special = _special_f32()
    with np.errstate(invalid="ignore"):
        sb = special.astype(BF)
        want = sb.astype(np.float32).view(np.uint32)
    assert np.array_equal(B.to_float32(sb).view(np.uint32), want)


def test_conversion_validation():
    with pytest.raises(TypeError, match="float32"):
        B.to_bfloat16(np.zeros(3, np.float64))
    with pytest.raises(TypeError, match="bfloat16"):
        B.to_float32(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="shape"):
        B.to_bfloat16(np.zeros(3, np.float32), out=np.empty(4, BF))
    with pytest.raises(TypeError, match="dtype"):
        B.to_bfloat16(np.zeros(3, np.float32), out=np.empty(3, np.float32))


def test_missing_ml_dtypes_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match=r'pip install "fastattn\[bf16\]"'):
        B.to_bfloat16(np.zeros(3, np.float32))
    with pytest.raises(ImportError, match="fastattn"):
        B.bfloat16


def test_dtype_attribute():
    assert B.bfloat16 is ml_dtypes.bfloat16
    assert fastattn.bf16 is B


# ---------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("N,K", [(1, 1), (16, 32), (17, 33), (45, 70), (384, 1536)])
def test_pack_roundtrip_and_memory(build, N, K):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((N, K)).astype(np.float32)
    p = B.pack_weight(w)
    assert p.shape == (N, K)
    assert np.array_equal(p.unpack().view(np.uint16), w.astype(BF).view(np.uint16))
    assert p.nbytes == (-(-N // 16) * 16) * (-(-K // 32) * 32) * 2
    if N % 16 == 0 and K % 32 == 0:
        assert p.nbytes * 2 == w.nbytes        # half the float32 bytes
    assert build in p.layout
    # a strided bf16 source packs the same
    wb = w.astype(BF)
    wide = np.zeros((N, K + 5), BF)
    wide[:, :K] = wb
    assert np.array_equal(B.pack_weight(wide[:, :K]).unpack().view(np.uint16),
                          wb.view(np.uint16))
    assert B.pack_weight(p) is p


def test_pack_validation():
    with pytest.raises(ValueError, match="2-D"):
        B.pack_weight(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        B.pack_weight(np.zeros((3, 3), np.int32))


# ---------------------------------------------------------------------------
# the GEMM against float64
# ---------------------------------------------------------------------------

SHAPES = [(1, 1, 1), (0, 5, 7), (5, 0, 7), (4, 6, 0), (1, 15, 17), (15, 17, 33),
          (17, 33, 15), (33, 1, 64), (70, 50, 100), (32, 32, 32), (3, 100, 1),
          (65, 47, 129)]


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_linear_against_float64(build, M, N, K):
    rng = np.random.default_rng(M * 10000 + N * 100 + K)
    x = _rand_bf16(rng, (M, K))
    w = _rand_bf16(rng, (N, K))
    bias = rng.standard_normal(N).astype(np.float32)
    for b in (None, bias):
        got = B.linear(x, B.pack_weight(w), b)
        ref, bound = _reference(x, w, b, None)
        assert got.shape == (M, N) and got.dtype == np.float32
        err = np.abs(got - ref)
        assert np.all(err <= bound + 1e-30), (build, float(np.max(err - bound, initial=0)))


@pytest.mark.parametrize("act", [None, "relu", "gelu", "gelu_tanh", "silu", "quick_gelu"])
def test_activations_and_bf16_out(build, act):
    rng = np.random.default_rng(7)
    M, N, K = 37, 45, 70
    x = _rand_bf16(rng, (M, K), 0.3)
    w = _rand_bf16(rng, (N, K), 0.3)
    bias = rng.standard_normal(N).astype(np.float32)
    p = B.pack_weight(w)
    ref, bound = _reference(x, w, bias, act)
    got = B.linear(x, p, bias, activation=act)
    assert np.all(np.abs(got - ref) <= bound), act
    gb = B.linear(x, p, bias, activation=act, out_dtype=BF)
    assert gb.dtype == BF
    # bf16 out is the fp32 result rounded once (same kernel, same sums)
    assert np.array_equal(gb.view(np.uint16), got.astype(BF).view(np.uint16))
    assert np.all(np.abs(_f64(gb) - ref) <= bound + 2.0 ** -8 * np.abs(ref))
    for spelling in ("bfloat16", ml_dtypes.bfloat16):
        assert B.linear(x, p, bias, activation=act, out_dtype=spelling).dtype == BF
    o = np.empty((M, N), BF)
    assert B.linear(x, p, bias, activation=act, out=o) is o
    assert np.array_equal(o.view(np.uint16), gb.view(np.uint16))


def test_unpacked_weights_and_strided_x(build):
    rng = np.random.default_rng(8)
    M, N, K = 40, 33, 50
    big = _rand_bf16(rng, (2 * M, K + 9))
    x = big[::2, 3:3 + K]                      # strided rows, offset columns
    w = rng.standard_normal((N, K)).astype(np.float32)
    got = B.linear(x, w)                       # float32 weight packed on the fly
    want = B.linear(np.ascontiguousarray(x), B.pack_weight(w.astype(BF)))
    assert np.array_equal(got, want)
    # a non-contiguous last axis is copied, not misread
    xt = np.ascontiguousarray(_rand_bf16(rng, (K, M)).T)
    xnc = _rand_bf16(rng, (M, 2 * K))[:, ::2]
    assert np.array_equal(B.linear(xnc, w), B.linear(np.ascontiguousarray(xnc), w))
    assert B.linear(xt, w).shape == (M, N)
    # out with a row stride
    ob = np.zeros((M, N + 7), np.float32)
    B.linear(x, w, out=ob[:, 2:2 + N])
    assert np.array_equal(ob[:, 2:2 + N], want) and not ob[:, :2].any() and not ob[:, 2 + N:].any()


def test_batch_invariance(build):
    """A row's bits do not depend on M, its position or the thread count."""
    rng = np.random.default_rng(9)
    K, N = 77, 70
    x = _rand_bf16(rng, (140, K))
    p = B.pack_weight(_rand_bf16(rng, (N, K)))
    bias = rng.standard_normal(N).astype(np.float32)
    full = B.linear(x, p, bias, activation="gelu", num_threads=1)
    for nt in (1, 2, 3):
        assert np.array_equal(B.linear(x, p, bias, activation="gelu", num_threads=nt), full)
        for M in range(1, 71):
            for s in (0, 1, 70 - M + 3):
                got = B.linear(x[s:s + M], p, bias, activation="gelu", num_threads=nt)
                assert np.array_equal(got, full[s:s + M]), (build, nt, M, s)


def test_batch_invariance_long_k(build):
    """The same across K slices (K > 256), task row blocks (M beyond a
    block of the widening builds' 96-112 rows), partial last panels and
    both output dtypes: a row alone == the row in any batch, any threads."""
    rng = np.random.default_rng(11)
    K, N = 601, 83
    x = _rand_bf16(rng, (260, K))
    p = B.pack_weight(_rand_bf16(rng, (N, K)))
    bias = rng.standard_normal(N).astype(np.float32)
    for odt in (np.float32, B.bfloat16):
        full = B.linear(x, p, bias, activation="silu", out_dtype=odt, num_threads=1)
        for nt in (1, 2, 3):
            for M in (1, 2, 3, 5, 7, 13, 14, 15, 29, 97, 112, 113, 200, 260):
                for s in (0, 260 - M):
                    got = B.linear(x[s:s + M], p, bias, activation="silu", out_dtype=odt,
                                   num_threads=nt)
                    assert np.array_equal(got.view(np.uint16) if odt is not np.float32 else got,
                                          full[s:s + M].view(np.uint16) if odt is not np.float32
                                          else full[s:s + M]), (build, odt, nt, M, s)


def test_large_shape_threads(build):
    rng = np.random.default_rng(10)
    x = _rand_bf16(rng, (260, 384))
    w = _rand_bf16(rng, (1536, 384))
    p = B.pack_weight(w)
    y1 = B.linear(x, p, num_threads=1)
    assert np.array_equal(B.linear(x, p, num_threads=2), y1)
    ref, bound = _reference(x, w, None, None)
    assert np.all(np.abs(y1 - ref) <= bound)
    assert np.array_equal(B.linear(x[:1], p, num_threads=2), y1[:1])


def test_big_weight_task_order(build):
    """A packed weight over 1.5 MiB runs its tasks feature-block-major
    (smaller ones row-block-major): same bounds, same batch invariance."""
    rng = np.random.default_rng(13)
    x = _rand_bf16(rng, (70, 400))
    w = _rand_bf16(rng, (2100, 400))
    p = B.pack_weight(w)
    assert p.nbytes > 3 << 19
    y1 = B.linear(x, p, num_threads=1)
    assert np.array_equal(B.linear(x, p, num_threads=2), y1)
    ref, bound = _reference(x, w, None, None)
    assert np.all(np.abs(y1 - ref) <= bound)
    for s in (0, 33, 69):
        assert np.array_equal(B.linear(x[s:s + 1], p, num_threads=2), y1[s:s + 1])


def test_builds_agree_within_the_bound():
    rng = np.random.default_rng(11)
    M, N, K = 70, 50, 300
    x = _rand_bf16(rng, (M, K))
    w = _rand_bf16(rng, (N, K))
    _, bound = _reference(x, w, None, None)
    outs = {}
    for name in BUILDS:
        mod = _dispatch.load_build(name)
        y = np.empty((M, N), np.float32)
        mod.bf16_linear(x.view(np.uint16), mod.bf16_pack(w.view(np.uint16)), None,
                        mod.ACT_NONE, y, 2)
        outs[name] = y
    base = outs[BUILDS[-1]]
    for name, y in outs.items():
        assert np.all(np.abs(y.astype(np.float64) - base) <= 2 * bound), name
    # the builds that share a microkernel agree bit for bit
    paths = {n: _dispatch.load_build(n).BF16_PATH for n in BUILDS}
    assert paths["baseline"] == "widen-c"
    for a in BUILDS:
        for b in BUILDS:
            if paths[a] == paths[b]:
                assert np.array_equal(outs[a], outs[b])


def test_expected_microkernel_per_build():
    want = {"amx": "amx", "avx512bf16": "dp", "avx512": "widen-avx512",
            "avx2": "widen-avx2", "baseline": "widen-c"}
    for name in BUILDS:
        assert _dispatch.load_build(name).BF16_PATH == want[name]


def test_special_values_propagate(build):
    x = np.array([[1.0, np.inf, 2.0, 0.0], [1.0, 2.0, 3.0, 4.0], [np.nan, 0, 0, 0]],
                 np.float32).astype(BF)
    w = np.array([[1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 0.0, 0.0]], np.float32)
    y = B.linear(x, w)
    assert y[0, 0] == np.inf and np.isnan(y[0, 1])         # inf * 0 -> NaN
    assert y[1, 0] == 10.0 and y[1, 1] == 0.5
    assert np.isnan(y[2]).all()


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def test_linear_validation():
    rng = np.random.default_rng(12)
    x = _rand_bf16(rng, (4, 8))
    p = B.pack_weight(rng.standard_normal((6, 8)).astype(np.float32))
    with pytest.raises(TypeError, match="x must be bfloat16"):
        B.linear(x.astype(np.float32), p)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        B.linear([[1, 2]], p)
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        B.linear(x[0], p)
    with pytest.raises(ValueError, match=r"disagree on K"):
        B.linear(_rand_bf16(rng, (4, 9)), p)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        B.linear(x, p, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="bias must be float32"):
        B.linear(x, p, np.zeros(6, np.int64))
    with pytest.raises(ValueError, match="activation"):
        B.linear(x, p, activation="tanh")
    with pytest.raises(TypeError, match="out_dtype"):
        B.linear(x, p, out_dtype=np.float64)
    with pytest.raises(ValueError, match="out_dtype"):
        B.linear(x, p, out_dtype="float16")
    with pytest.raises(ValueError, match="out has shape"):
        B.linear(x, p, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out has dtype"):
        B.linear(x, p, out=np.empty((4, 6), np.float32), out_dtype=BF)
    with pytest.raises(TypeError, match="out must be float32 or bfloat16"):
        B.linear(x, p, out=np.empty((4, 6), np.float64))
    ro = np.empty((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        B.linear(x, p, out=ro)
    with pytest.raises(TypeError, match="PackedWeight"):
        B.linear(x, "w")
    with pytest.raises(ValueError, match="num_threads"):
        B.linear(x, p, num_threads=0)


def test_kernel_call_checks_its_operands():
    k = fastattn.kernels
    x = np.zeros((4, 8), np.uint16)
    P = k.bf16_pack(np.zeros((6, 8), np.uint16))
    with pytest.raises(ValueError, match="packed shape"):
        k.bf16_linear(x, P, None, 0, np.empty((4, 17), np.float32), 1)
    with pytest.raises(ValueError, match="bias"):
        k.bf16_linear(x, P, np.zeros(5, np.float32), 0, np.empty((4, 6), np.float32), 1)
    with pytest.raises(ValueError, match="act"):
        k.bf16_linear(x, P, None, 99, np.empty((4, 6), np.float32), 1)


# ---------------------------------------------------------------------------
# dispatch and the start-up self-check
# ---------------------------------------------------------------------------

def test_bf16_builds_in_dispatch():
    assert _dispatch.ORDER[:3] == ("amx", "avx512bf16", "avx512")
    assert not _dispatch.supported("avx512bf16", set(_dispatch._REQUIRED["avx512"]))
    assert _dispatch.supported("avx512bf16", set(_dispatch._REQUIRED["avx512bf16"]))
    assert not _dispatch.supported("amx", set(_dispatch._REQUIRED["avx512bf16"]))
    ok, reason = fastattn.kernels.amx_request()
    assert isinstance(ok, bool) and reason
    feats = _dispatch.cpu_features()
    assert ("AMX_BF16" in feats) == (ok and "AVX512BF16" in feats)
    if "amx" in BUILDS:
        assert ok and reason == "ok"


def test_self_check_covers_bf16_gemm():
    mods = [_dispatch.load_build(n) for n in BUILDS]
    for hi, lo in zip(mods, mods[1:]):
        assert _dispatch._self_check_bf16(hi, lo)

    class Broken:
        def __init__(self, good):
            self._g = good

        def __getattr__(self, name):
            return getattr(self._g, name)

        def bf16_linear(self, x, P, bias, act, out, nt):
            self._g.bf16_linear(x, P, bias, act, out, nt)
            out[3, 4] += 1     # one wrong element

    assert not _dispatch._self_check_bf16(Broken(mods[0]), mods[-1])

    class BadRound(Broken):
        def bf16_from_f32(self, src, dst, nt):
            self._g.bf16_from_f32(src, dst, nt)
            dst[0, 0] ^= 1

    assert not _dispatch._self_check_bf16(BadRound(mods[0]), mods[-1])
