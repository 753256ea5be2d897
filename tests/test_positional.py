"""Sinusoidal encoding, RoPE (both conventions), ALiBi slopes, and the
ALiBi / sliding-window options of scaled_dot_product_attention against the
float64 reference with the equivalent explicit mask / bias."""
import math

import numpy as np
import pytest

import fastattn
from fastattn import reference
from fastattn.positional import (sinusoidal_encoding, RotaryEmbedding,
                                 apply_rotary, alibi_slopes)



def test_sinusoidal_matches_the_paper():
    pe = sinusoidal_encoding(50, 16, dtype=np.float64)
    for pos in (0, 1, 17, 49):
        for i in range(8):
            ang = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i] == pytest.approx(math.sin(ang), abs=1e-15)
            assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(ang), abs=1e-15)
    np.testing.assert_array_equal(sinusoidal_encoding(10, 16, offset=40, dtype=np.float64), pe[40:])
    odd = sinusoidal_encoding(5, 7)
    assert odd.shape == (5, 7) and odd.dtype == np.float32
    np.testing.assert_allclose(odd[:, :6], sinusoidal_encoding(5, 7, dtype=np.float64)[:, :6], atol=1e-7)
    with pytest.raises(ValueError):
        sinusoidal_encoding(-1, 4)


def _rope_complex(x, pos, base, r, interleaved):
    ang = np.asarray(pos, np.float64)[:, None] * base ** (-np.arange(0, r, 2) / r)
    x = x.astype(np.float64).copy()
    if interleaved:
        c = (x[..., 0:r:2] + 1j * x[..., 1:r:2]) * np.exp(1j * ang)
        x[..., 0:r:2], x[..., 1:r:2] = c.real, c.imag
    else:
        h = r // 2
        c = (x[..., :h] + 1j * x[..., h:r]) * np.exp(1j * ang)
        x[..., :h], x[..., h:r] = c.real, c.imag
    return x


def _rotate_half_hf(x, pos, base):
    """Hugging Face Llama's formula: x * cos + rotate_half(x) * sin."""
    D = x.shape[-1]
    inv = base ** (-np.arange(0, D, 2) / D)
    emb = np.concatenate([np.outer(pos, inv)] * 2, axis=-1)
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], axis=-1)
    return x * np.cos(emb) + rot * np.sin(emb)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_rope_against_complex_reference(rng, interleaved, dt):
    for D, r in ((16, None), (16, 8)):
        rot = RotaryEmbedding(D, base=500.0, interleaved=interleaved, rotary_dim=r)
        x = rng.standard_normal((2, 3, 9, D)).astype(dt)
        ref = _rope_complex(x, np.arange(4, 13), 500.0, r or D, interleaved)
        tol = 1e-6 if dt == np.float32 else 1e-13
        np.testing.assert_allclose(rot(x, offset=4), ref, atol=tol, rtol=0)
        np.testing.assert_allclose(rot(x, np.arange(4, 13)), ref, atol=tol, rtol=0)
        y = x.copy()
        rot(y, offset=4, out=y)                      # in place
        np.testing.assert_allclose(y, ref, atol=tol, rtol=0)


def test_rope_half_split_is_hf_rotate_half(rng):
    x = rng.standard_normal((4, 7, 8))
    rot = RotaryEmbedding(8)
    np.testing.assert_allclose(rot(x), _rotate_half_hf(x, np.arange(7), 10000.0), atol=1e-13)


def test_rope_on_strided_view_in_place(rng):
    qkv = rng.standard_normal((2, 5, 3, 2, 8))                       # (B, L, 3, H, D)
    q = qkv[:, :, 0].transpose(0, 2, 1, 3)
    ref = _rope_complex(q, np.arange(5), 10000.0, 8, False)
    keep = qkv[:, :, 1:].copy()
    RotaryEmbedding(8)(q, out=q)
    np.testing.assert_allclose(qkv[:, :, 0].transpose(0, 2, 1, 3), ref, atol=1e-13)
    np.testing.assert_array_equal(qkv[:, :, 1:], keep)


def test_rope_relative_property(rng):
    """<rot(q, m), rot(k, n)> depends only on m - n."""
    rot = RotaryEmbedding(8, interleaved=True)
    q, k = rng.standard_normal((1, 8)), rng.standard_normal((1, 8))
    d1 = (rot(q, [7]) * rot(k, [3])).sum()
    d2 = (rot(q, [104]) * rot(k, [100])).sum()
    assert d1 == pytest.approx(d2, abs=1e-12)


def test_rope_bad_input():
    with pytest.raises(ValueError):
        RotaryEmbedding(7)
    with pytest.raises(ValueError):
        RotaryEmbedding(8, rotary_dim=10)
    with pytest.raises(ValueError, match="shape"):
        RotaryEmbedding(8)(np.ones((3, 6)))
    with pytest.raises(TypeError):
        RotaryEmbedding(8)(np.ones((3, 8), np.int32))
    with pytest.raises(ValueError):
        apply_rotary(np.ones((3, 4)), np.ones((3, 3)), np.ones((3, 3)))


def test_alibi_slopes_values():
    np.testing.assert_allclose(alibi_slopes(8), [2 ** -(i + 1) for i in range(8)])
    np.testing.assert_allclose(alibi_slopes(4), [2 ** (-2 * (i + 1)) for i in range(4)])
    s6 = alibi_slopes(6)
    np.testing.assert_allclose(s6[:4], alibi_slopes(4))
    np.testing.assert_allclose(s6[4:], alibi_slopes(8)[0::2][:2])
    with pytest.raises(ValueError):
        alibi_slopes(0)


def _explicit(L, S, H, align, window, slopes, causal):
    """Explicit additive bias (H, L, S) that window/ALiBi/causal stand for."""
    off = S - L if align == "bottom_right" else 0
    i = np.arange(L)[:, None] + off
    j = np.arange(S)[None, :]
    vis = np.ones((L, S), bool)
    left, right = window if window is not None else (None, None)
    if causal:
        right = 0 if right is None else min(right, 0)
    if left is not None:
        vis &= j >= i - left
    if right is not None:
        vis &= j <= i + right
    bias = np.where(vis, 0.0, -np.inf)[None]
    if slopes is not None:
        bias = bias - slopes[:, None, None] * np.abs(i - j)[None]
    return np.broadcast_to(bias, (H, L, S))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("L,S,align", [(70, 70, "top_left"), (9, 130, "bottom_right"),
                                       (130, 70, "top_left")])
def test_sdpa_alibi_and_window_vs_explicit_mask(rng, dt, L, S, align):
    B, H, D = 2, 4, 16
    q = rng.standard_normal((B, H, L, D)).astype(dt)
    k = rng.standard_normal((B, H, S, D)).astype(dt)
    v = rng.standard_normal((B, H, S, D)).astype(dt)
    slopes = alibi_slopes(H)
    tol = 2e-5 if dt == np.float32 else 1e-11
    for window, use_alibi, causal in (((8, 8), False, False), ((16, 0), False, False),
                                      (None, True, False), ((5, 3), True, False),
                                      (None, True, True), ((40, None), True, True)):
        s = slopes if use_alibi else None
        out = fastattn.scaled_dot_product_attention(
            q, k, v, is_causal=causal, causal_alignment=align, window=window,
            alibi_slopes=s)
        bias = _explicit(L, S, H, align, window, s, causal)
        ref = reference.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        # rows that see no key are zeros in both
        np.testing.assert_allclose(out, ref, atol=tol, rtol=0,
                                   err_msg=f"{window} {use_alibi} {causal}")
