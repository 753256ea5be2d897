"""Decoder-only language models (GPT-2, Llama, Mistral, Qwen2) on fastattn.

One pre-norm block, written once for every family (the families differ in
their norm, MLP, positions and biases, which are data here)::

    h = norm1(x)
    qkv = h @ W_qkv.T + b_qkv            one GEMM (Q, K and V fused at load)
    q, k = rope(q), rope(k)              in place on strided head views
    K/V cache[:, :, p0:p0+T] = k, v      written in place, preallocated once
    a = sdpa(q, K[:S], V[:S])            causal (bottom-right), GQA without
                                         K/V copies, sliding window, padding
    x += a @ W_o.T + b_o ; h = norm2(x)  one fused add + norm pass
    x += mlp(h) ; h = next norm(x)       one fused add + norm pass

``generate`` preallocates the cache once for prompt + new tokens, runs the
prompt through the fused attention (``is_causal``), then one step per token
over the weights and the filled cache; sequences that reach an end token are
dropped from the active batch (their cache rows are compacted away), so
they stop costing work.
"""
import math
import numbers

import numpy as np

from .._memory import WeightArena
from ..functional import scaled_dot_product_attention
from ..nn import _ops
from ..threads import for_attention, for_stream, get_num_threads
from ..nn.cache import KVCache
from ..nn.layers import gemm, gemm_via, gemv, GEMV_MAX_ROWS
from ._ops import qkv_heads as _heads
from ._decode_plan import DecodePlan
from ._decoder_bf16 import map_matrices

__all__ = ["CausalLM"]


class _Block:
    """The weights of one decoder block (torch layout ``(out, in)``)."""
    __slots__ = ("n1w", "n1b", "w_qkv", "b_qkv", "w_o", "b_o", "n2w", "n2b",
                 "w_up", "b_up", "w_down", "b_down", "scale", "window")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _ids_array(input_ids, vocab_size, name="input_ids"):
    a = np.asarray(input_ids)
    if a.dtype == object or a.dtype.kind not in "iu":
        if a.dtype.kind == "b" or a.size == 0 or a.dtype.kind not in "iuf" \
                or not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise TypeError(f"{name} must be integer token ids, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, seq) or (seq,), got {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must hold at least one token per sequence, got shape {a.shape}")
    a = a.astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size})")
    return a


def _mask_array(attention_mask, shape, name="attention_mask"):
    m = np.asarray(attention_mask)
    if m.ndim == 1 and len(shape) == 2 and shape[0] == 1:
        m = m[None]
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (batch, seq), got {m.shape}")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
            raise ValueError(f"{name} must hold only 0 and 1 (or bools)")
        m = m != 0
    if not m.any(axis=1).all():
        r = int(np.flatnonzero(~m.any(axis=1))[0])
        raise ValueError(f"{name} row {r} has no token to attend to (all zeros)")
    return m


class CausalLM:
    """A decoder-only language model (base of :class:`GPT2LMHeadModel` and
    :class:`LlamaForCausalLM`); build one with ``from_pretrained``.

    Calling the model, ``model(input_ids, attention_mask=None)``, returns the
    logits ``(B, T, vocab)``; :meth:`generate` continues prompts.
    """

    model_type = None

    # -- set up by the family loaders ----------------------------------------
    def _init_common(self, config, generation_config, dtype, *, vocab_size, hidden,
                     layers, heads, kv_heads, head_dim, max_positions, norm, eps, act):
        self.config = dict(config)
        self.generation_config = dict(generation_config)
        self.dtype = dtype
        self._bf16 = False          # dtype="bfloat16": see _decoder_bf16
        self._float_dtype = self._cache_dtype = dtype
        self.vocab_size = vocab_size
        self.hidden_size = hidden
        self.num_layers = layers
        self.num_heads = heads
        self.num_kv_heads = kv_heads
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.norm = norm            # "layer" or "rms"
        self.eps = eps
        self.act = act              # a fastattn.nn._ops activation name or "swiglu"
        self.blocks = []
        self.embed = None           # (V, E)
        self.pos_embed = None       # (P, E) learned positions (GPT-2) or None
        self.inv_freq = None        # RoPE inverse frequencies (D/2,) float64 or None
        self.rope_scale = 1.0       # YaRN attention factor on cos/sin
        self.final_w = self.final_b = None
        self.lm_head = None         # (V, E), possibly the embedding itself
        eos = generation_config.get("eos_token_id", config.get("eos_token_id"))
        self.eos_token_id = self._eos_list(eos, "eos_token_id", check_range=False)
        pad = generation_config.get("pad_token_id", config.get("pad_token_id"))
        self.pad_token_id = pad if _is_int(pad) else None

    @staticmethod
    def _eos_list(eos, name, check_range=True, vocab=None):
        if eos is None:
            return []
        vals = [eos] if _is_int(eos) else eos
        if not isinstance(vals, (list, tuple, np.ndarray)) or not all(_is_int(v) for v in vals):
            raise ValueError(f"{name} must be an int or a list of ints, got {eos!r}")
        vals = [int(v) for v in vals]
        if check_range and any(v < 0 or v >= vocab for v in vals):
            raise ValueError(f"{name} {eos!r} is outside the vocabulary [0, {vocab})")
        return vals

    @classmethod
    def from_pretrained(cls, folder, dtype="float32"):
        """Load a model folder (``config.json`` + safetensors weights); the
        class must match the folder's ``model_type``."""
        from ._checkpoint import read_config
        types = getattr(cls, "_MODEL_TYPES", None) or (getattr(cls, "model_type", None),)
        if cls is CausalLM or types == (None,):
            raise TypeError("CausalLM is the base class: load a folder with "
                            "AutoModelForCausalLM.from_pretrained or a model class")
        dt = _resolve_dtype(dtype)
        path, config, gen = read_config(folder)
        mt = config.get("model_type")
        if mt not in types:
            raise ValueError(f"{folder!r} holds a {mt!r} model, which {cls.__name__} does "
                             f"not load (use AutoModelForCausalLM)")
        return cls._load_as(path, config, gen, dt)

    @classmethod
    def _load_as(cls, path, config, gen, dt):
        """``_load`` in ``dt``; bfloat16: loaded in float32, then the GEMM
        weights packed as bf16 (fastattn/models/_decoder_bf16.py).  Either
        way the weights every step reads end in huge pages
        (fastattn/_memory.py)."""
        arena = WeightArena()
        if np.dtype(dt).name != "bfloat16":
            return _resident(cls._load(path, config, gen, dt), arena)
        from . import _decoder_bf16
        return _decoder_bf16.convert(cls._load(path, config, gen, np.float32), np.dtype(dt),
                                     alloc=arena.empty)

    def __repr__(self):
        return (f"{type(self).__name__}(model_type={self.model_type!r}, layers="
                f"{self.num_layers}, hidden={self.hidden_size}, heads={self.num_heads}, "
                f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, vocab="
                f"{self.vocab_size}, dtype={np.dtype(self.dtype).name})")

    def num_parameters(self):
        seen, n = set(), 0
        arrays = [self.embed, self.pos_embed, self.final_w, self.final_b, self.lm_head]
        for b in self.blocks:
            arrays += [getattr(b, s) for s in _Block.__slots__[:-2]]
        if getattr(self, "_lm_head_tied", False):
            arrays = [a for a in arrays if a is not self.lm_head]   # bf16: a packed copy of embed
        for a in arrays:
            if a is not None and id(a) not in seen:
                seen.add(id(a))
                n += int(np.prod(a.shape))
        return n

    def weight_bytes_per_token(self):
        """Bytes of weights a decoding step reads (every block matrix and
        vector, the final norm and the output head; one embedding row)."""
        n = 0
        for b in self.blocks:
            for s in _Block.__slots__[:-2]:
                a = getattr(b, s)
                if a is not None:
                    n += a.nbytes
        for a in (self.final_w, self.final_b, self.lm_head):
            if a is not None:
                n += a.nbytes
        return n

    def new_cache(self, batch_size, max_len):
        """A :class:`fastattn.nn.KVCache` for ``model(..., cache=...)``."""
        return KVCache(self.num_layers, batch_size, self.num_kv_heads, self.head_dim,
                       max_len, self._cache_dtype)

    # -- positions ------------------------------------------------------------
    def _rope_tables(self, positions):
        """cos, sin of shape (B, 1, T, D/2) for integer positions (B, T)."""
        ang = positions.astype(np.float64)[:, None, :, None] * self.inv_freq
        c, s = np.cos(ang), np.sin(ang)
        if self.rope_scale != 1.0:
            c *= self.rope_scale
            s *= self.rope_scale
        return c.astype(self._float_dtype), s.astype(self._float_dtype)

    # -- the network ------------------------------------------------------------
    def _embed(self, ids, positions, rope):
        """The residual stream's first rows (token + learned position
        embeddings, float32) and the RoPE tables (``rope`` if given)."""
        x = self.embed[ids.reshape(-1)]
        if self.pos_embed is not None:
            x += self.pos_embed[positions.reshape(-1)]
        if self.inv_freq is not None and rope is None:
            rope = self._rope_tables(positions)
        return x, rope

    def _run(self, ids, positions, kv, p0, mask, last_only, rope=None):
        """Logits for token ids (B, T) at ``positions`` (B, T).

        ``kv``: None (no cache: attention over the T tokens) or the pair of
        cache arrays (layers, B, Hkv, max_len, D) (views of the active rows):
        the new keys/values are written at ``p0:p0+T`` and attention reads
        ``:p0+T``.  ``mask``: None or a bool array broadcastable to
        (B, 1, T, S) (True = attend).  ``rope``: precomputed (cos, sin).
        Returns (B, V) logits of the last position or (B*T, V).
        """
        if self._bf16:
            from ._decoder_bf16 import run
            return run(self, ids, positions, kv, p0, mask, last_only, rope)
        B, T = ids.shape
        H, Hkv, D, E = self.num_heads, self.num_kv_heads, self.head_dim, self.hidden_size
        dt = self.dtype
        x, rope = self._embed(ids, positions, rope)
        S = p0 + T
        gqa = Hkv != H
        att_flops = 4 * B * H * T * S * D
        mode, eps = self.norm, self.eps
        blocks = self.blocks
        b0 = blocks[0]
        _, h = _ops.add_norm(x, None, None, mode, b0.n1w, b0.n1b, eps)
        buf = np.empty((B, T, H, D), dtype=dt)
        o4 = buf.transpose(0, 2, 1, 3)
        a2 = buf.reshape(B * T, H * D)
        # decode-sized steps (<= GEMV_MAX_ROWS rows): every projection on the
        # rows-layout GEMV (W read once, on fastattn's team), and the
        # memory-bound attention sized by the K/V bytes it reads
        small = B * T <= GEMV_MAX_ROWS
        for li, blk in enumerate(blocks):
            if small:
                qkv = gemv(h, blk.w_qkv, blk.b_qkv)
                nthreads = for_stream(None, 2 * B * Hkv * S * D * x.itemsize)
            else:
                qkv, via = gemm_via(h, blk.w_qkv, blk.b_qkv)
                # BLAS's pool still spins after a decode-sized projection
                nthreads = for_attention(att_flops, via == "blas")
            q, k, v = _heads(qkv, B, T, H, Hkv, D, rope,
                             None if kv is None else (kv[0][li], kv[1][li]), p0, S)
            scaled_dot_product_attention(q, k, v, mask, 0.0, True, blk.scale, gqa,
                                         causal_alignment="bottom_right",
                                         window=blk.window, out=o4,
                                         num_threads=nthreads)
            y = gemv(a2, blk.w_o) if small else gemm(a2, blk.w_o)
            _, h = _ops.add_norm(y, blk.b_o, x, mode, blk.n2w, blk.n2b, eps, s=x)
            if small:     # bias and activation (or SwiGLU) fused into the store
                g = gemv(h, blk.w_up, blk.b_up, glu=True) if self.act == "swiglu" \
                    else gemv(h, blk.w_up, blk.b_up, act=self.act)
            else:
                u = gemm(h, blk.w_up)
                if self.act == "swiglu":
                    g = _ops.swiglu(u, blk.b_up, out=u[:, :u.shape[1] // 2])
                else:
                    g = _ops.bias_act(u, blk.b_up, self.act, out=u)
            y = gemv(g, blk.w_down) if small else gemm(g, blk.w_down)
            if li + 1 < len(blocks):
                nb = blocks[li + 1]
                nw, nbias = nb.n1w, nb.n1b
            else:
                nw, nbias = self.final_w, self.final_b
            _, h = _ops.add_norm(y, blk.b_down, x, mode, nw, nbias, eps, s=x)
        if last_only:
            h = np.ascontiguousarray(h.reshape(B, T, E)[:, -1])
        if h.shape[0] <= GEMV_MAX_ROWS:     # the (tied) output head: one pass over it
            return gemv(h, self.lm_head)
        return gemm(h, self.lm_head)

    # -- public forward -------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, *, position_ids=None, cache=None):
        return self.forward(input_ids, attention_mask, position_ids=position_ids,
                            cache=cache)

    def forward(self, input_ids, attention_mask=None, *, position_ids=None, cache=None):
        """Logits of every position.

        Parameters
        ----------
        input_ids : array_like of int, shape (B, T) or (T,)
        attention_mask : array_like of 0/1, shape (B, T), or (B, past + T)
            with a cache; 0 marks padding (keys that are never attended to).
        position_ids : array_like of int, shape (B, T) or (T,), optional
            Default ``past + arange(T)`` for every row, as ``transformers``
            does in a forward call (its ``generate`` derives them from the
            mask instead, and so does :meth:`generate`).
        cache : KVCache from :meth:`new_cache`, optional
            The new keys/values are appended and the tokens attend to
            everything it holds (incremental decoding).

        Returns
        -------
        ndarray, shape (B, T, vocab_size), the model's dtype (float32 by default;
        float32 for a bfloat16 model)
        """
        ids = _ids_array(input_ids, self.vocab_size)
        B, T = ids.shape
        past = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache from new_cache(), got "
                                f"{type(cache).__name__}")
            want = (self.num_layers, B, self.num_kv_heads, cache.max_len, self.head_dim)
            if cache.k.shape != want or cache.k.dtype != self._cache_dtype:
                raise ValueError(f"cache of shape {cache.k.shape} ({cache.k.dtype}) does not "
                                 f"fit this model and batch: expected {want} "
                                 f"({np.dtype(self._cache_dtype)})")
            past = cache.length
            if any(c.length != past for c in cache.layers):
                raise ValueError("cache layers hold different lengths")
            if past + T > cache.max_len:
                raise ValueError(f"KV cache overflow: it holds {past} of max_len="
                                 f"{cache.max_len} positions; {T} more do not fit")
        S = past + T
        mask = None
        if attention_mask is not None:
            m = _mask_array(attention_mask, (B, S))
            if not m.all():
                mask = m[:, None, None, :]
        if position_ids is None:
            pos = np.broadcast_to(np.arange(past, S, dtype=np.int64), (B, T))
        else:
            pos = np.asarray(position_ids)
            if pos.dtype.kind not in "iu":
                raise TypeError(f"position_ids must be integers, got dtype {pos.dtype}")
            if pos.ndim == 1:
                pos = pos[None]
            try:
                pos = np.broadcast_to(pos, (B, T)).astype(np.int64)
            except ValueError:
                raise ValueError(f"position_ids of shape {np.shape(position_ids)} do not "
                                 f"fit input_ids {ids.shape}") from None
            if pos.size and pos.min() < 0:
                raise ValueError("position_ids must be non-negative")
        if int(pos.max()) >= self.max_positions:
            raise ValueError(f"position {int(pos.max())} is beyond the model's "
                             f"{self._max_pos_name} = {self.max_positions}")
        kv = None if cache is None else (cache.k, cache.v)
        logits = self._run(ids, pos, kv, past, mask, last_only=False)
        if cache is not None:
            for c in cache.layers:
                c.length = S
        return logits.reshape(B, T, self.vocab_size)

    _max_pos_name = "max_position_embeddings"

    # -- generation -------------------------------------------------------------
    def generate(self, input_ids, max_new_tokens, *, attention_mask=None,
                 do_sample=False, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=None, seed=None, eos_token_id=None,
                 pad_token_id=None, stream=False):
        """Continue prompts, as ``transformers``' ``generate`` does.

        Parameters
        ----------
        input_ids : array_like of int, shape (B, T) or (T,)
            Prompts, left-padded to a common length when they differ.
        max_new_tokens : int >= 0
        attention_mask : array_like of 0/1, shape (B, T), optional
            0 marks left padding.  Positions follow ``transformers``:
            ``cumsum(mask) - 1`` (0 on padding).
        do_sample : bool
            False: greedy (``temperature``, ``top_k``, ``top_p`` are then
            not used, as in ``transformers``).  True: sample from the
            processed distribution.
        temperature : float > 0
        top_k : int >= 1, optional
        top_p : float in (0, 1], optional
            Nucleus sampling: keep the most probable tokens whose cumulative
            probability reaches ``top_p`` (at least one).
        repetition_penalty : float > 0, optional
            ``transformers``' rule: the logit of every token already in the
            sequence (prompt included) is divided by it when positive,
            multiplied when negative; applies in greedy mode too.
        seed : int, numpy Generator or None
            Seeds a ``numpy.random.Generator`` for sampling (reproducible).
        eos_token_id : int or list of int, optional
            Defaults to the folder's generation config / config.  A sequence
            that produces one stops: it is dropped from the work and padded
            with ``pad_token_id`` (default: the config's, else the first end
            token); generation ends early when every sequence has stopped.
        stream : bool
            Return a generator yielding each step's ``(B,)`` int64 tokens
            (padding for stopped rows) instead of the final array.

        Returns
        -------
        ndarray of int64, shape (B, T + steps) with steps <= max_new_tokens;
        or, with ``stream=True``, a generator of (B,) arrays.
        """
        ids = _ids_array(input_ids, self.vocab_size)
        B, T = ids.shape
        if not _is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        max_new = int(max_new_tokens)
        if T + max_new > self.max_positions:
            raise ValueError(f"prompt length {T} + max_new_tokens {max_new} = {T + max_new} "
                             f"exceeds the model's {self._max_pos_name} = {self.max_positions}")
        if attention_mask is None:
            m = np.ones((B, T), dtype=bool)
        else:
            m = _mask_array(attention_mask, (B, T))
            first = m.argmax(axis=1)
            left_padded = m.sum(axis=1) == T - first
            if not left_padded.all():
                r = int(np.flatnonzero(~left_padded)[0])
                raise ValueError(f"attention_mask row {r} is not left padding (zeros, then "
                                 f"ones): generation needs prompts padded on the left")
        if not isinstance(do_sample, (bool, np.bool_)):
            raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__}")
        if not isinstance(stream, (bool, np.bool_)):
            raise TypeError(f"stream must be a bool, got {type(stream).__name__}")
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (not _is_int(top_k) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, (bool, np.bool_))
                                  or not isinstance(top_p, numbers.Real)
                                  or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
        if repetition_penalty is not None and (
                isinstance(repetition_penalty, (bool, np.bool_))
                or not isinstance(repetition_penalty, numbers.Real)
                or not math.isfinite(repetition_penalty) or repetition_penalty <= 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0 or None, "
                             f"got {repetition_penalty!r}")
        if isinstance(seed, np.random.Generator):
            rng = seed
        elif seed is None or (_is_int(seed) and seed >= 0):
            rng = np.random.default_rng(seed)
        else:
            raise ValueError(f"seed must be a non-negative int, a numpy Generator or None, "
                             f"got {seed!r}")
        eos = (self.eos_token_id if eos_token_id is None
               else self._eos_list(eos_token_id, "eos_token_id", True, self.vocab_size))
        pad = self.pad_token_id if pad_token_id is None else pad_token_id
        if pad is None:
            pad = eos[0] if eos else 0
        if not _is_int(pad):
            raise ValueError(f"pad_token_id must be an int, got {pad!r}")
        opts = dict(do_sample=bool(do_sample), temperature=float(temperature), top_k=top_k,
                    top_p=None if top_p is None else float(top_p),
                    rep=None if repetition_penalty is None else float(repetition_penalty),
                    rng=rng, eos=np.array(eos, dtype=np.int64), pad=int(pad))
        steps = self._generate_steps(ids, m, max_new, opts)
        if stream:
            return steps
        out = None
        for out in _drain(steps):
            pass
        return out

    def _generate_steps(self, ids, m, max_new, o):
        """The generation loop; yields each step's (B,) tokens and finally
        returns the (B, T + steps) array (through ``_drain``)."""
        B, T = ids.shape
        total = T + max_new
        seq = np.empty((B, total), dtype=np.int64)
        seq[:, :T] = ids
        if max_new == 0:
            return seq[:, :T].copy()
        pos = np.cumsum(m, axis=1) - 1
        pos[~m] = 0
        next_pos = pos[:, -1] + 1
        has_pad = not m.all()
        key_ok = np.ones((B, total), dtype=bool)
        key_ok[:, :T] = m
        cache = self.new_cache(B, total)
        kv_k, kv_v = cache.k, cache.v
        rope_tab = None
        if self.inv_freq is not None:   # every position this call can reach
            rope_tab = self._rope_tables(np.arange(int(pos.max()) + max_new + 1)[None])
        active = np.arange(B)           # original rows of the active slots
        done_at = np.full(B, total, dtype=np.int64)

        def rope_for(p):                # p: (n, L) positions
            if rope_tab is None:
                return None
            return rope_tab[0][0, 0][p][:, None], rope_tab[1][0, 0][p][:, None]

        n = B
        mask = key_ok[:, None, None, :T] if has_pad else None
        logits = self._run(ids, pos, (kv_k, kv_v), 0, mask, True, rope_for(pos))
        cur = T
        step_out = np.empty(B, dtype=np.int64)
        plan = plan_key = None
        for step in range(max_new):
            past = seq[active, :cur] if o["rep"] is not None else None
            tok = self._next_tokens(logits, past, o)
            seq[active, cur] = tok
            step_out[:] = o["pad"]
            step_out[active] = tok
            cur += 1
            yield step_out.copy()
            if step == max_new - 1:
                break
            if o["eos"].size:
                fin = np.isin(tok, o["eos"])
                if fin.any():
                    done_at[active[fin]] = cur
                    keep = np.flatnonzero(~fin)
                    if keep.size == 0:
                        break
                    # drop finished rows: compact the cache and the row state
                    if keep.size < n:
                        kv_k[:, :keep.size, :, :cur - 1] = kv_k[:, keep, :, :cur - 1]
                        kv_v[:, :keep.size, :, :cur - 1] = kv_v[:, keep, :, :cur - 1]
                        key_ok[:keep.size] = key_ok[keep]
                        active, tok = active[keep], tok[keep]
                        next_pos = next_pos[keep]
                        n = keep.size
            p = next_pos[:, None]
            mask = key_ok[:n, None, None, :cur] if has_pad else None
            if self._bf16 or n <= GEMV_MAX_ROWS:
                # validated and allocated once per (rows, thread setting):
                # the same kernel calls as _run, without its per-step cost
                key = (n, get_num_threads())
                if plan_key != key:
                    plan, plan_key = DecodePlan(self, n, (kv_k, kv_v)), key
                logits = plan.step(tok[:, None], p, cur - 1, mask, rope_for(p))
            else:
                logits = self._run(tok[:, None], p, (kv_k[:, :n], kv_v[:, :n]), cur - 1,
                                   mask, True, rope_for(p))
            next_pos = next_pos + 1
        out = seq[:, :cur].copy()
        for r in np.flatnonzero(done_at < cur):
            out[r, done_at[r]:] = o["pad"]
        return out

    @staticmethod
    def _process_scores(logits, seq, o):
        """``transformers``' logits processors on (n, V) logits: repetition
        penalty (over ``seq``, the ids so far), then, when sampling,
        temperature, top-k and top-p (float64 scores, -inf = removed)."""
        scores = logits
        if o["rep"] is not None:
            scores = scores.copy()
            r = np.arange(scores.shape[0])[:, None]
            g = scores[r, seq]
            p = np.float32(o["rep"]) if scores.dtype == np.float32 else o["rep"]
            scores[r, seq] = np.where(g < 0, g * p, g / p)
        if not o["do_sample"]:
            return scores
        s = scores.astype(np.float64)
        if o["temperature"] != 1.0:
            s = s / o["temperature"]
        V = s.shape[1]
        if o["top_k"] is not None and o["top_k"] < V:
            kth = np.partition(s, V - o["top_k"], axis=1)[:, V - o["top_k"]][:, None]
            s = np.where(s < kth, -np.inf, s)
        if o["top_p"] is not None and o["top_p"] < 1.0:
            order = np.argsort(s, axis=1, kind="stable")
            ss = np.take_along_axis(s, order, axis=1)
            e = np.exp(ss - ss[:, -1:])
            cum = np.cumsum(e / e.sum(axis=1, keepdims=True), axis=1)
            remove = cum <= 1.0 - o["top_p"]
            remove[:, -1] = False           # keep at least the most probable
            rem = np.empty_like(remove)
            np.put_along_axis(rem, order, remove, axis=1)
            s = np.where(rem, -np.inf, s)
        return s

    @classmethod
    def _next_tokens(cls, logits, seq, o):
        """Next token per row: argmax (greedy) or a draw from the processed
        distribution with ``o["rng"]`` (inverse CDF of one uniform per row)."""
        s = cls._process_scores(logits, seq, o)
        if not o["do_sample"]:
            return np.argmax(s, axis=1).astype(np.int64)
        V = s.shape[1]
        e = np.exp(s - s.max(axis=1, keepdims=True))
        cdf = np.cumsum(e, axis=1)
        u = o["rng"].random(s.shape[0]) * cdf[:, -1]
        tok = np.empty(s.shape[0], dtype=np.int64)
        for i in range(s.shape[0]):
            j = int(np.searchsorted(cdf[i], u[i], side="right"))
            tok[i] = j if j < V else int(np.flatnonzero(e[i])[-1])   # u rounded up
        return tok


def _resident(m, arena):
    """The block matrices and the output head (the arrays a decode step
    streams) copied into ``arena``'s huge pages, one at a time; a tied head
    stays the embedding."""
    if map_matrices(m, arena.copy):
        m.embed = m.lm_head
    return m


def _drain(gen):
    """Run a generator to its end; yields its return value last."""
    while True:
        try:
            next(gen)
        except StopIteration as e:
            yield e.value
            return


def _resolve_dtype(dtype):
    """float32 / float64 / bfloat16 (ValueError naming the allowed values;
    bfloat16 without ml_dtypes: ImportError with the install hint)."""
    from ._ops import resolve_dtype
    return resolve_dtype(dtype).type


def cfg_int(config, key, default=None, minimum=1):
    v = config.get(key, default)
    if not _is_int(v) or v < minimum:
        raise ValueError(f"config.json field {key} = {v!r} must be an integer >= {minimum}")
    return int(v)


def cfg_float(config, key, default=None, positive=True):
    v = config.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
            or (positive and v <= 0):
        raise ValueError(f"config.json field {key} = {v!r} must be a "
                         f"{'positive ' if positive else ''}number")
    return float(v)
