"""Tiny random-weight model folders written with NumPy and safetensors only
(no torch, no transformers), for the hardening and server-load tests.

Every builder returns ``(config dict, {tensor name: array})`` for one
model_type; :func:`write_folder` saves such a pair as a Hugging Face folder
(``config.json`` + ``model.safetensors``), and :func:`write_sentence_folder`
adds a WordPiece ``tokenizer.json`` and the sentence-transformers module
files.  The weights are random but O(1)-scaled, so outputs are finite and
differ between tokens.  Correctness against transformers is tested
elsewhere (test_models_encoder.py, test_models_decoder.py); here only the
file layout matters, and that it loads.
"""
import json
import os

import numpy as np

VOCAB = 64


def _w(rng, *shape, scale=None):
    s = (1.0 / np.sqrt(shape[-1])) if scale is None else scale
    return (rng.standard_normal(shape) * s).astype(np.float32)


def _norm(rng, t, name, E, bias=True, w="weight", b="bias"):
    t[f"{name}.{w}"] = (1 + 0.1 * rng.standard_normal(E)).astype(np.float32)
    if bias:
        t[f"{name}.{b}"] = (0.1 * rng.standard_normal(E)).astype(np.float32)


def _linear(rng, t, name, n_out, n_in, bias=True):
    t[name + ".weight"] = _w(rng, n_out, n_in)
    if bias:
        t[name + ".bias"] = (0.1 * rng.standard_normal(n_out)).astype(np.float32)


def bert(model_type="bert", seed=0, V=VOCAB, E=16, L=2, H=2, I=24, P=40):
    rng = np.random.default_rng(seed)
    roberta = model_type in ("roberta", "xlm-roberta", "camembert")
    T = 1 if roberta else 2
    cfg = dict(model_type=model_type, vocab_size=V, hidden_size=E, num_hidden_layers=L,
               num_attention_heads=H, intermediate_size=I, max_position_embeddings=P,
               type_vocab_size=T, hidden_act="gelu", layer_norm_eps=1e-12,
               pad_token_id=1 if roberta else 0)
    t = {}
    t["embeddings.word_embeddings.weight"] = _w(rng, V, E, scale=1.0)
    t["embeddings.position_embeddings.weight"] = _w(rng, P, E, scale=0.5)
    t["embeddings.token_type_embeddings.weight"] = _w(rng, T, E, scale=0.5)
    _norm(rng, t, "embeddings.LayerNorm", E)
    for i in range(L):
        p = f"encoder.layer.{i}."
        for r in ("query", "key", "value"):
            _linear(rng, t, p + "attention.self." + r, E, E)
        _linear(rng, t, p + "attention.output.dense", E, E)
        _norm(rng, t, p + "attention.output.LayerNorm", E)
        _linear(rng, t, p + "intermediate.dense", I, E)
        _linear(rng, t, p + "output.dense", E, I)
        _norm(rng, t, p + "output.LayerNorm", E)
    return cfg, t


def distilbert(seed=0, V=VOCAB, E=16, L=2, H=2, I=24, P=40):
    rng = np.random.default_rng(seed)
    cfg = dict(model_type="distilbert", vocab_size=V, dim=E, n_layers=L, n_heads=H,
               hidden_dim=I, max_position_embeddings=P, activation="gelu", pad_token_id=0)
    t = {}
    t["embeddings.word_embeddings.weight"] = _w(rng, V, E, scale=1.0)
    t["embeddings.position_embeddings.weight"] = _w(rng, P, E, scale=0.5)
    _norm(rng, t, "embeddings.LayerNorm", E)
    for i in range(L):
        p = f"transformer.layer.{i}."
        for r in ("q_lin", "k_lin", "v_lin", "out_lin"):
            _linear(rng, t, p + "attention." + r, E, E)
        _norm(rng, t, p + "sa_layer_norm", E)
        _linear(rng, t, p + "ffn.lin1", I, E)
        _linear(rng, t, p + "ffn.lin2", E, I)
        _norm(rng, t, p + "output_layer_norm", E)
    return cfg, t


def gpt2(seed=0, V=VOCAB, E=16, L=2, H=2, P=48):
    rng = np.random.default_rng(seed)
    F = 4 * E
    cfg = dict(model_type="gpt2", vocab_size=V, n_embd=E, n_layer=L, n_head=H,
               n_positions=P, activation_function="gelu_new", layer_norm_epsilon=1e-5,
               eos_token_id=None, bos_token_id=None)
    t = {"wte.weight": _w(rng, V, E, scale=1.0), "wpe.weight": _w(rng, P, E, scale=0.5)}
    for i in range(L):
        p = f"h.{i}."
        _norm(rng, t, p + "ln_1", E)
        t[p + "attn.c_attn.weight"] = _w(rng, E, 3 * E, scale=E ** -0.5)   # Conv1D [in, out]
        t[p + "attn.c_attn.bias"] = (0.1 * rng.standard_normal(3 * E)).astype(np.float32)
        t[p + "attn.c_proj.weight"] = _w(rng, E, E)
        t[p + "attn.c_proj.bias"] = (0.1 * rng.standard_normal(E)).astype(np.float32)
        _norm(rng, t, p + "ln_2", E)
        t[p + "mlp.c_fc.weight"] = _w(rng, E, F, scale=E ** -0.5)
        t[p + "mlp.c_fc.bias"] = (0.1 * rng.standard_normal(F)).astype(np.float32)
        t[p + "mlp.c_proj.weight"] = _w(rng, F, E, scale=F ** -0.5)
        t[p + "mlp.c_proj.bias"] = (0.1 * rng.standard_normal(E)).astype(np.float32)
    _norm(rng, t, "ln_f", E)
    return cfg, t


def llama(model_type="llama", seed=0, V=VOCAB, E=16, L=2, H=4, Hkv=2, I=24, P=48):
    rng = np.random.default_rng(seed)
    D = E // H
    cfg = dict(model_type=model_type, vocab_size=V, hidden_size=E, num_hidden_layers=L,
               num_attention_heads=H, num_key_value_heads=Hkv, intermediate_size=I,
               max_position_embeddings=P, rms_norm_eps=1e-6, hidden_act="silu",
               rope_theta=10000.0, tie_word_embeddings=False, eos_token_id=None,
               bos_token_id=None)
    if model_type == "mistral":
        cfg["sliding_window"] = 8
    t = {"model.embed_tokens.weight": _w(rng, V, E, scale=1.0)}
    for i in range(L):
        p = f"model.layers.{i}."
        _norm(rng, t, p + "input_layernorm", E, bias=False)
        _linear(rng, t, p + "self_attn.q_proj", H * D, E, bias=model_type == "qwen2")
        _linear(rng, t, p + "self_attn.k_proj", Hkv * D, E, bias=model_type == "qwen2")
        _linear(rng, t, p + "self_attn.v_proj", Hkv * D, E, bias=model_type == "qwen2")
        _linear(rng, t, p + "self_attn.o_proj", E, H * D, bias=False)
        _norm(rng, t, p + "post_attention_layernorm", E, bias=False)
        _linear(rng, t, p + "mlp.gate_proj", I, E, bias=False)
        _linear(rng, t, p + "mlp.up_proj", I, E, bias=False)
        _linear(rng, t, p + "mlp.down_proj", E, I, bias=False)
    _norm(rng, t, "model.norm", E, bias=False)
    t["lm_head.weight"] = _w(rng, V, E)
    return cfg, t


#: model_type -> builder() for every supported encoder and decoder type
ENCODERS = {
    "bert": lambda **k: bert("bert", **k),
    "roberta": lambda **k: bert("roberta", **k),
    "xlm-roberta": lambda **k: bert("xlm-roberta", **k),
    "camembert": lambda **k: bert("camembert", **k),
    "distilbert": lambda **k: distilbert(**k),
}
DECODERS = {
    "gpt2": lambda **k: gpt2(**k),
    "llama": lambda **k: llama("llama", **k),
    "mistral": lambda **k: llama("mistral", **k),
    "qwen2": lambda **k: llama("qwen2", **k),
}


def write_folder(folder, cfg, tensors):
    from safetensors.numpy import save_file
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    return str(folder)


WORDS = ("the a is of and to in cat dog runs jumps over big small red blue green house "
         "tree car road city river sky sun moon hello world good bad").split()


def write_tokenizer(folder, vocab_size=VOCAB):
    """A WordPiece tokenizer.json (BERT normaliser and pre-tokenizer, [CLS] $A
    [SEP]) whose ids are all < ``vocab_size``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + \
        list("abcdefghijklmnopqrstuvwxyz.,!?")
    vocab = list(dict.fromkeys(vocab))[:vocab_size]
    v = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(v, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", v["[CLS]"]), ("[SEP]", v["[SEP]"])])
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    return path


def write_sentence_folder(folder, model_type="bert", max_seq_length=24, seed=0, **kw):
    """A sentence-transformers folder (Transformer at the root, mean
    Pooling, Normalize) around a tiny encoder of ``model_type``."""
    cfg, t = ENCODERS[model_type](seed=seed, **kw)
    write_folder(folder, cfg, t)
    write_tokenizer(folder)
    E = cfg.get("hidden_size", cfg.get("dim"))
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"}]
    with open(os.path.join(folder, "modules.json"), "w") as fh:
        json.dump(mods, fh)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as fh:
        json.dump({"word_embedding_dimension": E, "pooling_mode_mean_tokens": True}, fh)
    with open(os.path.join(folder, "sentence_bert_config.json"), "w") as fh:
        json.dump({"max_seq_length": max_seq_length, "do_lower_case": False}, fh)
    return str(folder)
