"""Hostile checkpoint folders and inputs for every encoder and decoder type.

The folders are written here (``_tiny_models``: NumPy + safetensors, no
torch) and then broken one way at a time: config.json sizes that are
negative, zero, absurd or not integers, heads that do not divide, unknown
activations and RoPE settings, config files that are not JSON, not objects,
deeply nested or huge, tensors missing / extra / mis-shaped / of the wrong
dtype / NaN / of another model type, corrupt safetensors files, shard
indexes that point outside the folder or at missing shards, tokenizer files
that are not JSON or are truncated, token ids out of range, 10 MB strings,
bad ``max_new_tokens`` and empty inputs.  Each must raise ValueError /
TypeError / FileNotFoundError naming the file or the field, and do so
without allocating more than a small multiple of the checkpoint's own size
(traced with tracemalloc, and resident memory checked with psutil).
"""
import json
import os
import shutil
import time
import tracemalloc
import types

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("safetensors", reason="the model loaders read safetensors files")

from safetensors.numpy import save_file  # noqa: E402

import _tiny_models as tm  # noqa: E402
from fastattn.models import AutoModel, AutoModelForCausalLM  # noqa: E402

ALL = {**tm.ENCODERS, **tm.DECODERS}
ERRORS = (ValueError, TypeError, FileNotFoundError)
# Under tools/sanitize.sh: ASan's quarantine keeps freed memory resident (so
# RSS is no measure there; tracemalloc's peak still is) and everything is
# slower.
SANITIZED = os.environ.get("FASTATTN_SANITIZED") == "1"
SLOWDOWN = 5.0 if SANITIZED else 1.0


def _load(mt, folder):
    return (AutoModel if mt in tm.ENCODERS else AutoModelForCausalLM).from_pretrained(folder)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """model_type -> (folder, config, tensors) of a valid tiny checkpoint."""
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for mt, build in ALL.items():
        cfg, t = build()
        out[mt] = (tm.write_folder(str(root / mt), cfg, t), cfg, t)
        _load(mt, out[mt][0])          # the unbroken folder loads
    return out


def _variant(base, dest, config=None, tensors=None, files=None):
    """A copy of ``base``: ``config`` {field: value} edits (``...`` deletes),
    ``tensors`` {name: array or None (delete)}, ``files`` {name: bytes/str or
    None (delete)} written last."""
    folder, cfg, t = base
    os.makedirs(dest)
    cfg = dict(cfg)
    for k, v in (config or {}).items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(os.path.join(dest, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    if tensors is None:
        os.symlink(os.path.join(folder, "model.safetensors"),
                   os.path.join(dest, "model.safetensors"))
    else:
        t = dict(t)
        for k, v in tensors.items():
            if v is None:
                t.pop(k)
            else:
                t[k] = v
        save_file(t, os.path.join(dest, "model.safetensors"))
    for name, content in (files or {}).items():
        p = os.path.join(dest, name)
        if os.path.lexists(p):
            os.remove(p)            # never write through the symlink to the base
        if content is not None:
            with open(p, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else content)
    return str(dest)


def _rss():
    if SANITIZED:
        return 0
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss


def _raises_bounded(fn, match=(), budget=8 << 20, exc=ERRORS, seconds=10.0):
    """``fn()`` raises one of ``exc`` whose message holds every string of
    ``match``, within ``seconds``, with at most ``budget`` bytes of traced
    allocations at the peak and resident memory grown by less than
    ``budget`` + 32 MiB.  Returns the exception."""
    r0 = _rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(exc) as e:
            fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    dt = (time.perf_counter() - t0) / SLOWDOWN
    msg = str(e.value)
    for m in ((match,) if isinstance(match, str) else match):
        assert m in msg, f"{m!r} not in the error message: {msg}"
    assert peak <= budget, f"{peak / 2**20:.1f} MiB allocated before failing: {msg}"
    grown = _rss() - r0
    assert grown <= budget + (32 << 20), f"RSS grew {grown / 2**20:.1f} MiB: {msg}"
    assert dt <= seconds, f"took {dt:.1f} s to fail: {msg}"
    return e.value


# ---------------------------------------------------------------------------
# config.json sizes
# ---------------------------------------------------------------------------

SIZE_FIELDS = {
    "bert": ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "type_vocab_size"],
    "distilbert": ["vocab_size", "dim", "n_layers", "n_heads", "hidden_dim",
                   "max_position_embeddings"],
    "gpt2": ["vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "n_inner"],
    "llama": ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "intermediate_size", "head_dim"],
}
for _mt in ("roberta", "xlm-roberta", "camembert"):
    SIZE_FIELDS[_mt] = SIZE_FIELDS["bert"]
for _mt in ("mistral", "qwen2"):
    SIZE_FIELDS[_mt] = SIZE_FIELDS["llama"]
# fields whose null means "use the default", which is valid
NULL_OK = {"n_inner", "head_dim", "num_key_value_heads"}
BAD_SIZES = [-1, 0, 2**40, 10**9, 2**62, 2**64, 1.5, 16.0, "16", True, False, [16],
             {"n": 16}, None]
SIZE_CASES = [(mt, f, v) for mt, fs in SIZE_FIELDS.items() for f in fs for v in BAD_SIZES
              if not (v is None and f in NULL_OK)]


@pytest.mark.parametrize("mt, field, value", SIZE_CASES,
                         ids=[f"{m}-{f}-{v!r}"[:60] for m, f, v in SIZE_CASES])
def test_bad_size_field(bases, tmp_path, mt, field, value):
    folder = _variant(bases[mt], tmp_path / "m", config={field: value})
    e = _raises_bounded(lambda: _load(mt, folder), match=field)
    assert "config.json" in str(e)


@pytest.mark.parametrize("mt", sorted(ALL))
def test_absurd_sizes_rejected_before_allocating(bases, tmp_path, mt):
    """Every size absurd at once (a 2**40 hidden size, 10**9 layers, a 2**62
    vocabulary): rejected from the file sizes, nothing allocated."""
    fs = SIZE_FIELDS[mt]
    edit = {fs[0]: 2**62, fs[1]: 2**40, fs[2]: 10**9}
    folder = _variant(bases[mt], tmp_path / "m", config=edit)
    _raises_bounded(lambda: _load(mt, folder), match="config.json", budget=1 << 20)
    # 10**9 layers alone (the Llama loader used to build 10**9-entry lists first)
    folder = _variant(bases[mt], tmp_path / "l", config={fs[2]: 10**9})
    _raises_bounded(lambda: _load(mt, folder), match=(fs[2], "config.json"), budget=1 << 20)


@pytest.mark.parametrize("mt, edit, match", [
    ("bert", {"num_attention_heads": 3}, "num_attention_heads=3 does not divide hidden_size=16"),
    ("roberta", {"num_attention_heads": 5}, "num_attention_heads=5 does not divide"),
    ("distilbert", {"n_heads": 3}, "n_heads=3 does not divide dim=16"),
    ("gpt2", {"n_head": 3}, "n_embd (16) is not divisible by n_head (3)"),
    ("llama", {"num_attention_heads": 3, "num_key_value_heads": 1},
     "hidden_size (16) is not divisible by num_attention_heads (3)"),
    ("llama", {"num_key_value_heads": 3}, "num_key_value_heads (3)"),
    ("mistral", {"num_key_value_heads": 3}, "num_key_value_heads (3)"),
    ("qwen2", {"num_attention_heads": 4, "num_key_value_heads": 8}, "num_key_value_heads (8)"),
    ("llama", {"head_dim": 3}, "head_dim = 3 must be even"),
])
def test_heads_that_do_not_divide(bases, tmp_path, mt, edit, match):
    folder = _variant(bases[mt], tmp_path / "m", config=edit)
    _raises_bounded(lambda: _load(mt, folder), match=match)


ACT_FIELD = {"bert": "hidden_act", "roberta": "hidden_act", "xlm-roberta": "hidden_act",
             "camembert": "hidden_act", "distilbert": "activation",
             "gpt2": "activation_function", "llama": "hidden_act", "mistral": "hidden_act",
             "qwen2": "hidden_act"}


@pytest.mark.parametrize("mt", sorted(ALL))
@pytest.mark.parametrize("act", ["mish", "", "gelu ", 3, None, ["gelu"], "torch.nn.GELU"])
def test_unknown_activation(bases, tmp_path, mt, act):
    folder = _variant(bases[mt], tmp_path / "m", config={ACT_FIELD[mt]: act})
    _raises_bounded(lambda: _load(mt, folder), match=ACT_FIELD[mt])


@pytest.mark.parametrize("mt", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("edit, match", [
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope_type = 'longrope'"),
    ({"rope_scaling": {"type": "su"}}, "rope_type = 'su'"),
    ({"rope_scaling": {"rope_type": 7}}, "rope_type = 7"),
    ({"rope_scaling": "linear"}, "rope_scaling/rope_parameters"),
    ({"rope_scaling": [2.0]}, "rope_scaling/rope_parameters"),
    ({"rope_scaling": {"rope_type": "linear"}}, "factor = None"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -2.0}}, "factor = -2.0"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, "factor = '2'"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": float("inf")}}, "factor = inf"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": True}}, "factor = True"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "per-layer"),
    ({"rope_theta": -1.0}, "rope_theta = -1.0"),
    ({"rope_theta": "1e4"}, "rope_theta = '1e4'"),
    ({"rope_theta": False}, "rope_theta = False"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps"),
])
def test_unsupported_rope_and_norm_settings(bases, tmp_path, mt, edit, match):
    folder = _variant(bases[mt], tmp_path / "m", config=edit)
    _raises_bounded(lambda: _load(mt, folder), match=match)


@pytest.mark.parametrize("mt", sorted(ALL))
def test_other_config_fields(bases, tmp_path, mt):
    """Wrong model_type for the class, eps fields, pad ids, flags."""
    cases = [({"model_type": "t5"}, "model_type"), ({"model_type": None}, "model_type"),
             ({"model_type": ["bert"]}, "model_type")]
    if mt in tm.ENCODERS:
        cases += [({"pad_token_id": 10**9}, "pad_token_id"), ({"pad_token_id": -1}, "pad_token_id"),
                  ({"pad_token_id": "0"}, "pad_token_id")]
        if mt != "distilbert":
            cases += [({"layer_norm_eps": 0}, "layer_norm_eps"),
                      ({"layer_norm_eps": float("nan")}, "layer_norm_eps"),
                      ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
                      ({"is_decoder": True}, "is_decoder")]
    elif mt == "gpt2":
        cases += [({"layer_norm_epsilon": -1.0}, "layer_norm_epsilon"),
                  ({"add_cross_attention": True}, "add_cross_attention")]
    else:
        cases += [({"layer_types": ["full_attention"]}, "layer_types")] if mt == "qwen2" else []
        cases += [({"sliding_window": 0}, "sliding_window")] if mt == "mistral" else []
        cases += [({"sliding_window": 4}, "sliding_window")] if mt == "llama" else []
    for i, (edit, match) in enumerate(cases):
        folder = _variant(bases[mt], tmp_path / str(i), config=edit)
        _raises_bounded(lambda: _load(mt, folder), match=match)


# ---------------------------------------------------------------------------
# config.json that is not a config
# ---------------------------------------------------------------------------

BAD_CONFIG_FILES = {
    "not-json": ("{not json", "JSON"),
    "empty": ("", "JSON"),
    "truncated": ('{"model_type": "bert", "hidden_size": 1', "JSON"),
    "list": ("[1, 2]", "JSON object"),
    "string": ('"bert"', "JSON object"),
    "number": ("3", "JSON object"),
    "null": ("null", "JSON object"),
    "deeply-nested": ("[" * 200000, "JSON"),
    "not-utf8": (b"\xff\xfe{\x00", "JSON"),
}


@pytest.mark.parametrize("mt", sorted(ALL))
@pytest.mark.parametrize("kind", sorted(BAD_CONFIG_FILES))
def test_config_file_not_a_config(bases, tmp_path, mt, kind):
    content, match = BAD_CONFIG_FILES[kind]
    folder = _variant(bases[mt], tmp_path / "m", files={"config.json": content})
    _raises_bounded(lambda: _load(mt, folder), match=(match, "config.json"))


@pytest.mark.parametrize("mt", ["bert", "distilbert", "gpt2", "llama"])
def test_huge_config_file_not_parsed(bases, tmp_path, mt):
    """A 17 MiB config.json is refused from its size, before parsing."""
    cfg = dict(bases[mt][1], junk="x" * (17 << 20))
    folder = _variant(bases[mt], tmp_path / "m", files={"config.json": json.dumps(cfg)})
    _raises_bounded(lambda: _load(mt, folder), match=("config.json", "bytes"), budget=1 << 20)


def test_huge_generation_config_and_index_not_parsed(bases, tmp_path):
    folder = _variant(bases["llama"], tmp_path / "g",
                      files={"generation_config.json": "[" + " " * (17 << 20) + "]"})
    _raises_bounded(lambda: _load("llama", folder), match="generation_config.json",
                    budget=1 << 20)
    for mt in ("bert", "gpt2"):
        folder = _variant(bases[mt], tmp_path / mt, files={
            "model.safetensors": None,
            "model.safetensors.index.json": '{"weight_map": {}}' + " " * (17 << 20)})
        _raises_bounded(lambda: _load(mt, folder), match="model.safetensors.index.json",
                        budget=1 << 20)


# ---------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------

def _some_layer_tensor(t):
    """A 2-D weight of the second layer (present in every type)."""
    return sorted(k for k, v in t.items() if ".1." in k and v.ndim == 2)[0]


@pytest.mark.parametrize("mt", sorted(ALL))
def test_tensor_missing_misshaped_wrong_dtype_nan(bases, tmp_path, mt):
    _, _, t = bases[mt]
    name = _some_layer_tensor(t)
    a = t[name]
    cases = [
        (None, ("tensor", name)),                                   # missing
        (a[:-1], (name, "shape")),                                  # mis-shaped
        (a.T.copy() if a.shape[0] != a.shape[1] else a[:, :-1], (name, "shape")),
        (a.reshape(-1), (name, "shape")),                           # flattened
        (a[None], (name, "shape")),                                 # extra axis
        (a.astype(np.int32), (name, "dtype")),
        (a.astype(np.int64), (name, "dtype")),
        (a.astype(np.uint8), (name, "dtype")),
        (a > 0, (name, "dtype")),
        (np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a).astype(np.float32),
         (name, "NaN")),
        (np.full_like(a, np.inf), (name, "infinite")),
    ]
    for i, (bad, match) in enumerate(cases):
        folder = _variant(bases[mt], tmp_path / str(i), tensors={name: bad})
        _raises_bounded(lambda: _load(mt, folder), match=match)
    # other float dtypes are converted, not refused
    for dt in (np.float16, np.float64):
        folder = _variant(bases[mt], tmp_path / np.dtype(dt).name,
                          tensors={name: a.astype(dt)})
        _load(mt, folder)


@pytest.mark.parametrize("mt", sorted(ALL))
def test_extra_tensors(bases, tmp_path, mt):
    """A layer beyond config.json's count is an error for every type (the
    model would silently be truncated); an unknown tensor is an error for
    the decoders (an unsupported variant); encoders ignore task heads."""
    _, cfg, t = bases[mt]
    lay = {"distilbert": "transformer.layer.", "gpt2": "h."}.get(
        mt, "model.layers." if mt in tm.DECODERS else "encoder.layer.")
    extra = {k.replace(lay + "1.", lay + "2."): v for k, v in t.items() if k.startswith(lay + "1.")}
    folder = _variant(bases[mt], tmp_path / "layer", tensors=extra)
    _raises_bounded(lambda: _load(mt, folder), match=lay + "2.")
    head = {"classifier.weight": np.ones((3, 16), np.float32)}
    folder = _variant(bases[mt], tmp_path / "head", tensors=head)
    if mt in tm.DECODERS:
        _raises_bounded(lambda: _load(mt, folder), match="classifier.weight")
    else:
        _load(mt, folder)


@pytest.mark.parametrize("mt", sorted(ALL))
def test_tensors_of_another_model_type(bases, tmp_path, mt):
    other = "llama" if mt in tm.ENCODERS or mt == "gpt2" else "bert"
    os.makedirs(tmp_path / "m")
    with open(tmp_path / "m" / "config.json", "w") as fh:
        json.dump(bases[mt][1], fh)
    save_file(bases[other][2], str(tmp_path / "m" / "model.safetensors"))
    _raises_bounded(lambda: _load(mt, str(tmp_path / "m")), match="checkpoint")


@pytest.mark.parametrize("mt", sorted(ALL))
def test_corrupt_safetensors_files(bases, tmp_path, mt):
    with open(os.path.join(bases[mt][0], "model.safetensors"), "rb") as fh:
        good = fh.read()
    bad = {
        "garbage": b"garbage",
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "header-only": good[:8 + int.from_bytes(good[:8], "little")],
        "huge-header-length": (2**60).to_bytes(8, "little") + good[8:],
        "header-not-json": (16).to_bytes(8, "little") + b"{not json at all" + good[24:],
    }
    for name, content in bad.items():
        folder = _variant(bases[mt], tmp_path / name, files={"model.safetensors": content})
        _raises_bounded(lambda: _load(mt, folder), match="model.safetensors")


# ---------------------------------------------------------------------------
# sharded checkpoints
# ---------------------------------------------------------------------------

def _sharded(base, dest, edit_map=None, drop_from_shard=None):
    """``base`` as two shards plus an index; ``edit_map(weight_map)`` edits
    the index; ``drop_from_shard``: a tensor listed but not stored."""
    folder, cfg, t = base
    os.makedirs(dest)
    with open(os.path.join(dest, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    names = sorted(t)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half],
             "model-00002-of-00002.safetensors": names[half:]}
    wm = {}
    for shard, ns in parts.items():
        save_file({n: t[n] for n in ns if n != drop_from_shard}, os.path.join(dest, shard))
        wm.update({n: shard for n in ns})
    if edit_map is not None:
        wm = edit_map(wm)
    with open(os.path.join(dest, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": wm}, fh)
    return str(dest), names


@pytest.mark.parametrize("mt", sorted(ALL))
def test_sharded_index_hostile(bases, tmp_path, mt):
    outside = tmp_path / "outside.safetensors"
    save_file(bases[mt][2], str(outside))       # a valid file, outside the folder
    folder, names = _sharded(bases[mt], tmp_path / "ok")
    _load(mt, folder)
    first = names[0]
    edits = {
        "dotdot": (lambda wm: {**wm, first: "../outside.safetensors"}, "../outside.safetensors"),
        "absolute": (lambda wm: {**wm, first: str(outside)}, str(outside)),
        "subdir": (lambda wm: {**wm, first: "sub/model.safetensors"}, "sub/model.safetensors"),
        "dot": (lambda wm: {**wm, first: "."}, "'.'"),
        "empty-name": (lambda wm: {**wm, first: ""}, "''"),
        "missing-shard": (lambda wm: {**wm, first: "model-00003-of-00003.safetensors"},
                          "model-00003-of-00003.safetensors"),
        "not-a-string": (lambda wm: {**wm, first: 3}, "weight_map" if mt in tm.ENCODERS else "3"),
        "map-is-list": (lambda wm: list(wm), "weight_map"),
        "map-is-null": (lambda wm: None, "weight_map"),
    }
    for name, (edit, match) in edits.items():
        folder, _ = _sharded(bases[mt], tmp_path / name, edit_map=edit)
        _raises_bounded(lambda: _load(mt, folder),
                        match=(match, "model.safetensors.index.json"))
    # listed in the index, absent from its shard
    folder, _ = _sharded(bases[mt], tmp_path / "absent", drop_from_shard=names[-1])
    _raises_bounded(lambda: _load(mt, folder), match=(names[-1], "model-00002-of-00002"))
    # a shard that is not a safetensors file
    folder, _ = _sharded(bases[mt], tmp_path / "corrupt")
    with open(os.path.join(folder, "model-00002-of-00002.safetensors"), "wb") as fh:
        fh.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    _raises_bounded(lambda: _load(mt, folder), match="model-00002-of-00002.safetensors")
    for name, content in (("index-not-json", "{"), ("index-list", "[]"),
                          ("index-deep", "[" * 200000)):
        folder = _variant(bases[mt], tmp_path / name, files={
            "model.safetensors": None, "model.safetensors.index.json": content})
        _raises_bounded(lambda: _load(mt, folder), match="model.safetensors.index.json")


# ---------------------------------------------------------------------------
# token ids, prompts and generation arguments
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(bases):
    return {mt: _load(mt, bases[mt][0]) for mt in ALL}


BAD_IDS = [(-1, ValueError), (tm.VOCAB, ValueError), (2**62, ValueError),
           (-2**63, ValueError)]


@pytest.mark.parametrize("mt", sorted(tm.ENCODERS))
def test_encoder_ids_out_of_range(models, mt):
    m = models[mt]
    for bad, exc in BAD_IDS:
        ids = np.array([[5, 6, 7], [8, bad, 9]], np.int64)
        _raises_bounded(lambda: m(ids), match="input_ids", exc=exc)
        _raises_bounded(lambda: m.forward_packed(ids.reshape(-1), [0, 3, 6]),
                        match="input_ids", exc=exc)
    _raises_bounded(lambda: m(np.array([[5, 2**64 - 1]], np.uint64)), match="input_ids")
    for bad in (np.array([[1.0, 2.0]]), np.array([[True, False]]), [["a", "b"]], [[1, None]]):
        _raises_bounded(lambda: m(bad), match="input_ids")
    # empty inputs: an empty batch, empty sequences
    assert m(np.zeros((0, 4), np.int64)).shape == (0, 4, m.config.hidden_size)
    assert m(np.zeros((2, 0), np.int64)).shape == (2, 0, m.config.hidden_size)
    assert m.forward_packed([], [0]).shape == (0, m.config.hidden_size)


@pytest.mark.parametrize("mt", sorted(tm.DECODERS))
def test_decoder_ids_prompts_and_max_new_tokens(models, mt):
    m = models[mt]
    ok = np.array([[5, 6, 7]])
    for bad, exc in BAD_IDS:
        ids = np.array([[5, bad, 7]], np.int64)
        _raises_bounded(lambda: m(ids), match="input_ids", exc=exc)
        _raises_bounded(lambda: m.generate(ids, 2), match="input_ids", exc=exc)
    for bad in (np.array([[1.5, 2.0]]), np.array([[True, False]]), [["a"]], [[1, None]]):
        _raises_bounded(lambda: m.generate(bad, 2), match="input_ids")
    for empty in ([], [[]], np.zeros((1, 0), np.int64), np.zeros((0, 3), np.int64)):
        _raises_bounded(lambda: m.generate(empty, 2), match="input_ids")
        _raises_bounded(lambda: m(empty), match="input_ids")
    for bad in (-1, -2**62, 1.5, 2.0, "3", True, False, None, [2], np.float64(2.0)):
        _raises_bounded(lambda: m.generate(ok, bad), match="max_new_tokens")
    # more new tokens than positions: refused before the cache is allocated
    _raises_bounded(lambda: m.generate(ok, 2**62), match="max_new_tokens", budget=1 << 20)
    _raises_bounded(lambda: m.generate(ok, 10**9, stream=True), match="max_new_tokens",
                    budget=1 << 20)
    assert m.generate(ok, np.int64(2)).shape == (1, 5)
    assert m.generate(ok, 0).tolist() == ok.tolist()


@pytest.mark.parametrize("mt", sorted(tm.DECODERS))
def test_decoder_long_prompt_refused_quickly(models, mt):
    """Two million token ids (the ids of ~10 MB of text): refused from the
    position limit, in bounded time, without running the model."""
    m = models[mt]
    ids = np.full((1, 2_000_000), 5, np.int64)
    _raises_bounded(lambda: m(ids), match="position", budget=64 << 20, seconds=5)
    _raises_bounded(lambda: m.generate(ids, 1), match="max_new_tokens", budget=64 << 20,
                    seconds=5)


# ---------------------------------------------------------------------------
# SentenceEncoder: tokenizer files, 10 MB strings, empty inputs
# ---------------------------------------------------------------------------

tokenizers = pytest.importorskip("tokenizers", reason="SentenceEncoder tokenises with it")
from fastattn.models import SentenceEncoder  # noqa: E402


@pytest.fixture(scope="module")
def sentence_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentence")
    return {mt: tm.write_sentence_folder(str(root / mt), mt) for mt in tm.ENCODERS}


def _copy(src, dest, files):
    shutil.copytree(src, dest)
    for name, content in files.items():
        p = os.path.join(dest, name)
        if content is None:
            os.remove(p)
        else:
            with open(p, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else content)
    return str(dest)


@pytest.mark.parametrize("mt", sorted(tm.ENCODERS))
def test_tokenizer_file_hostile(sentence_folders, tmp_path, mt):
    src = sentence_folders[mt]
    with open(os.path.join(src, "tokenizer.json")) as fh:
        good = fh.read()
    j = json.loads(good)
    j["model"]["vocab"]["zzzz"] = tm.VOCAB + 5          # an id the model does not have
    cases = {
        "not-json": ("hello", "tokenizer.json"),
        "truncated": (good[: len(good) // 2], "tokenizer.json"),
        "truncated-early": (good[:10], "tokenizer.json"),
        "empty": ("", "tokenizer.json"),
        "list": ("[]", "tokenizer.json"),
        "object-not-tokenizer": ('{"a": 1}', "tokenizer.json"),
        "deep": ("[" * 200000, "tokenizer.json"),
        "not-utf8": (b"\xff\xfe\x00{", "tokenizer.json"),
        "id-beyond-vocab": (json.dumps(j), "vocab_size"),
    }
    for name, (content, match) in cases.items():
        folder = _copy(src, tmp_path / name, {"tokenizer.json": content})
        _raises_bounded(lambda: SentenceEncoder(folder), match=match)
    folder = _copy(src, tmp_path / "missing", {"tokenizer.json": None})
    _raises_bounded(lambda: SentenceEncoder(folder), match="tokenizer.json",
                    exc=FileNotFoundError)
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json"):
        for kind, content in (("nj", "{"), ("deep", "[" * 200000), ("huge", " " * (17 << 20))):
            folder = _copy(src, tmp_path / (name.replace("/", "_") + kind), {name: content})
            _raises_bounded(lambda: SentenceEncoder(folder), match=os.path.basename(name),
                            budget=1 << 20 if kind == "huge" else 8 << 20)


@pytest.fixture(scope="module")
def encoder(sentence_folders):
    return SentenceEncoder(sentence_folders["bert"])


TEN_MB = 10 << 20


def _bounded_ok(fn, seconds=10.0, budget=128 << 20):
    r0 = _rss()
    t0 = time.perf_counter()
    out = fn()
    dt = (time.perf_counter() - t0) / SLOWDOWN
    grown = _rss() - r0
    assert dt <= seconds, f"took {dt:.1f} s"
    assert grown <= budget, f"RSS grew {grown / 2**20:.0f} MiB"
    return out


@pytest.mark.parametrize("kind", ["words", "punctuation", "mixed", "cjk-punctuation"])
def test_ten_megabyte_string_is_truncated(encoder, kind):
    """10 MB in one string: truncated at max_seq_length tokens like a short
    prefix of it, in bounded time and memory, bit for bit."""
    rng = np.random.default_rng(0)
    if kind == "words":
        s = "the cat runs over the big red house " * (TEN_MB // 36)
    elif kind == "punctuation":
        s = "a." * (TEN_MB // 2)
    elif kind == "cjk-punctuation":      # no ASCII at all: split at the ideographic full stop
        s = "\u6f22\u5b57\u3002" * (TEN_MB // 3)
    else:                               # random letters and punctuation, no spaces
        s = rng.choice(np.frombuffer(b"abcdefgh.,!?", np.uint8), TEN_MB).tobytes().decode()
    assert len(s) >= TEN_MB - 64
    got = _bounded_ok(lambda: encoder.encode([s, "a"]))
    want = encoder.encode([s[:2000], "a"])
    np.testing.assert_array_equal(got, want)
    ids, lengths = encoder._tokenize([s[:2000]])
    assert lengths[0] == encoder.max_seq_length        # really truncated


@pytest.mark.parametrize("text", ["x", "\u6f22"])
def test_ten_megabyte_string_that_cannot_be_cut_raises(encoder, text):
    """10 MB with no split point of the pre-tokenizer (one 'word'):
    tokenising it whole would take tens of seconds and gigabytes, so it is
    a clear ValueError naming the sentence, in bounded time."""
    s = text * TEN_MB                   # 10 M characters (20 MB as a str for CJK)
    e = _raises_bounded(lambda: encoder.encode(["ok", s]), match=("sentence 1", "characters"),
                        budget=128 << 20, exc=ValueError)
    assert f"{len(s):,}" in str(e)
    # just below the limit it is tokenised whole and works
    n = encoder._max_chars()
    assert _bounded_ok(lambda: encoder.encode(text * n)).shape == (encoder.dim,)


def test_sentence_empty_and_odd_inputs(encoder):
    assert encoder.encode([]).shape == (0, encoder.dim)
    assert encoder.encode(()).shape == (0, encoder.dim)
    assert encoder.encode(iter([])).shape == (0, encoder.dim)
    e1 = encoder.encode("")
    np.testing.assert_array_equal(encoder.encode([""]), e1[None])
    np.testing.assert_array_equal(encoder.encode(["", "   "]), np.stack([e1, e1]))
    for bad in (None, b"bytes", 3, {"a": 1}):
        _raises_bounded(lambda: encoder.encode(bad), match="sentences", exc=TypeError)
    for bad in (0, -1, 1.5, True, "8", None):
        _raises_bounded(lambda: encoder.encode(["a"], batch_size=bad), match="batch_size")


def test_generate_cli_hostile_tokenizer(bases, tmp_path, capsys):
    """``fastattn generate``: a broken tokenizer.json is an error line and
    exit status 2, not a traceback."""
    from fastattn.models import _generate_cli
    for name, content in (("nj", "not json"), ("trunc", '{"version": "1.0", "model": {'),
                          ("deep", "[" * 200000)):
        folder = _variant(bases["llama"], tmp_path / name, files={"tokenizer.json": content})
        args = types.SimpleNamespace(model=folder, prompt="hello", max_new_tokens=2,
                                     temperature=0.0, top_k=None, top_p=None, seed=None)
        assert _generate_cli.run(args) == 2
        err = capsys.readouterr().err
        assert "tokenizer.json" in err and "Traceback" not in err
    folder = _variant(bases["llama"], tmp_path / "cfg", files={"config.json": "[" * 200000})
    tm.write_tokenizer(folder)
    args = types.SimpleNamespace(model=folder, prompt="hello", max_new_tokens=2,
                                 temperature=0.0, top_k=None, top_p=None, seed=None)
    assert _generate_cli.run(args) == 2
    assert "config.json" in capsys.readouterr().err
