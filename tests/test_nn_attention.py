"""fastattn.nn.MultiHeadAttention: parity with torch.nn.MultiheadAttention,
GQA / rotary / ALiBi / window against float64 NumPy references, bad input."""
import pickle

import numpy as np
import pytest

from fastattn import reference
from fastattn.nn import MultiHeadAttention, KVCache
from fastattn.positional import RotaryEmbedding, alibi_slopes
from fastattn import from_torch
import fastattn.nn.attention as _attn_mod
from conftest import tol
import fastattn.nn.layers as layers


# every test runs with the projections on the tiled GEMM and on BLAS
pytestmark = pytest.mark.usefixtures("gemm_path")



def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


def _tdtype(torch, dt):
    return torch.float64 if dt == np.float64 else torch.float32


def _torch_mha(torch, E, H, dt, batch_first, bias=True, kdim=None, vdim=None):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim,
                                    batch_first=batch_first, dtype=_tdtype(torch, dt)).eval()
    with torch.no_grad():   # non-zero biases so they are tested
        for name, p in m.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    return m


def _run_torch(torch, m, q, k, v, **kw):
    with torch.no_grad():
        conv = {kk: (torch.from_numpy(vv) if isinstance(vv, np.ndarray) else vv)
                for kk, vv in kw.items()}
        out, w = m(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), **conv)
    return out.numpy(), (None if w is None else w.numpy())


# ---------------------------------------------------------------------------
# PyTorch parity
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_matches_torch(rng, dt, batch_first):
    torch = _torch()
    E, H, B, L = 32, 4, 3, 9
    tm = _torch_mha(torch, E, H, dt, batch_first)
    fm = from_torch(tm)
    assert fm.batch_first == batch_first and fm.dtype == dt
    x = rng.standard_normal((B, L, E) if batch_first else (L, B, E)).astype(dt)
    ref, _ = _run_torch(torch, tm, x, x, x, need_weights=False)
    out, w = fm(x)
    assert w is None
    assert out.dtype == dt and out.shape == x.shape
    np.testing.assert_allclose(out, ref, atol=tol(dt, "module"), rtol=0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_cross_attention_kdim_vdim_matches_torch(rng, batch_first):
    torch = _torch()
    E, H, B, L, S = 24, 3, 2, 5, 11
    for kdim, vdim in ((None, None), (16, 20)):
        tm = _torch_mha(torch, E, H, np.float32, batch_first, kdim=kdim, vdim=vdim)
        fm = from_torch(tm)
        kd, vd = kdim or E, vdim or E
        shp = (lambda n, d: (B, n, d)) if batch_first else (lambda n, d: (n, B, d))
        q = rng.standard_normal(shp(L, E)).astype(np.float32)
        k = rng.standard_normal(shp(S, kd)).astype(np.float32)
        v = rng.standard_normal(shp(S, vd)).astype(np.float32) if vdim else k
        ref, _ = _run_torch(torch, tm, q, k, v, need_weights=False)
        out, _ = fm(q, k, v)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_no_bias_and_unbatched_match_torch(rng):
    torch = _torch()
    E, H, L, S = 16, 2, 6, 8
    tm = _torch_mha(torch, E, H, np.float32, True, bias=False)
    fm = from_torch(tm)
    assert fm.in_proj_bias is None and fm.out_proj.bias is None
    q = rng.standard_normal((L, E)).astype(np.float32)
    kv = rng.standard_normal((S, E)).astype(np.float32)
    kpm = np.zeros(S, bool)
    kpm[-2:] = True
    ref, _ = _run_torch(torch, tm, q, kv, kv, key_padding_mask=kpm, need_weights=False)
    out, _ = fm(q, kv, kv, key_padding_mask=kpm)
    assert out.shape == (L, E)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_masks_match_torch(rng, kind, batch_first):
    torch = _torch()
    E, H, B, L = 32, 4, 3, 10
    tm = _torch_mha(torch, E, H, np.float32, batch_first)
    fm = from_torch(tm)
    x = rng.standard_normal((B, L, E) if batch_first else (L, B, E)).astype(np.float32)
    # every row keeps at least the first key (torch gives NaN on fully
    # masked rows, fastattn zeros)
    am = rng.random((L, L)) < 0.3
    am[:, 0] = False
    kpm = np.zeros((B, L), bool)
    kpm[0, -3:] = True
    kpm[2, 5:] = True
    am3 = rng.random((B * H, L, L)) < 0.3
    am3[:, :, 0] = False
    if kind == "float":
        def f(m):
            return np.where(m, -np.inf, rng.standard_normal(m.shape)).astype(np.float32)
        am, kpm, am3 = f(am), f(kpm), f(am3)
    for kw in ({"attn_mask": am}, {"key_padding_mask": kpm},
               {"attn_mask": am, "key_padding_mask": kpm}, {"attn_mask": am3},
               {"attn_mask": am3, "key_padding_mask": kpm}):
        ref, _ = _run_torch(torch, tm, x, x, x, need_weights=False, **kw)
        out, _ = fm(x, **kw)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0, err_msg=str(list(kw)))


def test_mixed_bool_float_masks_match_torch(rng):
    torch = _torch()
    E, H, B, L = 16, 2, 2, 7
    tm = _torch_mha(torch, E, H, np.float32, True)
    fm = from_torch(tm)
    x = rng.standard_normal((B, L, E)).astype(np.float32)
    am = rng.standard_normal((L, L)).astype(np.float32)
    kpm = np.zeros((B, L), bool)
    kpm[1, 4:] = True
    with pytest.warns(UserWarning):   # torch deprecates mismatched mask types
        ref, _ = _run_torch(torch, tm, x, x, x, attn_mask=am, key_padding_mask=kpm,
                            need_weights=False)
    out, _ = fm(x, attn_mask=am, key_padding_mask=kpm)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_causal_matches_torch_causal_mask(rng):
    torch = _torch()
    E, H, B, L = 32, 4, 2, 13
    tm = _torch_mha(torch, E, H, np.float32, True)
    fm = from_torch(tm)
    x = rng.standard_normal((B, L, E)).astype(np.float32)
    cm = np.triu(np.ones((L, L), bool), 1)
    ref, _ = _run_torch(torch, tm, x, x, x, attn_mask=cm, need_weights=False)
    out, _ = fm(x, is_causal=True)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    out2, _ = fm(x, attn_mask=cm, is_causal=True)
    np.testing.assert_allclose(out2, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("average", [True, False])
def test_need_weights_matches_torch(rng, average):
    torch = _torch()
    E, H, B, L, S = 24, 3, 2, 5, 7
    tm = _torch_mha(torch, E, H, np.float64, False)
    fm = from_torch(tm)
    q = rng.standard_normal((L, B, E))
    kv = rng.standard_normal((S, B, E))
    am = rng.random((L, S)) < 0.3
    am[:, 0] = False
    ref, wref = _run_torch(torch, tm, q, kv, kv, attn_mask=am, need_weights=True,
                           average_attn_weights=average)
    out, w = fm(q, kv, kv, attn_mask=am, need_weights=True, average_attn_weights=average)
    assert w.shape == ((B, L, S) if average else (B, H, L, S))
    np.testing.assert_allclose(out, ref, atol=1e-11, rtol=0)
    np.testing.assert_allclose(w, wref, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------
# against a float64 NumPy reference: GQA, rotary, ALiBi, window
# ---------------------------------------------------------------------------

def _ref_mha(m, q, k=None, v=None, mask=None, is_causal=False, positions=None,
             align="top_left"):
    """float64 reference of a batch-first MultiHeadAttention (SDPA masks)."""
    k = q if k is None else k
    v = k if v is None else v
    Wq, Wk, Wv, bq, bk, bv = (None if a is None else a.astype(np.float64) for a in m._weights())
    H, Hkv, D = m.num_heads, m.num_kv_heads, m.head_dim
    B, L, _ = q.shape

    def proj(x, W, b, n):
        y = x.astype(np.float64) @ W.T + (0 if b is None else b)
        return y.reshape(B, -1, n, D).transpose(0, 2, 1, 3)
    qh, kh, vh = proj(q, Wq, bq, H), proj(k, Wk, bk, Hkv), proj(v, Wv, bv, Hkv)
    if m.rotary is not None:
        pos = np.arange(L) if positions is None else positions
        qh = _ref_rotary(qh, pos, m.rotary)
        kh = _ref_rotary(kh, pos, m.rotary)
    o = reference.scaled_dot_product_attention(
        qh, kh, vh, mask, is_causal=is_causal, enable_gqa=Hkv != H,
        causal_alignment=align, window=m.window, alibi_slopes=m.alibi_slopes)
    o = o.transpose(0, 2, 1, 3).reshape(B, L, H * D)
    y = o @ m.out_proj.weight.T.astype(np.float64)
    if m.out_proj.bias is not None:
        y = y + m.out_proj.bias
    return y


def _ref_rotary(x, pos, rot):
    """complex-number rotary reference (float64)."""
    r = rot.rotary_dim
    ang = np.asarray(pos, dtype=np.float64)[:, None] * (rot.base ** (-np.arange(0, r, 2) / r))
    z = np.exp(1j * ang)
    x = np.array(x, dtype=np.float64)
    if rot.interleaved:
        c = x[..., 0:r:2] + 1j * x[..., 1:r:2]
        c = c * z
        x[..., 0:r:2], x[..., 1:r:2] = c.real, c.imag
    else:
        h = r // 2
        c = x[..., :h] + 1j * x[..., h:r]
        c = c * z
        x[..., :h], x[..., h:r] = c.real, c.imag
    return x


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("hkv", [1, 2, 4])
def test_gqa_against_reference(rng, dt, hkv):
    m = MultiHeadAttention(32, 4, num_kv_heads=hkv, dtype=dt, rng=3)
    m.in_proj_bias[...] = rng.uniform(-1, 1, m.in_proj_bias.shape)
    assert m.in_proj_weight.shape == ((4 + 2 * hkv) * 8, 32)
    x = rng.standard_normal((2, 9, 32)).astype(dt)
    for causal in (False, True):
        out, _ = m(x, is_causal=causal)
        np.testing.assert_allclose(out, _ref_mha(m, x, is_causal=causal),
                                   atol=tol(dt, "module"), rtol=0)
    mem = rng.standard_normal((2, 6, 32)).astype(dt)
    out, w = m(x, mem, mem, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(out, _ref_mha(m, x, mem), atol=tol(dt, "module"), rtol=0)
    assert w.shape == (2, 4, 9, 6)
    np.testing.assert_allclose(w.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_alibi_window_against_reference(rng, interleaved):
    rot = RotaryEmbedding(8, interleaved=interleaved)
    for kw in ({"rotary": rot}, {"alibi": True}, {"window": (3, 0)},
               {"rotary": rot, "alibi": True, "window": (2, 2)}):
        m = MultiHeadAttention(32, 4, num_kv_heads=2, dtype=np.float64, rng=5, **kw)
        x = rng.standard_normal((2, 11, 32))
        for causal in (False, True):
            out, _ = m(x, is_causal=causal)
            np.testing.assert_allclose(out, _ref_mha(m, x, is_causal=causal),
                                       atol=1e-11, rtol=0, err_msg=str(kw))
        out, _ = m(x, need_weights=True)
        np.testing.assert_allclose(out, _ref_mha(m, x), atol=1e-11, rtol=0)


def test_alibi_slopes_reach_the_kernel(rng):
    m = MultiHeadAttention(16, 2, alibi=True, dtype=np.float64, rng=1)
    np.testing.assert_array_equal(m.alibi_slopes, alibi_slopes(2))
    plain = MultiHeadAttention(16, 2, dtype=np.float64, rng=1)
    x = rng.standard_normal((1, 6, 16))
    assert np.abs(m(x)[0] - plain(x)[0]).max() > 1e-3


def test_cache_incremental_equals_full(rng):
    rot = RotaryEmbedding(8)
    m = MultiHeadAttention(32, 4, num_kv_heads=2, rotary=rot, rng=2)
    x = rng.standard_normal((2, 10, 32)).astype(np.float32)
    full, _ = m(x, is_causal=True)
    cache = KVCache.for_module(m, batch_size=2, max_len=12)
    parts = [m(x[:, :4], is_causal=True, cache=cache[0])[0]]
    for t in range(4, 10):
        parts.append(m(x[:, t:t + 1], is_causal=True, cache=cache[0])[0])
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5, rtol=0)
    assert cache.length == 10
    with pytest.raises(ValueError, match="overflow"):
        m(x[:, :3], is_causal=True, cache=cache[0])
    assert cache.length == 10


def test_fused_projection_reads_strided_views():
    """The kernel must receive views of the one QKV buffer (no copies)."""
    m = MultiHeadAttention(16, 2, rng=0)
    seen = {}
    real = _attn_mod.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen["base"] = (q.base, k.base, v.base)
        seen["out"] = kw["out"]
        return real(q, k, v, *a, **kw)
    _attn_mod.scaled_dot_product_attention = spy
    try:
        m(np.ones((2, 3, 16), np.float32))
    finally:
        _attn_mod.scaled_dot_product_attention = real
    bq, bk, bv = seen["base"]
    assert bq is not None and bq is bk is bv
    o = seen["out"]
    assert o.shape == (2, 2, 3, 8) and o.base is not None and not o.flags.c_contiguous


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_bad_input_errors(rng):
    m = MultiHeadAttention(16, 2, rng=0)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="embedding size 12"):
        m(x[..., :12])
    with pytest.raises(TypeError, match="dtype float64"):
        m(x.astype(np.float64))
    with pytest.raises(ValueError, match="key and value differ"):
        m(x, x, x[:, :4])
    with pytest.raises(ValueError, match="batch sizes differ"):
        m(x, x[:1], x[:1])
    with pytest.raises(ValueError, match="attn_mask has shape"):
        m(x, attn_mask=np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="attn_mask has shape"):
        m(x, attn_mask=np.zeros((3, 5, 5), bool))
    with pytest.raises(TypeError, match="attn_mask must be a bool or floating"):
        m(x, attn_mask=np.zeros((5, 5), np.int32))
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        m(x, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(TypeError, match="key_padding_mask must be"):
        m(x, key_padding_mask=np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match="all be batched"):
        m(x, x[0], x[0])
    with pytest.raises(ValueError, match="dimensions"):
        m(x[None])
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        MultiHeadAttention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="only for self-attention"):
        m(x, x[:, :2], x[:, :2], cache=KVCache(1, 2, 2, 8, 10)[0])


def test_fully_masked_rows_are_zero_not_nan(rng):
    m = MultiHeadAttention(16, 2, bias=False, rng=0)
    x = rng.standard_normal((1, 4, 16)).astype(np.float32)
    kpm = np.ones((1, 4), bool)
    out, _ = m(x, key_padding_mask=kpm)
    np.testing.assert_array_equal(out, 0)


def test_pickle_roundtrip(rng):
    m = MultiHeadAttention(16, 2, num_kv_heads=1, rotary=RotaryEmbedding(8), rng=0)
    x = rng.standard_normal((1, 4, 16)).astype(np.float32)
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])


def test_attention_thread_policy_next_to_blas_projections(monkeypatch):
    """Decode-sized calls (projections on BLAS) keep the attention on one
    thread unless it is huge; calls whose projections ran on the tiled GEMM
    leave the choice to the kernel.  The layer tells the policy which GEMM
    ran its query projection."""
    import fastattn
    from fastattn.threads import for_attention
    with fastattn.threads(2):
        assert for_attention(4 * 12 * 1000 * 64, other_pool_hot=True) == 1
        assert for_attention(10 ** 12, other_pool_hot=True) == 2
        assert for_attention(10, other_pool_hot=False) is None
    seen = []
    monkeypatch.setattr(_attn_mod, "for_attention",
                        lambda flops, other_pool_hot: seen.append(other_pool_hot))
    m = MultiHeadAttention(16, 2, rng=0)
    T = 64
    monkeypatch.setattr(layers, "TILE_GEMM_MIN_ROWS", T)   # whatever gemm_path set
    for L in (1, T - 1, T):
        m(np.ones((1, L, 16), np.float32))
    assert seen == [True, True, False]
    seen.clear()
    mem = np.ones((1, 200, 16), np.float32)          # cross-attention: q decides
    m(np.ones((1, 1, 16), np.float32), mem, mem)
    m(np.ones((1, T, 16), np.float32), mem[:, :3], mem[:, :3])
    assert seen == [True, False]