"""Plans: validation once, then cheap calls (decoding).

* ``fastattn.functional.attention_plan``: scaled_dot_product_attention over
  the first ``length`` rows of fixed K/V buffers; bit for bit the public call,
  for any length and thread count; bad arguments are rejected when the plan
  is made (as the public call rejects them) or, for ``length`` and
  ``num_threads``, when it is called.
* ``fastattn.models._decode_plan.DecodePlan``: one decode step of a
  generate() call; bit for bit ``CausalLM._run`` for float32 and bfloat16
  models of every family, with and without a padding mask, at any thread
  count; generate() with it gives the tokens generate() gave without it.
"""
import numpy as np
import pytest

import fastattn
from fastattn.functional import attention_plan, AttentionPlan, scaled_dot_product_attention

from _tiny_models import DECODERS, write_folder

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def _rand(shape, seed, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x.astype(dtype)


# ---------------------------------------------------------------------------
# attention_plan
# ---------------------------------------------------------------------------

CASES = [
    # (B, Hq, Hkv, L, cap, D, kw)
    (1, 8, 8, 1, 300, 64, dict(is_causal=True, causal_alignment="bottom_right")),
    (2, 8, 2, 1, 1100, 64, dict(is_causal=True, causal_alignment="bottom_right",
                                enable_gqa=True)),
    (1, 4, 4, 3, 90, 32, dict(is_causal=True, causal_alignment="bottom_right",
                              window=(7, 0))),
    (2, 4, 1, 5, 70, 16, dict(is_causal=True, enable_gqa=True, scale=0.3)),
    (1, 2, 2, 4, 50, 80, dict()),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bf16"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_attention_plan_equals_the_public_call(case, dtype):
    B, Hq, Hkv, L, cap, D, kw = CASES[case]
    dt = BF16 if dtype == "bf16" else np.dtype(dtype)
    q = _rand((B, Hq, L, D), 1, dt)
    k = _rand((B, Hkv, cap, D), 2, dt)
    v = _rand((B, Hkv, cap, D), 3, dt)
    plan = attention_plan(q, k, v, **kw)
    assert isinstance(plan, AttentionPlan) and plan.capacity == cap
    for S in sorted({1, 2, L, 17, cap // 2, cap - 1, cap}):
        ref = scaled_dot_product_attention(q, k[:, :, :S], v[:, :, :S], **kw)
        outs = [plan(S, num_threads=nt).copy() for nt in (1, 2, 3)]
        for o in outs:
            assert o.dtype == ref.dtype
            np.testing.assert_array_equal(o.view(np.uint8), ref.view(np.uint8))
    # the default thread count, and the out buffer is the plan's
    assert plan(cap) is plan.out


def test_attention_plan_writes_into_a_view_and_sees_buffer_updates():
    B, H, cap, D = 2, 4, 40, 16
    qkv = _rand((B, 1, 3 * H, D), 4)                 # a fused projection's rows
    q = qkv[:, :, :H].transpose(0, 2, 1, 3)
    k = np.zeros((B, H, cap, D), np.float32)
    v = np.zeros((B, H, cap, D), np.float32)
    buf = np.empty((B, 1, H, D), np.float32)
    out = buf.transpose(0, 2, 1, 3)
    kw = dict(is_causal=True, causal_alignment="bottom_right")
    plan = attention_plan(q, k, v, out=out, **kw)
    for S in range(1, 12):                          # the cache grows in place
        k[:, :, S - 1] = _rand((B, H, D), 10 + S)
        v[:, :, S - 1] = _rand((B, H, D), 50 + S)
        q[...] = _rand(q.shape, 90 + S)
        r = plan(S)
        assert r is out
        ref = scaled_dot_product_attention(q, k[:, :, :S], v[:, :, :S], **kw)
        np.testing.assert_array_equal(out, ref)


def test_attention_plan_length_zero_and_empty():
    q, k, v = _rand((1, 2, 3, 8), 1), _rand((1, 2, 10, 8), 2), _rand((1, 2, 10, 8), 3)
    plan = attention_plan(q, k, v)
    assert not plan(0).any()
    e = attention_plan(q[:, :, :0], k, v)
    assert e(5).shape == (1, 2, 0, 8)


def test_attention_plan_rejects_bad_calls():
    q, k, v = _rand((1, 2, 1, 8), 1), _rand((1, 2, 10, 8), 2), _rand((1, 2, 10, 8), 3)
    plan = attention_plan(q, k, v, is_causal=True)
    with pytest.raises(ValueError, match="length"):
        plan(11)
    with pytest.raises(ValueError, match="length"):
        plan(-1)
    for bad in (2.0, "3", None, True):
        with pytest.raises(TypeError, match="length"):
            plan(bad)
    assert plan(np.int64(4)) is plan.out
    with pytest.raises((ValueError, TypeError), match="num_threads"):
        plan(4, num_threads=0)
    with pytest.raises((ValueError, TypeError), match="num_threads"):
        plan(4, num_threads="two")


def test_attention_plan_validates_like_the_public_call():
    q, k, v = _rand((1, 2, 1, 8), 1), _rand((1, 2, 10, 8), 2), _rand((1, 2, 10, 8), 3)
    with pytest.raises(ValueError, match="embedding"):
        attention_plan(q, k[..., :7], v)
    with pytest.raises(TypeError, match="mixed dtypes"):
        attention_plan(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match="query"):
        attention_plan(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="enable_gqa"):
        attention_plan(_rand((1, 3, 1, 8), 4), k, v, enable_gqa=True)
    with pytest.raises(ValueError, match="window"):
        attention_plan(q, k, v, window=(-3, 0))
    with pytest.raises(ValueError, match="scale"):
        attention_plan(q, k, v, scale=float("inf"))
    with pytest.raises(ValueError, match="causal_alignment"):
        attention_plan(q, k, v, causal_alignment="middle")
    with pytest.raises(ValueError, match="out overlaps"):
        attention_plan(q, k, v, out=k[:, :, :1])
    with pytest.raises(ValueError, match="out has shape"):
        attention_plan(q, k, v, out=np.empty((1, 2, 2, 8), np.float32))
    with pytest.raises((ValueError, TypeError), match="num_threads"):
        attention_plan(q, k, v, num_threads=-2)
    # the plan reads its buffers in place: no silent copy of a strided last axis
    ks = np.repeat(k, 2, axis=-1)[..., ::2]
    with pytest.raises(ValueError, match="key .*contiguous last axis"):
        attention_plan(q, ks, v)


# ---------------------------------------------------------------------------
# DecodePlan
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["gpt2", "llama", "mistral", "qwen2"])
def folder(request, tmp_path_factory):
    kw = dict(E=32, H=2) if request.param == "gpt2" else dict(E=64, H=4, Hkv=2, I=48)
    cfg, t = DECODERS[request.param](**kw)
    d = str(tmp_path_factory.mktemp(request.param))
    write_folder(d, cfg, t)
    return d


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def model(request, folder):
    from fastattn.models import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, dtype=request.param)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_decode_plan_step_equals_run(model, B, padded):
    from fastattn.models._decode_plan import DecodePlan
    m = model
    T, cap = 13, 20
    ids = np.random.default_rng(B).integers(0, m.vocab_size, (B, T))
    cache = m.new_cache(B, cap)
    m(ids, cache=cache)
    mask = None
    if padded:      # hide the first keys of the last row (padding)
        ok = np.ones((B, cap), bool)
        ok[-1, :3] = False
    kref, vref = cache.k.copy(), cache.v.copy()
    plans = {}
    for p0 in range(T, cap):
        tok = np.random.default_rng(p0).integers(0, m.vocab_size, (B, 1))
        pos = np.full((B, 1), p0, np.int64)
        rope = m._rope_tables(pos) if m.inv_freq is not None else None
        if padded:
            mask = ok[:, None, None, :p0 + 1]
        ref = m._run(tok, pos, (kref, vref), p0, mask, True, rope).copy()
        for nt in (1, 2, 3):
            with fastattn.threads(nt):
                if nt not in plans:
                    plans[nt] = DecodePlan(m, B, (cache.k, cache.v))
                if nt > 1:   # every plan writes the same new cache row
                    cache.k[:, :, :, p0] = 0
                    cache.v[:, :, :, p0] = 0
                got = plans[nt].step(tok, pos, p0, mask, rope)
            np.testing.assert_array_equal(got, ref)
            np.testing.assert_array_equal(cache.k.view(np.uint8), kref.view(np.uint8))
            np.testing.assert_array_equal(cache.v.view(np.uint8), vref.view(np.uint8))


def test_generate_with_the_plan_equals_generate_without(model, monkeypatch):
    from fastattn.models import causal_lm
    m = model
    rng = np.random.default_rng(7)
    ids = rng.integers(0, m.vocab_size, (3, 9))
    mask = np.ones((3, 9), int)
    mask[1, :4] = 0                   # left padding
    eos = int(m.generate(ids, 6, attention_mask=mask, eos_token_id=[])[0, 9 + 2])
    kw = dict(attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    runs = [m.generate(ids, 12, **kw), m.generate(ids[:1], 12, eos_token_id=[]),
            m.generate(ids, 8, do_sample=True, top_k=5, seed=3, eos_token_id=[])]

    class Unplanned:                  # the per-step _run the plan replaces
        def __init__(self, mod, n, kv):
            self.m, self.n, self.kv = mod, n, kv

        def step(self, ids, pos, p0, mask, rope):
            kv = (self.kv[0][:, :self.n], self.kv[1][:, :self.n])
            return self.m._run(ids, pos, kv, p0, mask, True, rope)
    monkeypatch.setattr(causal_lm, "DecodePlan", Unplanned)
    refs = [m.generate(ids, 12, **kw), m.generate(ids[:1], 12, eos_token_id=[]),
            m.generate(ids, 8, do_sample=True, top_k=5, seed=3, eos_token_id=[])]
    for a, b in zip(runs, refs):
        np.testing.assert_array_equal(a, b)


def test_decode_plan_rejects_bad_arguments(model):
    from fastattn.models._decode_plan import DecodePlan
    m = model
    cache = m.new_cache(2, 10)
    kv = (cache.k, cache.v)
    for n in (0, 3, 1.0, None):
        with pytest.raises(ValueError, match="n = "):
            DecodePlan(m, n, kv)
    with pytest.raises(ValueError, match="cache k"):
        DecodePlan(m, 1, (cache.k[:, :, :1], cache.v))
    with pytest.raises(ValueError, match="cache v"):
        DecodePlan(m, 1, (cache.k, cache.v.astype(np.float64)))
    if not m._bf16:
        big = m.new_cache(17, 4)
        with pytest.raises(ValueError, match="planned up to"):
            DecodePlan(m, 17, (big.k, big.v))
