"""BERT-family encoders (BERT, RoBERTa / XLM-R, DistilBERT) from Hugging Face
checkpoint folders, run padding-free.

Loading
-------
``AutoModel.from_pretrained(folder)`` reads ``config.json`` and the
safetensors weights (``model.safetensors`` or a sharded
``model.safetensors.index.json``), lazily and without executing code (see
:mod:`fastattn.models._encoder_files`), and returns the encoder class of the
config's ``model_type``.  Task checkpoints (``BertForSequenceClassification``
and friends) are accepted: their ``bert.`` / ``roberta.`` / ``distilbert.``
prefix is detected; heads, the pooler and buffers are not read.  The query,
key and value weights of every layer are concatenated once, at load, into one
``(3 * hidden, hidden)`` matrix.

Execution
---------
Everything runs on the real tokens only.  A padded batch is packed first
(the rows where ``attention_mask`` is 1, in order): the embeddings, every
projection, the feed-forward and the LayerNorms run on the ``sum(lengths)``
packed rows, and attention runs per sequence on views of the fused QKV
output (``fastattn.varlen_attention``).  Each block is::

    qkv = X Wqkv^T + bqkv                      (one GEMM)
    A   = attention per sequence               (q, k, v: views of qkv)
    X1  = LayerNorm(A Wo^T + bo + X)           (GEMM, one fused row pass)
    H   = act(X1 W1^T + b1)                    (GEMM, fused row pass)
    X   = LayerNorm(H W2^T + b2 + X1)          (GEMM, one fused row pass)

Batch invariance: a sequence's hidden states are **bit-identical** whether
it is encoded alone or in a batch with any others, in any order, at any
thread count, and between the padded call and :meth:`forward_packed`: no
padding enters any reduction, and every kernel used computes a row the same
way whatever the other rows are (see :mod:`fastattn.models._ops`).

Position ids (as in ``transformers``)
-------------------------------------
* BERT, DistilBERT: a token's column index in the padded input
  (``0, 1, 2, ...`` per row, counted over padding too, so a left-padded
  row's first real token has the position of its column); in
  :meth:`forward_packed`, ``0 .. len-1`` within each sequence.
* RoBERTa, XLM-R, CamemBERT: ``pad_token_id + 1, pad_token_id + 2, ...`` over the
  sequence's tokens whose id is not ``pad_token_id``; a token whose id is
  ``pad_token_id`` gets ``pad_token_id`` (transformers' ``cumsum(ids !=
  pad) * (ids != pad) + pad``).  Only the real (unmasked) tokens are
  counted, which is transformers' rule whenever the masked positions hold
  ``pad_token_id`` (what tokenizers produce) or come after the real tokens.
"""
import dataclasses
import functools
import numbers
import os

import numpy as np

from .._memory import WeightArena
from ..threads import for_rows as _for_rows
from . import _ops
from ._encoder_files import Checkpoint, ConfigReader, read_config
from ._validate import check_weight_budget

__all__ = ["EncoderConfig", "AutoModel", "BertModel", "RobertaModel",
           "DistilBertModel"]

# config.json activation name -> kernel activation
_ACTS = {
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu",
    "quick_gelu": "quick_gelu",
}


def _check_dtype(dtype):
    """float32 / float64 / bfloat16 (names or NumPy dtypes); anything else
    is a ValueError naming the allowed values (bfloat16 without ml_dtypes:
    ImportError with the install hint)."""
    return _ops.resolve_dtype(dtype)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """What an encoder was built from (read from ``config.json``).

    Attributes
    ----------
    model_type : str
        ``"bert"``, ``"roberta"``, ``"xlm-roberta"``, ``"camembert"`` or
        ``"distilbert"``.
    vocab_size, hidden_size, num_layers, num_heads, head_dim,
    intermediate_size, max_position_embeddings : int
    type_vocab_size : int
        0 for DistilBERT (no token types).
    hidden_act : str
        As written in ``config.json`` (``activation`` for DistilBERT).
    layer_norm_eps : float
    pad_token_id : int
    dtype : numpy.dtype
        The compute dtype: float32 or float64 (also the output dtype), or
        ``ml_dtypes.bfloat16`` (bf16 weights and GEMM inputs, float32
        residual stream, norms and accumulation; float32 output).
    """
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    pad_token_id: int
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    @property
    def bf16(self):
        """True for a ``dtype="bfloat16"`` model."""
        return _ops.is_bf16(self.dtype)

    @property
    def out_dtype(self):
        """The dtype of hidden states and of the weights read from the
        checkpoint before any bf16 packing: float32 for a bf16 model."""
        return np.dtype(np.float32) if self.bf16 else self.dtype

    # Hugging Face spellings
    @property
    def num_hidden_layers(self):
        return self.num_layers

    @property
    def num_attention_heads(self):
        return self.num_heads

    @property
    def heads(self):
        return self.num_heads

    @property
    def position_offset(self):
        """First position id of a sequence: ``pad_token_id + 1`` for
        RoBERTa / XLM-R, else 0."""
        return self.pad_token_id + 1 if self.model_type in _ROBERTA_TYPES else 0

    @property
    def max_tokens(self):
        """The longest sequence the position table allows."""
        return self.max_position_embeddings - self.position_offset


_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")


def _parse_bert_config(cfg, path, dtype):
    r = ConfigReader(cfg, path)
    mt = cfg.get("model_type")
    pet = cfg.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise ValueError(f"{path}: position_embedding_type={pet!r} is not supported "
                         f"(only 'absolute')")
    r.false("is_decoder")
    r.false("add_cross_attention")
    roberta = mt in _ROBERTA_TYPES
    pad = cfg.get("pad_token_id", 1 if roberta else 0)
    if pad is None and not roberta:
        pad = 0
    kw = dict(
        model_type=mt,
        vocab_size=r.pos_int("vocab_size"),
        hidden_size=r.pos_int("hidden_size"),
        num_layers=r.pos_int("num_hidden_layers"),
        num_heads=r.pos_int("num_attention_heads"),
        intermediate_size=r.pos_int("intermediate_size"),
        hidden_act=r.string("hidden_act", "gelu"),
        layer_norm_eps=r.pos_float("layer_norm_eps", 1e-12),
        max_position_embeddings=r.pos_int("max_position_embeddings", 512),
        type_vocab_size=r.pos_int("type_vocab_size", 1 if roberta else 2),
        pad_token_id=pad,
        dtype=dtype)
    return _finish_config(kw, path, ("hidden_size", "num_attention_heads",
                                     "hidden_act", "pad_token_id"))


def _parse_distilbert_config(cfg, path, dtype):
    r = ConfigReader(cfg, path)
    pad = cfg.get("pad_token_id", 0)
    kw = dict(
        model_type="distilbert",
        vocab_size=r.pos_int("vocab_size"),
        hidden_size=r.pos_int("dim"),
        num_layers=r.pos_int("n_layers"),
        num_heads=r.pos_int("n_heads"),
        intermediate_size=r.pos_int("hidden_dim"),
        hidden_act=r.string("activation", "gelu"),
        layer_norm_eps=1e-12,       # fixed in DistilBERT's modules
        max_position_embeddings=r.pos_int("max_position_embeddings", 512),
        type_vocab_size=0,
        pad_token_id=0 if pad is None else pad,
        dtype=dtype)
    return _finish_config(kw, path, ("dim", "n_heads", "activation", "pad_token_id"))


def _finish_config(kw, path, names):
    hidden, heads, act, pad = names
    if kw["hidden_size"] % kw["num_heads"]:
        raise ValueError(f"{path}: {heads}={kw['num_heads']} does not divide "
                         f"{hidden}={kw['hidden_size']}")
    if kw["hidden_act"] not in _ACTS:
        raise ValueError(f"{path}: {act}={kw['hidden_act']!r} is not supported; "
                         f"supported: {', '.join(sorted(_ACTS))}")
    p = kw["pad_token_id"]
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not 0 <= p < kw["vocab_size"]:
        raise ValueError(f"{path}: {pad} must be an integer in [0, vocab_size="
                         f"{kw['vocab_size']}), got {p!r}")
    kw["pad_token_id"] = int(p)
    cfg = EncoderConfig(**kw)
    if cfg.max_tokens < 1:
        raise ValueError(f"{path}: max_position_embeddings="
                         f"{cfg.max_position_embeddings} leaves no position for a "
                         f"token after the padding index {cfg.pad_token_id}")
    return cfg


def _load_config(folder, dtype):
    dt = _check_dtype(dtype)
    cfg = read_config(folder)
    path = os.path.join(os.fspath(folder), "config.json")
    mt = cfg.get("model_type")
    if mt in ("bert",) + _ROBERTA_TYPES:
        return _parse_bert_config(cfg, path, dt)
    if mt == "distilbert":
        return _parse_distilbert_config(cfg, path, dt)
    raise ValueError(f"{path}: model_type={mt!r} is not supported; supported: "
                     f"'bert', 'roberta', 'xlm-roberta', 'camembert', 'distilbert'")


# ---------------------------------------------------------------------------
# input checking
# ---------------------------------------------------------------------------

def _int_array(x, name, ndims):
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as e:  # ragged lists, odd objects
            raise TypeError(f"{name} could not be converted to an array: {e}") from None
    if x.dtype.kind not in "iu" and not (x.dtype.kind in "bf" and name == "attention_mask"):
        if x.size == 0 and x.dtype.kind == "f":   # [] / [[]] from a list
            x = x.astype(np.int64)
        else:
            raise TypeError(f"{name} must be an integer array, got dtype {x.dtype} "
                            f"(shape {x.shape})")
    if x.ndim not in ndims:
        raise ValueError(f"{name} must be {' or '.join(f'{d}-D' for d in ndims)}, "
                         f"got shape {x.shape}")
    return x


def _check_range(x, lo, hi, name, what, valid=None):
    """lo <= x < hi for every element (where ``valid``, if given), else a
    ValueError naming the first offending element."""
    if x.size == 0:
        return
    bad = (x < lo) | (x >= hi)
    if valid is not None:
        bad &= valid
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad.reshape(-1))), x.shape)
        where = i[0] if len(i) == 1 else tuple(int(j) for j in i)
        raise ValueError(f"{name}[{where}] = {int(x[i])} is out of range "
                         f"[{lo}, {hi}) ({what})")


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------

class _Encoder:
    """Shared implementation (see the module docstring)."""

    _model_types = ()
    _prefixes = ()

    def __init__(self, config, weights):
        self.config = config
        (self._word, self._pos, self._tt, self._ln_w, self._ln_b, self._layers) = weights
        self._act = _ACTS[config.hidden_act]
        self._scale = float(config.head_dim) ** -0.5

    # ---- loading ---------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder, dtype="float32"):
        """Load a Hugging Face checkpoint folder.

        Parameters
        ----------
        folder : str or os.PathLike
            Holds ``config.json`` and ``model.safetensors`` (or a sharded
            ``model.safetensors.index.json`` with its shards).
        dtype : "float32" (default), "float64" or "bfloat16"
            Compute and output dtype (weights stored in another float dtype
            are converted once, at load).  ``"bfloat16"`` (needs ml_dtypes)
            rounds the projection and feed-forward weights to bf16 and packs
            them once for the bf16 GEMM; the GEMMs' inputs are bf16, their
            accumulation, the residual stream, the LayerNorms and the
            softmax statistics float32, and the output is float32.
            Embedding tables, norm weights and biases stay float32.
        """
        config = _load_config(folder, dtype)
        if cls is not AutoModel and config.model_type not in cls._model_types:
            raise ValueError(f"{os.path.join(os.fspath(folder), 'config.json')}: "
                             f"model_type={config.model_type!r} is not a "
                             f"{cls.__name__} checkpoint; use "
                             f"fastattn.models.AutoModel.from_pretrained")
        klass = _CLASSES[config.model_type]
        _check_sizes_fit(folder, config)
        with Checkpoint(folder) as ck:
            weights = klass._read_weights(ck, config)
            _check_no_extra_layers(ck, klass, config)
        return klass(config, weights)

    @classmethod
    def _prefix(cls, ck):
        names = ck.names()
        probe = "embeddings.word_embeddings.weight"
        for p in ("",) + cls._prefixes:
            if p + probe in names:
                return p
        raise ValueError(f"{ck.folder}: no tensor {probe!r} (nor with a prefix "
                         f"{', '.join(repr(p) for p in cls._prefixes)}) in the "
                         f"checkpoint: not a {cls.__name__} checkpoint")

    @staticmethod
    def _norm(ck, name, E, dt):
        """LayerNorm weight and bias (old TF names: gamma / beta)."""
        w = ck.get(name + ".weight", (E,), dt, aliases=(name + ".gamma",))
        b = ck.get(name + ".bias", (E,), dt, aliases=(name + ".beta",))
        return w, b

    @classmethod
    def _read_embeddings(cls, ck, c, p):
        dt, E = c.out_dtype, c.hidden_size
        word = ck.get(p + "embeddings.word_embeddings.weight", (c.vocab_size, E), dt)
        pos = ck.get(p + "embeddings.position_embeddings.weight",
                     (c.max_position_embeddings, E), dt)
        tt = None
        if c.type_vocab_size:
            tt = ck.get(p + "embeddings.token_type_embeddings.weight",
                        (c.type_vocab_size, E), dt)
        w, b = cls._norm(ck, p + "embeddings.LayerNorm", E, dt)
        return word, pos, tt, w, b

    # ---- calling ---------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        """Encode a padded batch.

        Parameters
        ----------
        input_ids : int array_like, shape (B, L), or (L,) for one sequence
        attention_mask : int, bool or float array_like, same shape, optional
            1 (True) for real tokens, 0 for padding; default all ones.  Any
            pattern is allowed (left or right padding, holes).
        token_type_ids : int array_like, same shape, optional
            Default zeros.  DistilBERT has no token types: only None or
            zeros are accepted.

        Returns
        -------
        last_hidden_state : ndarray, shape (B, L, hidden_size)
            In the model's dtype (float32 by default; float32 for a
            bfloat16 model).  A 1-D input is one
            sequence and returns shape (1, L, hidden_size).  Rows at padding
            positions (mask 0) are zeros: they are not computed and carry no
            meaning (transformers puts arbitrary values there).

        ``input_ids`` and ``token_type_ids`` are checked at the real tokens
        only (values under mask 0 are ignored).
        """
        c = self.config
        ids = _int_array(input_ids, "input_ids", (1, 2))
        if ids.ndim == 1:
            ids = ids[None, :]
        B, L = ids.shape
        mask = None
        if attention_mask is not None:
            m = _like_ids(attention_mask, "attention_mask", ids)
            if m.dtype.kind != "b":
                if m.size and ((m != 0) & (m != 1)).any():
                    raise ValueError("attention_mask must hold only 0 and 1")
                m = m != 0
            if not m.all():
                mask = m
        tt = None
        if token_type_ids is not None:
            tt = _like_ids(token_type_ids, "token_type_ids", ids)
        self._check_tokens(ids, tt, mask)
        if mask is None:
            flat = ids.reshape(-1)
            col = np.tile(np.arange(L, dtype=np.intp), B)
            lengths = np.full(B, L, dtype=np.int64)
            sel = None
        else:
            sel = np.flatnonzero(mask.reshape(-1))
            flat = ids.reshape(-1)[sel]
            col = sel % L if L else sel
            lengths = np.count_nonzero(mask, axis=1).astype(np.int64)
        cu = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        if tt is not None:
            tt = tt.reshape(-1) if sel is None else tt.reshape(-1)[sel]
        flat, tt = self._as_index(flat, tt)
        if c.model_type in _ROBERTA_TYPES:
            pos = self._roberta_positions(flat, cu)
        else:
            pos = col
        self._check_positions(pos, cu)
        h = self._run(flat, cu, tt, pos)
        if sel is None:
            return h.reshape(B, L, c.hidden_size)
        out = np.zeros((B * L, c.hidden_size), dtype=c.out_dtype)
        out[sel] = h
        return out.reshape(B, L, c.hidden_size)

    def forward_packed(self, input_ids, cu_seqlens, token_type_ids=None,
                       position_ids=None):
        """Encode packed sequences (no padding anywhere).

        Parameters
        ----------
        input_ids : int array_like, shape (total,)
            The sequences' tokens one after the other.
        cu_seqlens : int array_like, shape (nseq + 1,)
            ``[0, len0, len0 + len1, ..., total]`` (empty sequences allowed).
        token_type_ids : int array_like, shape (total,), optional
            Default zeros (DistilBERT: None or zeros only).
        position_ids : int array_like, shape (total,), optional
            Default: ``0 .. len-1`` per sequence for BERT / DistilBERT, the
            RoBERTa rule (module docstring) for RoBERTa / XLM-R.

        Returns
        -------
        ndarray, shape (total, hidden_size), the model's dtype (float32 for
        bfloat16); row ``t`` is
        bit-identical to that token's row of ``model(...)`` on a padded batch
        holding the same sequence (right-padded).
        """
        c = self.config
        ids = _int_array(input_ids, "input_ids", (1,))
        cu = _int_array(cu_seqlens, "cu_seqlens", (1,))
        T = ids.shape[0]
        if cu.size < 1 or cu[0] != 0 or cu[-1] != T or (cu.size > 1 and (np.diff(cu) < 0).any()):
            raise ValueError(f"cu_seqlens must rise monotonically from 0 to the number "
                             f"of tokens ({T}), got {cu.tolist() if cu.size <= 20 else cu}")
        cu = cu.astype(np.int64)
        tt = None
        if token_type_ids is not None:
            tt = _int_array(token_type_ids, "token_type_ids", (1,))
            if tt.shape != ids.shape:
                raise ValueError(f"token_type_ids has shape {tt.shape}, input_ids {ids.shape}")
        self._check_tokens(ids, tt)
        ids, tt = self._as_index(ids, tt)
        if position_ids is None:
            if c.model_type in _ROBERTA_TYPES:
                pos = self._roberta_positions(ids, cu)
            else:
                pos = np.arange(T, dtype=np.intp) - np.repeat(cu[:-1], np.diff(cu)).astype(np.intp)
            self._check_positions(pos, cu)
        else:
            pos = _int_array(position_ids, "position_ids", (1,))
            if pos.shape != ids.shape:
                raise ValueError(f"position_ids has shape {pos.shape}, input_ids {ids.shape}")
            _check_range(pos, 0, c.max_position_embeddings, "position_ids",
                         f"max_position_embeddings={c.max_position_embeddings}")
            pos = pos.astype(np.intp, copy=False)
        return self._run(ids, cu, tt, pos)

    def _check_tokens(self, ids, tt, valid=None):
        """Range checks at the real tokens (``valid``: None = all)."""
        c = self.config
        _check_range(ids, 0, c.vocab_size, "input_ids", f"vocab_size={c.vocab_size}", valid)
        if tt is None:
            return
        if c.type_vocab_size == 0:
            nz = tt != 0
            if valid is not None:
                nz &= valid
            if nz.any():
                raise ValueError(f"{c.model_type} has no token types: token_type_ids "
                                 f"must be None or zeros")
        else:
            _check_range(tt, 0, c.type_vocab_size, "token_type_ids",
                         f"type_vocab_size={c.type_vocab_size}", valid)

    def _as_index(self, ids, tt):
        """Checked ids / token types as index arrays (token types: None when
        the model has none or all are zero)."""
        ids = ids.astype(np.intp, copy=False)
        if tt is not None:
            tt = None if self._tt is None or not tt.any() else \
                tt.astype(np.intp, copy=False)
        return ids, tt

    def _roberta_positions(self, ids, cu):
        pad = self.config.pad_token_id
        real = ids != pad
        run = np.cumsum(real, dtype=np.intp)
        # restart the count at every sequence start
        starts = np.concatenate(([0], run))[cu[:-1]]
        run -= np.repeat(starts, np.diff(cu))
        return run * real + pad

    def _check_positions(self, pos, cu):
        c = self.config
        if pos.size and pos.max() >= c.max_position_embeddings:
            i = int(np.argmax(pos >= c.max_position_embeddings))
            s = int(np.searchsorted(cu, i, side="right")) - 1
            raise ValueError(
                f"sequence {s} is too long: its token {i - int(cu[s])} (of "
                f"{int(cu[s + 1] - cu[s])}) needs position id {int(pos[i])}, beyond "
                f"max_position_embeddings={c.max_position_embeddings} (at most "
                f"{c.max_tokens} tokens per sequence)")

    # ---- the padding-free forward pass ------------------------------------
    def _run(self, ids, cu, tt, pos):
        c = self.config
        if c.bf16:
            return self._run_bf16(ids, cu, tt, pos)
        T, E, dt = ids.shape[0], c.hidden_size, c.dtype
        x = np.empty((T, E), dtype=dt)
        if T == 0:
            return x
        self._embed(ids, tt, pos, x)
        # per-call scratch, reused by every layer
        qkv = np.empty((T, 3 * E), dtype=dt)
        ctx = np.empty((T, E), dtype=dt)
        y = np.empty((T, E), dtype=dt)
        hid = np.empty((T, c.intermediate_size), dtype=dt)
        return self._blocks(cu, x, x, qkv, ctx, y, y, hid, ctx)

    def _blocks(self, cu, x, xin, qkv, ctx, y, yin, hid, down, xb=None, yb=None):
        """The layers over one forward pass's scratch, x updated in place:
        ``xin``/``yin`` are the GEMM inputs (``x``/``y`` in float32, their bf16
        copies ``xb``/``yb``, which the norms then also write), ``down`` takes
        the second feed-forward GEMM (``ctx`` in float32; float32 ``z`` for
        bf16).  Every kernel call's set-up is made once for all layers (the
        same calls, so the same bits; a short query's layers cost more in
        per-call Python than in the kernels)."""
        c = self.config
        if not self._layers:
            return x
        act, eps, H, scale = self._act, c.layer_norm_eps, c.num_heads, self._scale
        add_norm, attention = _ops.add_norm, _ops.attention
        plan = _ops.attention_plan(qkv, cu, H, scale, ctx)
        l0 = self._layers[0]
        p_qkv = _ops.dense_plan(xin, l0[0], None, qkv)
        p_o = _ops.dense_plan(ctx, l0[2], None, y)
        p_up = _ops.dense_plan(yin, l0[6], act, hid)
        p_down = _ops.dense_plan(hid, l0[8], None, down)
        nt = _for_rows(x.size, 3)
        for (wqkv, bqkv, wo, bo, n1w, n1b, w1, b1, w2, b2, n2w, n2b) in self._layers:
            p_qkv(wqkv, bqkv)
            attention(qkv, cu, H, scale, ctx, plan=plan)
            p_o(wo, None)
            add_norm(y, bo, x, n1w, n1b, eps, n=y, nb=yb, nthreads=nt)      # y = X1
            p_up(w1, b1)
            p_down(w2, None)
            add_norm(down, b2, y, n2w, n2b, eps, n=x, nb=xb, nthreads=nt)   # x = next X
        return x

    def _embed(self, ids, tt, pos, x, xb=None):
        """x = LayerNorm(word + token_type + position) in one fused pass
        (``xb``: its bf16 copy)."""
        c = self.config
        np.take(self._word, ids, axis=0, out=x)
        tt_bias = None
        if self._tt is not None:
            if tt is None:
                tt_bias = self._tt[0]
            else:
                x += np.take(self._tt, tt, axis=0)
        p = np.take(self._pos, pos, axis=0)
        _ops.add_norm(x, tt_bias, p, self._ln_w, self._ln_b, c.layer_norm_eps, n=x, nb=xb)

    def _run_bf16(self, ids, cu, tt, pos):
        """The same blocks with bf16 weights and GEMM inputs: every norm pass
        writes the float32 residual and the next GEMM's bf16 input, the QKV
        and first feed-forward GEMMs store bf16 (bias and activation fused),
        attention reads bf16 q/k/v and writes the output projection's bf16
        input; the GEMMs that feed a residual add store float32."""
        c = self.config
        T, E = ids.shape[0], c.hidden_size
        f32, b16 = np.float32, c.dtype
        x = np.empty((T, E), dtype=f32)
        if T == 0:
            return x
        xb = np.empty((T, E), dtype=b16)
        self._embed(ids, tt, pos, x, xb)
        qkv = np.empty((T, 3 * E), dtype=b16)
        ctx = np.empty((T, E), dtype=b16)
        y = np.empty((T, E), dtype=f32)
        yb = np.empty((T, E), dtype=b16)
        hid = np.empty((T, c.intermediate_size), dtype=b16)
        z = np.empty((T, E), dtype=f32)
        return self._blocks(cu, x, xb, qkv, ctx, y, yb, hid, z, xb, yb)


def _like_ids(x, name, ids):
    """``x`` as a 2-D integer array of ``ids``' (B, L) shape (a 1-D ``x`` is
    one sequence), or a ValueError naming ``name`` and both shapes."""
    a = _int_array(x, name, (1, 2))
    if a.ndim == 1:
        a = a[None, :]
    if a.shape != ids.shape:
        raise ValueError(f"{name} has shape {a.shape}, input_ids {ids.shape}")
    return a


def _check_sizes_fit(folder, c):
    """Hostile configs: the weights the sizes imply must fit in the files
    (checked before anything is allocated from the sizes)."""
    E, I, L = c.hidden_size, c.intermediate_size, c.num_layers
    n = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * E \
        + L * (4 * E * E + 2 * E * I)
    folder = os.fspath(folder)
    distil = c.model_type == "distilbert"
    names = ("vocab_size", "dim" if distil else "hidden_size",
             "n_layers" if distil else "num_hidden_layers",
             "hidden_dim" if distil else "intermediate_size", "max_position_embeddings",
             "type_vocab_size")
    vals = (c.vocab_size, E, L, I, c.max_position_embeddings, c.type_vocab_size)
    check_weight_budget(os.path.join(folder, "config.json"), folder, n,
                        dict(zip(names, vals)), layers=(names[2], L))


def _check_no_extra_layers(ck, cls, c):
    """A checkpoint with more layers than config.json says would otherwise
    load as a silently truncated model."""
    p = cls._prefix(ck)
    extra = p + f"{cls._layers}.{c.num_layers}."
    if any(n.startswith(extra) for n in ck.names()):
        key = "n_layers" if c.model_type == "distilbert" else "num_hidden_layers"
        raise ValueError(f"{ck.folder}: the checkpoint has tensors {extra}* beyond the "
                         f"{c.num_layers} layers of config.json's {key}")


def _read_blocks(cls, ck, c):
    """Embeddings and every block's arrays, in the order the forward
    pass unpacks them; Q, K and V concatenated into one projection."""
    dt, E, I = c.out_dtype, c.hidden_size, c.intermediate_size
    # the GEMM weights packed once, each as soon as it is read: into the
    # fp32 GEMM's panels, or rounded to bf16 for the bf16 GEMM; the panels
    # in huge pages (fastattn/_memory.py: a short query reads them all once)
    alloc = WeightArena().empty
    pk = functools.partial(_ops.pack_bf16 if c.bf16 else _ops.pack, alloc=alloc)
    p = cls._prefix(ck)
    word, pos, tt, lnw, lnb = cls._read_embeddings(ck, c, p)
    nm = cls._names
    layers = []
    for i in range(c.num_layers):
        q = f"{p}{cls._layers}.{i}."
        g = lambda n, s: ck.get(q + n, s, dt)   # noqa: E731
        wqkv = pk(np.concatenate([g(nm[r] + ".weight", (E, E)) for r in "qkv"]))
        bqkv = np.concatenate([g(nm[r] + ".bias", (E,)) for r in "qkv"])
        n1w, n1b = cls._norm(ck, q + nm["ln1"], E, dt)
        n2w, n2b = cls._norm(ck, q + nm["ln2"], E, dt)
        layers.append((wqkv, bqkv, pk(g(nm["o"] + ".weight", (E, E))),
                       g(nm["o"] + ".bias", (E,)),
                       n1w, n1b, pk(g(nm["ff1"] + ".weight", (I, E))),
                       g(nm["ff1"] + ".bias", (I,)),
                       pk(g(nm["ff2"] + ".weight", (E, I))), g(nm["ff2"] + ".bias", (E,)),
                       n2w, n2b))
    return word, pos, tt, lnw, lnb, layers


class BertModel(_Encoder):
    """BERT encoders (``model_type`` "bert": BERT, MiniLM, BGE, E5, ...).

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` returns
    ``last_hidden_state``; :meth:`forward_packed` encodes packed sequences.
    See the module docstring for position ids and batch invariance.
    """
    _model_types = ("bert",)
    _prefixes = ("bert.",)

    # tensor names of one block, under "<prefix><layers>.<i>."
    _layers = "encoder.layer"
    _names = dict(q="attention.self.query", k="attention.self.key", v="attention.self.value",
                  o="attention.output.dense", ln1="attention.output.LayerNorm",
                  ff1="intermediate.dense", ff2="output.dense", ln2="output.LayerNorm")

    _read_weights = classmethod(_read_blocks)


class RobertaModel(BertModel):
    """RoBERTa, XLM-RoBERTa and CamemBERT encoders (``model_type`` "roberta",
    "xlm-roberta", "camembert"): BERT's blocks with position ids that start after the
    padding index (module docstring)."""
    _model_types = _ROBERTA_TYPES
    _prefixes = ("roberta.",)


class DistilBertModel(_Encoder):
    """DistilBERT encoders (``model_type`` "distilbert"): no token types,
    LayerNorm eps 1e-12, config fields ``dim``, ``n_layers``, ``n_heads``,
    ``hidden_dim``, ``activation``."""
    _model_types = ("distilbert",)
    _prefixes = ("distilbert.",)

    _layers = "transformer.layer"
    _names = dict(q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
                  o="attention.out_lin", ln1="sa_layer_norm", ff1="ffn.lin1", ff2="ffn.lin2",
                  ln2="output_layer_norm")
    _read_weights = classmethod(_read_blocks)


class AutoModel(_Encoder):
    """``AutoModel.from_pretrained(folder, dtype="float32")``: the encoder
    class of ``config.json``'s ``model_type`` (:class:`BertModel`,
    :class:`RobertaModel` or :class:`DistilBertModel`)."""

    def __init__(self, *a, **k):  # pragma: no cover - never instantiated
        raise TypeError("use AutoModel.from_pretrained(folder)")


_CLASSES = {"bert": BertModel, "roberta": RobertaModel, "xlm-roberta": RobertaModel,
            "camembert": RobertaModel, "distilbert": DistilBertModel}
