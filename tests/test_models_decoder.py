"""Decoder checkpoints (GPT-2, Llama, Mistral, Qwen2) against transformers.

Tiny random-weight models are built with transformers, their weights
re-drawn larger than transformers' initialisation (so that logits differ
between tokens and greedy decoding does not repeat one token, and so that
the zero-initialised biases are exercised), saved with
``save_pretrained(safe_serialization=True)`` and loaded by fastattn.
"""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="needs torch to build reference models")
transformers = pytest.importorskip("transformers", reason="needs transformers for references")

from fastattn.models import AutoModelForCausalLM, GPT2LMHeadModel, LlamaForCausalLM  # noqa: E402
from fastattn.models.causal_lm import CausalLM  # noqa: E402

V = 128


def _small(kind, **kw):
    t = transformers
    base = dict(vocab_size=V, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=96)
    if kind == "gpt2":
        return t.GPT2Config(**{**dict(vocab_size=V, n_layer=2, n_embd=64, n_head=4,
                                      n_positions=96), **kw})
    base.update(kw)
    return {"llama": t.LlamaConfig, "mistral": t.MistralConfig,
            "qwen2": t.Qwen2Config}[kind](**base)


CONFIGS = {
    "gpt2": lambda: _small("gpt2"),
    "gpt2-layer-scale": lambda: _small("gpt2", scale_attn_by_inverse_layer_idx=True,
                                       n_inner=80, activation_function="gelu"),
    "llama-gqa-headdim": lambda: _small("llama", num_key_value_heads=2, head_dim=24),
    "llama-linear-bias": lambda: _small("llama", num_key_value_heads=2, attention_bias=True,
                                        mlp_bias=True, rope_theta=500.0,
                                        rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama-dynamic": lambda: _small("llama", num_key_value_heads=1,
                                    rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "llama3": lambda: _small("llama", num_key_value_heads=2, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama-yarn-tied": lambda: _small("llama", tie_word_embeddings=True, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24}),
    "mistral-window": lambda: _small("mistral", num_key_value_heads=2, sliding_window=6),
    "qwen2": lambda: _small("qwen2", num_key_value_heads=2),
    "qwen2-sliding": lambda: _small("qwen2", num_key_value_heads=2, use_sliding_window=True,
                                    sliding_window=5, max_window_layers=1),
}


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p.shape[-1] ** 0.5))
    return model


def _build(cfg, folder, seed=0, **save_kw):
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    _randomize(hf, seed)
    hf.save_pretrained(folder, safe_serialization=True, **save_kw)
    return hf


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(name, transformers model, fastattn model, folder) per config."""
    folder = tmp_path_factory.mktemp(request.param)
    hf = _build(CONFIGS[request.param](), folder, seed=len(request.param))
    return request.param, hf, AutoModelForCausalLM.from_pretrained(folder), folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-errors")
    hf = _build(CONFIGS["llama-gqa-headdim"](), folder, seed=3)
    return hf, AutoModelForCausalLM.from_pretrained(folder), folder


def _ids(shape, seed=1):
    return np.random.default_rng(seed).integers(3, V, shape)


def _left_padded(lengths, T, seed=2):
    ids = _ids((len(lengths), T), seed)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for r, n in enumerate(lengths):
        mask[r, T - n:] = 1
        ids[r, :T - n] = 0
    return ids, mask


_HF64 = {}


def _hf_logits(hf, ids, mask=None):
    """transformers' logits, computed by a float64 copy of the model: the
    oracle for fastattn's float32 logits (torch's own float32 result differs
    from the float64 one by a few 1e-6 here, and by up to 2e-4 on one CI run,
    so comparing two float32 results would test torch's rounding too)."""
    import copy
    hf64 = _HF64.get(id(hf))
    if hf64 is None:
        hf64 = _HF64[id(hf)] = (hf, copy.deepcopy(hf).double())
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return hf64[1](torch.tensor(ids), **kw).logits.numpy()


def _hf_generate(hf, ids, n, mask=None, **kw):
    kw.setdefault("pad_token_id", 0)
    if mask is not None:
        kw["attention_mask"] = torch.tensor(mask)
    with torch.no_grad():
        return hf.generate(torch.tensor(ids), max_new_tokens=n, do_sample=False, **kw).numpy()


# ---------------------------------------------------------------------------
# logits
# ---------------------------------------------------------------------------

def test_classes(pair):
    name, _, m, folder = pair
    assert isinstance(m, GPT2LMHeadModel if name.startswith("gpt2") else LlamaForCausalLM)
    assert type(m).from_pretrained(folder).model_type == m.model_type
    other = LlamaForCausalLM if name.startswith("gpt2") else GPT2LMHeadModel
    with pytest.raises(ValueError, match="does not load"):
        other.from_pretrained(folder)


def test_logits_single_prompt(pair):
    _, hf, m, _ = pair
    ids = _ids((1, 40))
    out = m(ids)
    assert out.shape == (1, 40, V) and out.dtype == np.float32
    ref = _hf_logits(hf, ids)
    assert np.abs(out - ref).max() <= 1e-4
    assert np.abs(m(ids[0]) - ref).max() <= 1e-4      # (T,) input


def test_logits_left_padded_batch(pair):
    _, hf, m, _ = pair
    ids, mask = _left_padded([30, 17, 5], 30)
    out = m(ids, mask)
    ref = _hf_logits(hf, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(out - ref)[valid].max() <= 1e-4


# ---------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------

def test_greedy_batch1(pair):
    _, hf, m, _ = pair
    ids = _ids((1, 9), seed=5)
    ref = _hf_generate(hf, ids, 32)
    got = m.generate(ids, 32)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)
    if got.shape[1] == 9 + 32:
        assert len(set(got[0, 9:].tolist())) > 2     # the test model is not degenerate


def test_greedy_batch3_different_lengths(pair):
    _, hf, m, _ = pair
    ids, mask = _left_padded([12, 7, 3], 12, seed=6)
    ref = _hf_generate(hf, ids, 32, mask)
    got = m.generate(ids, 32, attention_mask=mask, pad_token_id=0)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("pair", ["gpt2", "mistral-window"], indirect=True)
def test_stream_matches_generate(pair):
    _, _, m, _ = pair
    ids, mask = _left_padded([6, 4], 6, seed=7)
    full = m.generate(ids, 10, attention_mask=mask)
    steps = list(m.generate(ids, 10, attention_mask=mask, stream=True))
    assert all(s.shape == (2,) and s.dtype == np.int64 for s in steps)
    np.testing.assert_array_equal(np.stack(steps, axis=1), full[:, 6:])


def test_eos_stops_rows_like_transformers(llama, monkeypatch):
    hf, m, _ = llama
    ids, mask = _left_padded([10, 6, 8], 10, seed=8)
    free = m.generate(ids, 20, attention_mask=mask, eos_token_id=[])
    eos = int(free[1, 10 + 3])            # row 1 would produce it at step 4
    ref = _hf_generate(hf, ids, 20, mask, eos_token_id=eos, pad_token_id=1)
    rows = []
    run = m._run
    monkeypatch.setattr(m, "_run", lambda ids, *a, **k: rows.append(ids.shape[0]) or run(ids, *a, **k))
    from fastattn.models._decode_plan import DecodePlan      # the decode steps
    step = DecodePlan.step
    monkeypatch.setattr(DecodePlan, "step",
                        lambda self, ids, *a: rows.append(ids.shape[0]) or step(self, ids, *a))
    got = m.generate(ids, 20, attention_mask=mask, eos_token_id=eos, pad_token_id=1)
    np.testing.assert_array_equal(got, ref)
    finished = (got[:, 10:] == eos).any(axis=1)
    assert finished[1]
    # a finished sequence is dropped from the batch: later steps run fewer rows
    assert rows[0] == 3
    assert min(rows) < 3 or got.shape[1] == 10 + 4     # (unless all stopped at once)
    # every sequence finished -> generation ends early, like transformers
    one = m.generate(ids[1:2], 20, attention_mask=mask[1:2], eos_token_id=eos)
    assert one.shape[1] < 30 and one[0, -1] == eos


@pytest.mark.parametrize("pair", ["gpt2", "qwen2"], indirect=True)
def test_repetition_penalty_greedy(pair):
    _, hf, m, _ = pair
    ids = _ids((1, 8), seed=9)
    ref = _hf_generate(hf, ids, 24, repetition_penalty=1.5)
    got = m.generate(ids, 24, repetition_penalty=1.5, pad_token_id=0)
    np.testing.assert_array_equal(got, ref)


def test_incremental_equals_full_recompute(llama):
    _, m, _ = llama
    ids = _ids((2, 20), seed=10)
    mask = np.ones((2, 20), dtype=np.int64)
    mask[1, :4] = 0
    full = m(ids, mask)
    cache = m.new_cache(2, 24)
    parts = [m(ids[:, :8], mask[:, :8], cache=cache)]
    for t in range(8, 17):
        parts.append(m(ids[:, t:t + 1], mask[:, :t + 1], cache=cache))
    parts.append(m(ids[:, 17:], mask, cache=cache))
    assert cache.length == 20
    inc = np.concatenate(parts, axis=1)
    assert np.abs(inc - full)[mask.astype(bool)].max() <= 1e-4
    with pytest.raises(ValueError, match="overflow"):
        m(ids[:, :5], cache=cache)


@pytest.mark.parametrize("pair", ["gpt2-layer-scale", "llama-yarn-tied"], indirect=True)
def test_generate_equals_argmax_of_full_forward(pair):
    _, _, m, _ = pair
    ids = _ids((1, 6), seed=11)
    got = m.generate(ids, 8)
    full = m(got)
    np.testing.assert_array_equal(full[0, 5:-1].argmax(-1), got[0, 6:])


def test_sampling_reproducible_and_top_k_1_is_greedy(llama):
    _, m, _ = llama
    ids, mask = _left_padded([7, 4], 7, seed=12)
    a = m.generate(ids, 16, attention_mask=mask, do_sample=True, seed=123, temperature=1.3,
                   top_p=0.9, eos_token_id=[])
    b = m.generate(ids, 16, attention_mask=mask, do_sample=True, seed=123, temperature=1.3,
                   top_p=0.9, eos_token_id=[])
    c = m.generate(ids, 16, attention_mask=mask, do_sample=True, seed=124, temperature=1.3,
                   top_p=0.9, eos_token_id=[])
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    greedy = m.generate(ids, 16, attention_mask=mask, eos_token_id=[])
    k1 = m.generate(ids, 16, attention_mask=mask, do_sample=True, top_k=1, seed=5,
                    temperature=2.0, eos_token_id=[])
    np.testing.assert_array_equal(k1, greedy)
    assert (a != greedy).any()


def test_processed_scores_match_transformers_warpers():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper)
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((4, 50)) * 3).astype(np.float32)
    seq = rng.integers(0, 50, (4, 12))
    for temp, k, p, rep in [(0.7, 10, None, None), (1.0, None, 0.8, 1.3),
                            (1.5, 5, 0.5, 0.8), (1.0, None, 0.05, None)]:
        o = dict(do_sample=True, temperature=temp, top_k=k, top_p=p, rep=rep)
        ours = CausalLM._process_scores(logits, seq, o)
        s, ti = torch.tensor(logits), torch.tensor(seq)
        if rep is not None:
            s = RepetitionPenaltyLogitsProcessor(rep)(ti, s)
        s = TemperatureLogitsWarper(temp)(ti, s)
        if k is not None:
            s = TopKLogitsWarper(k)(ti, s)
        if p is not None:
            s = TopPLogitsWarper(p)(ti, s)
        ref = s.numpy().astype(np.float64)
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(ours[fin], ref[fin], rtol=1e-6)


def test_sampling_follows_the_distribution():
    rng = np.random.default_rng(1)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    o = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, rep=None, rng=rng)
    draws = np.array([CausalLM._next_tokens(logits, np.zeros((1, 1), np.int64), o)[0]
                      for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    o["top_k"] = 2
    draws = {int(CausalLM._next_tokens(logits, np.zeros((1, 1), np.int64), o)[0])
             for _ in range(300)}
    assert draws == {0, 1}


# ---------------------------------------------------------------------------
# checkpoints: sharded, bf16, unknown tensors
# ---------------------------------------------------------------------------

def test_sharded_checkpoint(tmp_path):
    hf = _build(CONFIGS["qwen2"](), tmp_path, seed=4, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    m = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = _ids((1, 12))
    assert np.abs(m(ids) - _hf_logits(hf, ids)).max() <= 1e-4


def test_bf16_checkpoint(tmp_path):
    hf = _build(CONFIGS["llama-gqa-headdim"](), tmp_path / "f32", seed=5)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
    # the bf16-rounded weights in float32 (a fresh model: .float() would keep
    # the rotary table rounded to bf16 too)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16",
                                                          dtype=torch.float32).eval()
    import safetensors
    with safetensors.safe_open(str(tmp_path / "bf16" / "model.safetensors"), "np") as f:
        assert f.get_slice("lm_head.weight").get_dtype() == "BF16"
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    ids = _ids((1, 12))
    assert np.abs(m(ids) - _hf_logits(hf, ids)).max() <= 1e-4


def test_float64(llama):
    hf, m, folder = llama
    m64 = AutoModelForCausalLM.from_pretrained(folder, dtype="float64")
    ids = _ids((1, 10))
    out = m64(ids)
    assert out.dtype == np.float64
    assert np.abs(out - m(ids)).max() <= 1e-4


def _copy_folder(src, dst, config_edit=None):
    import shutil
    shutil.copytree(src, dst)
    if config_edit is not None:
        p = os.path.join(dst, "config.json")
        with open(p) as f:
            c = json.load(f)
        config_edit(c)
        with open(p, "w") as f:
            json.dump(c, f)
    return dst


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def test_folder_errors(tmp_path, llama):
    _, _, folder = llama
    with pytest.raises(ValueError, match="does not exist"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="no model.safetensors.*pickle"):
        AutoModelForCausalLM.from_pretrained(d)
    with pytest.raises(ValueError, match="dtype"):
        AutoModelForCausalLM.from_pretrained(folder, dtype="float16")


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(model_type="bert"), "model_type = 'bert'"),
    (lambda c: c.update(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}),
     "rope_type = 'longrope'"),
    (lambda c: c.update(rope_parameters={"rope_type": "linear", "rope_theta": 1e4}),
     "factor = None"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act = 'gelu'"),
    (lambda c: c.update(num_key_value_heads=3), "num_key_value_heads"),
    (lambda c: c.update(num_hidden_layers=3), "no tensor 'model.layers.2"),
    (lambda c: c.update(intermediate_size=50), "shape"),
])
def test_config_errors(tmp_path, llama, edit, match):
    _, _, folder = llama
    d = _copy_folder(folder, tmp_path / "m", edit)
    with pytest.raises(ValueError, match=match):
        AutoModelForCausalLM.from_pretrained(d)


def test_gpt2_config_errors(tmp_path):
    folder = tmp_path / "g"
    _build(CONFIGS["gpt2"](), folder)
    d = _copy_folder(folder, tmp_path / "g2", lambda c: c.update(activation_function="quick_gelu"))
    with pytest.raises(ValueError, match="activation_function = 'quick_gelu'"):
        AutoModelForCausalLM.from_pretrained(d)
    d = _copy_folder(folder, tmp_path / "g3", lambda c: c.update(add_cross_attention=True))
    with pytest.raises(ValueError, match="add_cross_attention"):
        AutoModelForCausalLM.from_pretrained(d)


def test_unknown_tensor_is_an_error(tmp_path, llama):
    from safetensors.numpy import load_file, save_file
    _, _, folder = llama
    d = _copy_folder(folder, tmp_path / "m")
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.0.self_attn.q_norm.weight"] = np.ones(24, np.float32)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="q_norm"):
        AutoModelForCausalLM.from_pretrained(d)


def test_input_errors(llama):
    _, m, _ = llama
    ids = _ids((1, 5))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m(np.array([[1, V]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.generate(np.array([[-1, 3]]), 2)
    with pytest.raises(TypeError, match="integer token ids"):
        m(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="at least one token"):
        m(np.zeros((1, 0), np.int64))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        m(ids, np.ones((1, 4)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        m(ids, np.full((1, 5), 2))
    with pytest.raises(ValueError, match="all zeros"):
        m(ids, np.zeros((1, 5)))
    with pytest.raises(ValueError, match="max_position_embeddings = 96"):
        m.generate(ids, 92)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m(_ids((1, 97)))
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(ids, -1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(ids, 2.0)
    with pytest.raises(ValueError, match="left padding"):
        m.generate(ids, 2, attention_mask=[[1, 1, 0, 1, 1]])
    for kw, match in [({"temperature": 0.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                      ({"top_k": 0}, "top_k"), ({"top_k": 1.5}, "top_k"),
                      ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                      ({"repetition_penalty": 0.0}, "repetition_penalty"),
                      ({"seed": -1}, "seed"), ({"seed": "x"}, "seed"),
                      ({"eos_token_id": V}, "eos_token_id"), ({"eos_token_id": "a"}, "eos_token_id")]:
        with pytest.raises(ValueError, match=match):
            m.generate(ids, 2, do_sample=True, **kw)
    with pytest.raises(ValueError, match="temperature"):   # checked before any work,
        m.generate(ids, 2, stream=True, temperature=-1.0)  # even when streaming
    assert m.generate(ids, 0).tolist() == ids.tolist()


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    folder = tmp_path_factory.mktemp("cli")
    _build(_small("llama", num_key_value_heads=2, eos_token_id=None, bos_token_id=None),
           folder, seed=9)
    vocab = {f"w{i}": i for i in range(V)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tk.save(str(folder / "tokenizer.json"))
    return folder


def test_cli_generate(cli_folder, capsys):
    from fastattn.__main__ import main
    m = AutoModelForCausalLM.from_pretrained(cli_folder)
    want = m.generate([[5, 17, 9]], 8)[0, 3:]
    rc = main(["generate", "--model", str(cli_folder), "w5 w17 w9", "--max-new-tokens", "8"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == " ".join(f"w{t}" for t in want)
    assert "prefill: 3 tokens" in cap.err and "decode: 7 tokens" in cap.err
    assert "tokens/s" in cap.err
    outs = []
    for _ in range(2):
        rc = main(["generate", "--model", str(cli_folder), "w5 w17", "--max-new-tokens", "6",
                   "--temperature", "0.8", "--seed", "3"])
        outs.append(capsys.readouterr().out)
        assert rc == 0
    assert outs[0] == outs[1] and len(outs[0].split()) == 6


def test_cli_errors(cli_folder, tmp_path, capsys):
    from fastattn.__main__ import main
    assert main(["generate", "--model", str(tmp_path), "w1"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    assert main(["generate", "--model", str(cli_folder), "w1", "--max-new-tokens", "500"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert main(["generate", "--model", str(cli_folder), "w1", "--temperature", "-1"]) == 2
