"""Parity with torch.nn.functional.scaled_dot_product_attention (skipped
when PyTorch is not installed)."""
import warnings

import numpy as np
import pytest
from conftest import DTYPES, assert_close, randn, tol

import fastattn

torch = pytest.importorskip("torch")
tF = torch.nn.functional
sdpa = fastattn.scaled_dot_product_attention


def torch_sdpa(q, k, v, **kw):
    """torch in float64 on the same values (the ground truth to compare
    either fastattn dtype with), back as NumPy."""
    t = lambda x: None if x is None else torch.from_numpy(
        np.ascontiguousarray(x.astype(np.float64) if x.dtype != np.bool_ else x))
    m = kw.pop("attn_mask", None)
    with torch.no_grad():
        out = tF.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(m), **kw)
    return out.numpy()


CASES = [  # (B, Hq, Hkv, L, S, E, Ev)
    (1, 1, 1, 1, 1, 8, 8), (2, 4, 4, 7, 65, 64, 64), (2, 4, 2, 65, 7, 80, 32),
    (1, 8, 2, 129, 129, 128, 128), (2, 3, 1, 1, 1000, 64, 16),
    (1, 2, 2, 63, 127, 96, 96), (1, 2, 1, 200, 300, 256, 64),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_parity_with_torch(rng, dtype, case):
    B, Hq, Hkv, L, S, E, Ev = case
    q = randn(rng, (B, Hq, L, E), dtype)
    k = randn(rng, (B, Hkv, S, E), dtype)
    v = randn(rng, (B, Hkv, S, Ev), dtype)
    bm = rng.random((B, 1, L, S)) > 0.3
    bm[..., 0, :] = False                                   # a fully masked row
    fm = np.where(rng.random((L, S)) > 0.3, randn(rng, (L, S), dtype), -np.inf).astype(dtype)
    gqa = Hq != Hkv
    for kw in ({}, {"is_causal": True}, {"attn_mask": bm}, {"attn_mask": bm[0, 0]},
               {"attn_mask": fm}, {"attn_mask": fm[:1]}, {"scale": 0.05},
               {"is_causal": True, "scale": 0.3 / np.sqrt(E)}):
        kw = dict(kw, enable_gqa=gqa)
        out = sdpa(q, k, v, **kw)
        expected = torch_sdpa(q, k, v, **kw)
        assert_close(out, expected, tol(dtype), what=str({a: getattr(b, "shape", b)
                                                           for a, b in kw.items()}))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parity_same_dtype(rng, dtype):
    """fastattn float32 against torch float32 (each within 1e-5 of exact)."""
    q, k, v = (randn(rng, (2, 4, n, 64), dtype) for n in (100, 150, 150))
    tt = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    with torch.no_grad():
        expected = tF.scaled_dot_product_attention(tt(q), tt(k), tt(v),
                                                   is_causal=True).numpy()
    out = sdpa(q, k, v, is_causal=True)
    assert out.dtype == expected.dtype
    assert_close(out, expected, 2 * tol(dtype))


@pytest.mark.parametrize("LS", [(5, 9), (9, 5), (1, 1100)])
def test_bottom_right_matches_torch_causal_lower_right(rng, LS):
    from torch.nn.attention.bias import causal_lower_right
    L, S = LS
    q = randn(rng, (2, 3, L, 16), np.float64)
    k = randn(rng, (2, 3, S, 16), np.float64)
    v = randn(rng, (2, 3, S, 8), np.float64)
    out = sdpa(q, k, v, is_causal=True, causal_alignment="bottom_right")
    with torch.no_grad(), warnings.catch_warnings():
        # torch warns that L > S gives NaN rows; that is what is checked below
        warnings.simplefilter("ignore", UserWarning)
        bias = causal_lower_right(L, S)
        expected = tF.scaled_dot_product_attention(
            torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
            attn_mask=bias).numpy()
    # torch leaves rows that see no key as NaN here; fastattn gives zeros
    dead = ~np.tril(np.ones((L, S), bool), k=S - L).any(-1)
    assert np.all(out[..., dead, :] == 0)
    assert_close(out[..., ~dead, :], expected[..., ~dead, :], 1e-12)


def test_transposed_views_match_torch(rng):
    x = randn(rng, (2, 70, 3, 4, 32), np.float32)       # (B, S, qkv, H, D)
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    out = sdpa(q, k, v, is_causal=True)
    assert_close(out, torch_sdpa(q, k, v, is_causal=True), 1e-5)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_torch_fully_masked_rows_are_zero_too(rng, kind):
    q = randn(rng, (1, 2, 4, 8), np.float64)
    k = randn(rng, (1, 2, 5, 8), np.float64)
    m = np.ones((4, 5), bool)
    m[2] = False
    if kind == "float":
        m = np.where(m, 0.0, -np.inf)
    expected = torch_sdpa(q, k, k, attn_mask=m)
    out = sdpa(q, k, k, attn_mask=m)
    if np.isnan(expected).any():
        pytest.skip("this torch version gives NaN for fully masked rows")
    assert_close(out, expected, 1e-12)
