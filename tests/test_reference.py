"""fastattn.reference, the float64 oracle, against scipy and explicit loops.

If the oracle is wrong every other comparison is meaningless, so it is held
to independent definitions here: scipy.special.softmax, and scalar Python
loops written straight from the definitions in the issue.
"""
import math

import numpy as np
import pytest
import scipy.special
from conftest import DTYPES, assert_close, randn

from fastattn import reference as ref


def loop_visible(i, j, L, S, is_causal, align, window):
    ip = i + (S - L if align == "bottom_right" else 0)
    left, right = (None, None) if window is None else window
    left = None if left in (None, -1) else left
    right = None if right in (None, -1) else right
    if is_causal:
        right = 0 if right is None else min(right, 0)
    if left is not None and j < ip - left:
        return False
    return not (right is not None and j > ip + right)


def loop_sdpa(q, k, v, mask=None, is_causal=False, scale=None, align="top_left",
              window=None, slopes=None, gqa_group=1):
    """Scalar-loop attention for (H, L, E) / (Hkv, S, E) / (Hkv, S, Ev)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    H, L, E = q.shape
    S, Ev = v.shape[1], v.shape[2]
    scale = 1 / math.sqrt(E) if scale is None else scale
    off = S - L if align == "bottom_right" else 0
    out = np.zeros((H, L, Ev))
    for h in range(H):
        hk = h // gqa_group
        for i in range(L):
            logits = []
            for j in range(S):
                if not loop_visible(i, j, L, S, is_causal, align, window):
                    continue
                s = scale * sum(q[h, i, d] * k[hk, j, d] for d in range(E))
                if slopes is not None:
                    s -= slopes[h] * abs(i + off - j)
                if mask is not None:
                    mv = mask[h, i, j]
                    if isinstance(mv, (bool, np.bool_)):
                        if not mv:
                            continue
                    else:
                        if mv == -np.inf:
                            continue
                        s += float(mv)
                logits.append((s, j))
            if not logits:
                continue
            mx = max(s for s, _ in logits)
            w = [(math.exp(s - mx), j) for s, j in logits]
            tot = sum(e for e, _ in w)
            for e, j in w:
                out[h, i] += e / tot * v[hk, j]
    return out


# ---------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_softmax_matches_scipy(rng, axis):
    x = rng.standard_normal((7, 9, 11)) * 5
    assert_close(ref.softmax(x, axis=axis), scipy.special.softmax(x, axis=axis),
                 0, 1e-14)


def test_softmax_explicit_loop(rng):
    x = rng.standard_normal((4, 6))
    out = ref.softmax(x)
    for r in range(4):
        tot = sum(math.exp(t) for t in x[r])
        for c in range(6):
            assert out[r, c] == pytest.approx(math.exp(x[r, c]) / tot, rel=1e-14)


def test_softmax_edge_cases(rng):
    x = rng.standard_normal((5, 50))
    x[0] += 1e4
    x[1] -= 1e4
    x[2] = -np.inf
    x[3, ::3] = -np.inf
    x[4, 7] = np.nan
    with np.errstate(invalid="ignore"):
        out = ref.softmax(x)
    assert out.dtype == np.float64
    assert_close(out[:2], scipy.special.softmax(x[:2] - x[:2].mean(-1, keepdims=True), axis=-1), 0, 1e-12)
    assert np.all(out[2] == 0)
    assert np.all(out[3, ::3] == 0)
    assert out[3].sum() == pytest.approx(1, rel=1e-14)
    assert np.all(np.isnan(out[4]))
    assert ref.softmax(np.zeros((0, 3))).shape == (0, 3)
    # float32 input is computed in float64
    assert ref.softmax(x[:2].astype(np.float32)).dtype == np.float64


# ---------------------------------------------------------------------------
# scores, weighted sum, visibility
# ---------------------------------------------------------------------------

def test_attention_scores_explicit_loop(rng):
    q = rng.standard_normal((2, 3, 4))
    k = rng.standard_normal((2, 5, 4))
    out = ref.attention_scores(q, k)
    assert out.shape == (2, 3, 5)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                e = sum(q[b, i, d] * k[b, j, d] for d in range(4)) / 2.0
                assert out[b, i, j] == pytest.approx(e, rel=1e-13, abs=1e-15)
    assert_close(ref.attention_scores(q, k, 0.3), 0.3 * 2 * out, 1e-14)
    # broadcasting leading dims like matmul
    assert ref.attention_scores(q[None], k[:1]).shape == (1, 2, 3, 5)


def test_weighted_sum_explicit_loop(rng):
    p = rng.random((3, 4, 5))
    v = rng.standard_normal((5, 2))
    out = ref.weighted_sum(p, v)
    assert out.shape == (3, 4, 2) and out.dtype == np.float64
    for b in range(3):
        for i in range(4):
            for d in range(2):
                e = sum(p[b, i, j] * v[j, d] for j in range(5))
                assert out[b, i, d] == pytest.approx(e, rel=1e-13)


@pytest.mark.parametrize("L,S", [(1, 1), (3, 7), (7, 3), (5, 5), (0, 4), (4, 0)])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_visibility_mask_explicit_loop(L, S, align):
    for causal in (False, True):
        for window in (None, (0, 0), (1, 2), (2, None), (-1, 1), (None, -1), (10, 0)):
            vis = ref.visibility_mask(L, S, causal, align, window)
            assert vis.shape == (L, S) and vis.dtype == bool
            for i in range(L):
                for j in range(S):
                    assert vis[i, j] == loop_visible(i, j, L, S, causal, align,
                                                     window), (causal, window, i, j)


def test_visibility_mask_is_pytorch_tril():
    """PyTorch's is_causal is torch.ones(L, S).tril(diagonal=0)."""
    for L, S in ((4, 4), (3, 6), (6, 3)):
        assert np.array_equal(ref.visibility_mask(L, S, True),
                              np.tril(np.ones((L, S), bool)))


# ---------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,S", [(1, 1), (3, 5), (5, 3), (4, 4)])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_sdpa_explicit_loop(rng, dtype, L, S, align):
    H, Hkv, E, Ev = 4, 2, 3, 2
    q = randn(rng, (H, L, E), dtype)
    k = randn(rng, (Hkv, S, E), dtype)
    v = randn(rng, (Hkv, S, Ev), dtype)
    bm = rng.random((H, L, S)) > 0.3
    fm = np.where(rng.random((H, L, S)) > 0.3, rng.standard_normal((H, L, S)), -np.inf)
    slopes = np.array([0.5, 0.25, 0.125, 1.0])
    for kw, loop_kw in [
        ({}, {}),
        ({"is_causal": True}, {"is_causal": True}),
        ({"attn_mask": bm}, {"mask": bm}),
        ({"attn_mask": fm, "is_causal": True}, {"mask": fm, "is_causal": True}),
        ({"window": (1, 0)}, {"window": (1, 0)}),
        ({"window": (None, 1), "scale": 0.7}, {"window": (None, 1), "scale": 0.7}),
        ({"alibi_slopes": slopes}, {"slopes": slopes}),
        ({"alibi_slopes": slopes, "attn_mask": bm, "is_causal": True},
         {"slopes": slopes, "mask": bm, "is_causal": True}),
    ]:
        out = ref.scaled_dot_product_attention(q, k, v, enable_gqa=True,
                                               causal_alignment=align, **kw)
        assert out.dtype == np.float64
        expected = loop_sdpa(q, k, v, align=align, gqa_group=2, **loop_kw)
        assert_close(out, expected, 1e-13, what=str(kw))


def test_sdpa_broadcast_mask_and_batch(rng):
    q = rng.standard_normal((2, 3, 4, 5))
    k = rng.standard_normal((3, 6, 5))
    v = rng.standard_normal((2, 1, 6, 2))
    m = rng.random((4, 6)) > 0.4
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert out.shape == (2, 3, 4, 2)
    for b in range(2):
        exp = loop_sdpa(q[b], k, np.broadcast_to(v[b], (3, 6, 2)),
                        mask=np.broadcast_to(m, (3, 4, 6)))
        assert_close(out[b], exp, 1e-13)


def test_sdpa_fully_masked_rows_and_empty():
    q = np.ones((2, 3, 4))
    k = np.ones((2, 5, 4))
    v = np.arange(20.0).reshape(2, 5, 2)
    m = np.ones((3, 5), bool)
    m[1] = False
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert np.all(out[:, 1] == 0) and np.all(np.isfinite(out))
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask=np.where(m, 0.0, -np.inf))
    assert np.all(out[:, 1] == 0)
    out = ref.scaled_dot_product_attention(q, k[:, :0], v[:, :0])
    assert out.shape == (2, 3, 2) and np.all(out == 0)
    assert ref.scaled_dot_product_attention(q[:, :0], k, v).shape == (2, 0, 2)
    with pytest.raises(NotImplementedError):
        ref.scaled_dot_product_attention(q, k, v, dropout_p=0.5)


def test_attention_weights_rows_sum_to_one(rng):
    q = rng.standard_normal((3, 7, 4))
    k = rng.standard_normal((3, 9, 4))
    w = ref.attention_weights(q, k, is_causal=True, causal_alignment="bottom_right")
    assert w.shape == (3, 7, 9)
    assert_close(w.sum(-1), np.ones((3, 7)), 1e-14)
    assert np.all(w[:, ~ref.visibility_mask(7, 9, True, "bottom_right")] == 0)


def test_reference_hidden_keys_take_no_part(rng):
    """NaN/inf in a hidden key's K row must not reach the output (see
    test_functional.test_hidden_keys_take_no_part)."""
    q = rng.standard_normal((2, 3, 4))
    k = rng.standard_normal((2, 5, 4))
    v = rng.standard_normal((2, 5, 2))
    m = np.array([True, True, False, True, True])
    clean = ref.scaled_dot_product_attention(q, k, v, attn_mask=m)
    k[:, 2, 0] = np.nan
    k[:, 2, 1] = np.inf
    with np.errstate(invalid="ignore"):
        dirty = ref.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert_close(dirty, clean, 0.0)


def test_reference_2d_alibi_shape(rng):
    """(L, E) inputs: one implicit head, output (L, Ev) as without ALiBi."""
    q, k, v = (rng.standard_normal(s) for s in ((5, 4), (6, 4), (6, 3)))
    out = ref.scaled_dot_product_attention(q, k, v, alibi_slopes=[0.5])
    assert out.shape == (5, 3)
    assert_close(out, loop_sdpa(q[None], k[None], v[None], slopes=[0.5])[0], 1e-13)
