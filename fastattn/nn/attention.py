"""Multi-head attention over fastattn's fused kernel.

Data flow of one call (self-attention, ``batch_first=True``)::

    x (B, L, E) --one GEMM--> qkv (B*L, (H + 2*Hkv) * D)
        q, k, v = strided (B, heads, L, D) views of qkv      (no copy)
        [rotary applied in place on the q and k views]
        [k, v appended to the KV cache]
    kernel(q, k, v) --writes--> buf (B, L, H, D) through a (B, H, L, D) view
    buf.reshape(B*L, E) --one GEMM--> out (B, L, E)

With ``batch_first=False`` the same happens in ``(L, B, ...)`` order: the
token-major matrices are the same, only the views differ.

Masks follow ``torch.nn.MultiheadAttention`` (not SDPA): a boolean
``attn_mask`` / ``key_padding_mask`` is True where attention is NOT
allowed; a float mask is added to the scores.  They are converted to the
kernel's convention (True = take part) without expanding them per batch and
head: a ``key_padding_mask`` (B, S) becomes a broadcast (B, 1, 1, S) view.
Only when both masks are given are they combined, into one array of the
broadcast shape (as PyTorch does).  A query row that may see no key gives
zeros (PyTorch gives NaN there).
"""

import numpy as np

from ..functional import scaled_dot_product_attention, attention_weights
from ..positional import RotaryEmbedding, alibi_slopes as _alibi_slopes
from .layers import Linear, rows, gemm, gemm_via, _rng, _pos_int
from ..threads import for_attention
from .module import Module, check_input, _xavier_uniform

__all__ = ["MultiHeadAttention", "merge_masks"]


def _same(a, b):
    """True when ``a`` and ``b`` are the same array data (identity or the
    same view)."""
    if a is b:
        return True
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _mask_array(m, name, dtype):
    if not isinstance(m, np.ndarray):
        m = np.asarray(m)
    if m.dtype != np.bool_ and m.dtype.kind != "f":
        raise TypeError(f"{name} must be a bool or floating-point array, got "
                        f"dtype {m.dtype} (shape {m.shape})")
    if m.dtype.kind == "f" and m.dtype != dtype:
        m = m.astype(dtype)
    return m


def merge_masks(attn_mask, key_padding_mask, B, H, L, S, dtype, unbatched=False):
    """Convert ``nn.MultiheadAttention``-style masks to one kernel mask.

    Parameters
    ----------
    attn_mask : array, shape (L, S) or (B * H, L, S) ((H, L, S) unbatched), optional
        bool (True = masked out) or float (added).
    key_padding_mask : array, shape (B, S) ((S,) unbatched), optional
        bool (True = padding, masked out) or float (added).
    B, H, L, S : int
    dtype : the layer's float dtype (float masks are cast to it)

    Returns
    -------
    None, or an array broadcastable to (B, H, L, S) in the SDPA convention
    (bool True = take part; float added).
    """
    am = kp = None
    if attn_mask is not None:
        am = _mask_array(attn_mask, "attn_mask", dtype)
        lead = H if unbatched else B * H
        if am.ndim == 2 and am.shape == (L, S):
            pass
        elif am.ndim == 3 and am.shape == (lead, L, S):
            am = am.reshape((H, L, S) if unbatched else (B, H, L, S))
        else:
            what = "(heads, L, S)" if unbatched else "(batch * heads, L, S)"
            raise ValueError(f"attn_mask has shape {am.shape}; expected (L, S) = "
                             f"{(L, S)} or {what} = {(lead, L, S)}")
        if am.dtype == np.bool_:
            am = ~am
    if key_padding_mask is not None:
        kp = _mask_array(key_padding_mask, "key_padding_mask", dtype)
        want = (S,) if unbatched else (B, S)
        if kp.shape != want:
            raise ValueError(f"key_padding_mask has shape {kp.shape}; expected "
                             f"{'(S,)' if unbatched else '(batch, S)'} = {want}")
        kp = kp.reshape((1, S) if unbatched else (B, 1, 1, S))
        if kp.dtype == np.bool_:
            kp = ~kp
    if am is None:
        return kp
    if kp is None:
        return am
    if am.dtype == np.bool_ and kp.dtype == np.bool_:
        return am & kp
    neg = np.array(-np.inf, dtype=dtype)
    zero = np.array(0, dtype=dtype)
    if am.dtype == np.bool_:
        am = np.where(am, zero, neg)
    if kp.dtype == np.bool_:
        kp = np.where(kp, zero, neg)
    return am + kp


class MultiHeadAttention(Module):
    """Multi-head attention (``torch.nn.MultiheadAttention``) with
    grouped-query / multi-query attention, rotary embeddings, ALiBi, sliding
    windows and a KV cache.

    Parameters
    ----------
    embed_dim : int
        ``E``, the model size; also the size of the queries and outputs.
    num_heads : int
        ``H``, query heads; ``E`` must be divisible by ``H`` (head size
        ``D = E // H``).
    num_kv_heads : int, optional
        ``Hkv`` key/value heads (GQA); ``1`` is multi-query attention.
        Must divide ``num_heads``; defaults to ``num_heads``.
    bias : bool
        Biases on the input and output projections.
    kdim, vdim : int, optional
        Feature sizes of ``key`` and ``value`` (default ``embed_dim``).
        When they differ from ``embed_dim`` the projections are separate
        weights (``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``),
        as in PyTorch.
    batch_first : bool
        Inputs are ``(B, L, E)`` (True, the default here; PyTorch's default
        is False) or ``(L, B, E)``.
    rotary : RotaryEmbedding, optional
        Applied to queries and keys after projection (positions start at the
        cache length, or pass ``positions=`` to :meth:`forward`).
    alibi : bool or array_like of shape (H,)
        ALiBi: ``True`` uses :func:`fastattn.positional.alibi_slopes`.
    window : (left, right), optional
        Sliding-window attention (see :func:`fastattn.scaled_dot_product_attention`).
    dtype : float32 (default) or float64
    rng : int or Generator, optional
        Seed of the random initialisation (PyTorch's scheme: Xavier-uniform
        input projection, zero biases).

    Attributes
    ----------
    in_proj_weight : ndarray, shape ((H + 2 Hkv) D, E)
        Q, K and V projections stacked (only when ``kdim == vdim == E``).
    q_proj_weight, k_proj_weight, v_proj_weight : ndarray
        ``(H D, E)``, ``(Hkv D, kdim)``, ``(Hkv D, vdim)`` otherwise.
    in_proj_bias : ndarray, shape ((H + 2 Hkv) D,) or None
    out_proj : Linear(E, E)
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, bias=True,
                 kdim=None, vdim=None, batch_first=True, *, rotary=None,
                 alibi=False, window=None, dtype=None, rng=None):
        super().__init__(dtype)
        E = self.embed_dim = _pos_int(embed_dim, "embed_dim")
        H = self.num_heads = _pos_int(num_heads, "num_heads")
        if E % H:
            raise ValueError(f"embed_dim ({E}) must be divisible by num_heads ({H})")
        Hkv = self.num_kv_heads = H if num_kv_heads is None else _pos_int(num_kv_heads, "num_kv_heads")
        if H % Hkv:
            raise ValueError(f"num_heads ({H}) must be a multiple of num_kv_heads ({Hkv})")
        D = self.head_dim = E // H
        self.kdim = E if kdim is None else _pos_int(kdim, "kdim")
        self.vdim = E if vdim is None else _pos_int(vdim, "vdim")
        self.batch_first = bool(batch_first)
        self.separate = not (self.kdim == E and self.vdim == E)
        if rotary is not None and not isinstance(rotary, RotaryEmbedding):
            raise TypeError(f"rotary must be a RotaryEmbedding or None, got {type(rotary).__name__}")
        if rotary is not None and rotary.head_dim != D:
            raise ValueError(f"rotary head_dim ({rotary.head_dim}) != head size {D}")
        self.rotary = rotary
        if alibi is True:
            self.alibi_slopes = _alibi_slopes(H)
        elif alibi is False or alibi is None:
            self.alibi_slopes = None
        else:
            s = np.asarray(alibi, dtype=np.float64).reshape(-1)
            if s.size != H:
                raise ValueError(f"alibi slopes must have shape ({H},), got {np.shape(alibi)}")
            self.alibi_slopes = s
        if window is not None:
            window = tuple(window)
            if len(window) != 2:
                raise ValueError(f"window must be (left, right), got {window!r}")
        self.window = window
        g = _rng(rng)
        n_in = (H + 2 * Hkv) * D
        if not self.separate:
            self._param("in_proj_weight", _xavier_uniform(g, (n_in, E), self.dtype))
        else:
            self._param("q_proj_weight", _xavier_uniform(g, (H * D, E), self.dtype))
            self._param("k_proj_weight", _xavier_uniform(g, (Hkv * D, self.kdim), self.dtype))
            self._param("v_proj_weight", _xavier_uniform(g, (Hkv * D, self.vdim), self.dtype))
        self._param("in_proj_bias", np.zeros(n_in) if bias else None)
        self._child("out_proj", Linear(E, E, bias, dtype=self.dtype, rng=g))
        if bias:
            self.out_proj.bias[...] = 0

    def extra_repr(self):
        s = (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
             f"num_kv_heads={self.num_kv_heads}, batch_first={self.batch_first}")
        if self.separate:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.rotary is not None:
            s += f", rotary={self.rotary!r}"
        if self.alibi_slopes is not None:
            s += ", alibi=True"
        if self.window is not None:
            s += f", window={self.window}"
        return s + f", dtype={self.dtype}"

    # -- weights by role ----------------------------------------------------
    def _weights(self):
        """(Wq, Wk, Wv, bq, bk, bv) as views of the parameters."""
        qd = self.num_heads * self.head_dim
        kd = self.num_kv_heads * self.head_dim
        b = self.in_proj_bias
        bq = bk = bv = None
        if b is not None:
            bq, bk, bv = b[:qd], b[qd:qd + kd], b[qd + kd:]
        if self.separate:
            return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight, bq, bk, bv
        W = self.in_proj_weight
        return W[:qd], W[qd:qd + kd], W[qd + kd:], bq, bk, bv

    def project_kv(self, key, value=None, batch_first=None):
        """Project keys and values once (e.g. an encoder's memory reused at
        every decoding step).

        Parameters
        ----------
        key : ndarray, (B, S, kdim) or (S, B, kdim) (per ``batch_first``)
        value : ndarray, optional (defaults to ``key``)

        Returns
        -------
        (k, v) : ndarrays of shape (B, Hkv, S, D) (views of one buffer); pass
        them as ``kv=`` to :meth:`attend`.
        """
        value = key if value is None else value
        k_in = check_input(key, "key", self.dtype, self.kdim, ndims=(3,))
        v_in = check_input(value, "value", self.dtype, self.vdim, ndims=(3,))
        if k_in.shape[:2] != v_in.shape[:2]:
            raise ValueError(f"key and value differ in length or batch: key "
                             f"{k_in.shape}, value {v_in.shape}")
        bf = self.batch_first if batch_first is None else batch_first
        return self._kv_proj(k_in, v_in, bf)

    def _kv_proj(self, k_in, v_in, bf):
        """K and V projections of validated token-major inputs, as
        (B, Hkv, S, D) views (one GEMM when key is value)."""
        Hkv, D = self.num_kv_heads, self.head_dim
        tr = (0, 2, 1, 3) if bf else (1, 2, 0, 3)
        lead = k_in.shape[:2]
        _, Wk, Wv, _, bk, bv = self._weights()
        if _same(k_in, v_in) and not self.separate:
            b = self.in_proj_bias
            kvp = gemm(rows(k_in, self.kdim), self.in_proj_weight[self.num_heads * D:],
                       None if b is None else b[self.num_heads * D:])
            v5 = kvp.reshape(lead + (2 * Hkv, D))
            return v5[:, :, :Hkv].transpose(tr), v5[:, :, Hkv:].transpose(tr)
        kp = gemm(rows(k_in, self.kdim), Wk, bk)
        vp = gemm(rows(v_in, self.vdim), Wv, bv)
        return (kp.reshape(lead + (Hkv, D)).transpose(tr),
                vp.reshape(lead + (Hkv, D)).transpose(tr))

    # -- the call -----------------------------------------------------------
    def forward(self, query, key=None, value=None, key_padding_mask=None,
                need_weights=False, attn_mask=None, average_attn_weights=True,
                is_causal=False, *, cache=None, positions=None):
        """Attention of ``query`` over ``key``/``value``.

        Parameters
        ----------
        query : ndarray, (B, L, E) if batch_first else (L, B, E); or (L, E)
        key : ndarray, (B, S, kdim) / (S, B, kdim) / (S, kdim), optional
            Defaults to ``query`` (self-attention).  When ``query``, ``key``
            and ``value`` are the same array, Q, K and V come from one GEMM.
        value : ndarray, (B, S, vdim) / ..., optional
            Defaults to ``key``.
        key_padding_mask : ndarray, (B, S) or (S,), optional
            bool: True marks padding (ignored keys); float: added.
        need_weights : bool
            Also return the attention probabilities (materialised; slower).
            Default False (PyTorch's default is True).
        attn_mask : ndarray, (L, S) or (B * num_heads, L, S), optional
            bool: True = not allowed; float: added to the scores.
        average_attn_weights : bool
            Average the returned weights over heads.
        is_causal : bool
            Causal self-attention, computed by the kernel (blocks above the
            diagonal are skipped); no ``attn_mask`` is needed (unlike
            PyTorch, where it is a hint).  Combined with ``attn_mask`` both
            apply.  With a cache, query ``i`` sees cached keys and new keys
            up to itself (bottom-right alignment).
        cache : KVCache layer entry, optional
            Keys and values of this call are appended to it and the query
            attends to everything it holds (self-attention only).  Masks
            then cover ``S = cache length after the append``.
        positions : array_like of int, optional
            Rotary positions of the queries/keys (default: cache length +
            ``arange(L)``).

        Returns
        -------
        output : ndarray, same layout as ``query``, shape (..., E)
        weights : ndarray or None
            ``(B, L, S)`` averaged or ``(B, H, L, S)`` per head (batch
            first, whatever ``batch_first``), unbatched without ``B``.
        """
        a, weights, shape = self.attend(query, key, value, key_padding_mask,
                                        need_weights, attn_mask,
                                        average_attn_weights, is_causal, cache,
                                        positions)
        y = gemm(a, self.out_proj.weight, self.out_proj.bias)
        return y.reshape(shape), weights

    def attend(self, query, key=None, value=None, key_padding_mask=None,
               need_weights=False, attn_mask=None, average_attn_weights=True,
               is_causal=False, cache=None, positions=None, kv=None):
        """Everything but the output projection.

        ``kv``, if given, is a pair ``(k, v)`` of already projected keys and
        values, shape (B, Hkv, S, D) (from :meth:`project_kv`); ``key`` and
        ``value`` are then only used for their shapes.

        Returns
        -------
        rows : ndarray, shape (N, E)
            The heads' outputs side by side, token-major (N = B * L, in the
            input's order), ready for the output projection.
        weights : ndarray or None
        shape : tuple
            Shape of the layer's output (the query's shape with E).
        """
        E, H, Hkv, D = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
        dt = self.dtype
        q_in = check_input(query, "query", dt, E)
        if key is None:
            key = q_in
        if value is None:
            value = key
        k_in = check_input(key, "key", dt, self.kdim)
        v_in = check_input(value, "value", dt, self.vdim)
        if not (q_in.ndim == k_in.ndim == v_in.ndim):
            raise ValueError(f"query, key and value must all be batched or all "
                             f"unbatched; got shapes {q_in.shape}, {k_in.shape}, "
                             f"{v_in.shape}")
        if not isinstance(is_causal, (bool, np.bool_)):
            raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
        unbatched = q_in.ndim == 2
        out_shape = q_in.shape
        if unbatched:
            q_in, k_in, v_in = q_in[None], k_in[None], v_in[None]
        bf = self.batch_first or unbatched
        if bf:
            (B, L), (Bk, S), (Bv, Sv) = q_in.shape[:2], k_in.shape[:2], v_in.shape[:2]
        else:
            (L, B), (S, Bk), (Sv, Bv) = q_in.shape[:2], k_in.shape[:2], v_in.shape[:2]
        if Sv != S or Bv != Bk:
            raise ValueError(f"key and value differ in length or batch: key "
                             f"{tuple(key.shape)}, value {tuple(value.shape)}")
        if Bk != B:
            raise ValueError(f"query and key batch sizes differ: query "
                             f"{tuple(query.shape)}, key {tuple(key.shape)}")
        self_attn = _same(q_in, k_in) and _same(k_in, v_in)
        if cache is not None and not self_attn:
            raise ValueError("a KV cache is only for self-attention (key and "
                             "value must be the query itself)")

        def heads(t, n, lead):          # token-major rows -> (B, n, len, D)
            t4 = t.reshape(lead + (n, D))
            return t4.transpose(0, 2, 1, 3) if bf else t4.transpose(1, 2, 0, 3)

        lead_q = q_in.shape[:2]
        Wq, _, _, bq, _, _ = self._weights()
        # which GEMM ran the query projection tells the attention whether
        # BLAS's thread pool is still spinning next to it (for_attention)
        if kv is not None:
            qp, q_via = gemm_via(rows(q_in, E), Wq, bq)
            q4 = heads(qp, H, lead_q)
            k4, v4 = kv
        elif self_attn and not self.separate:
            qkv, q_via = gemm_via(rows(q_in, E), self.in_proj_weight, self.in_proj_bias)
            v5 = qkv.reshape(lead_q + (H + 2 * Hkv, D))
            tr = (0, 2, 1, 3) if bf else (1, 2, 0, 3)
            q4 = v5[:, :, :H].transpose(tr)
            k4 = v5[:, :, H:H + Hkv].transpose(tr)
            v4 = v5[:, :, H + Hkv:].transpose(tr)
        else:
            qp, q_via = gemm_via(rows(q_in, E), Wq, bq)
            q4 = heads(qp, H, lead_q)
            k4, v4 = self._kv_proj(k_in, v_in, bf)

        past = 0 if cache is None else cache.length
        if self.rotary is not None:
            if positions is None:
                self.rotary.apply(q4, offset=past, out=q4)
                self.rotary.apply(k4, offset=past, out=k4)
            else:
                self.rotary.apply(q4, positions, out=q4)
                self.rotary.apply(k4, positions, out=k4)
        if cache is not None:
            k4, v4 = cache.append(k4, v4)
            S = k4.shape[2]

        mask = merge_masks(attn_mask, key_padding_mask, B, H, L, S, dt, unbatched)
        align = "bottom_right" if cache is not None else "top_left"
        gqa = Hkv != H
        buf = np.empty(lead_q + (H, D), dtype=dt)
        o4 = buf.transpose(0, 2, 1, 3) if bf else buf.transpose(1, 2, 0, 3)
        weights = None
        if need_weights:
            w = attention_weights(q4, k4, mask, bool(is_causal), None, gqa,
                                  causal_alignment=align, window=self.window,
                                  alibi_slopes=self.alibi_slopes)
            G = H // Hkv
            o = np.matmul(w.reshape(B, Hkv, G * L, S), v4).reshape(B, H, L, D)
            o4[...] = o
            weights = w.mean(axis=1) if average_attn_weights else w
            if unbatched:
                weights = weights[0]
        else:
            scaled_dot_product_attention(q4, k4, v4, mask, 0.0, bool(is_causal),
                                         None, gqa, causal_alignment=align,
                                         window=self.window,
                                         alibi_slopes=self.alibi_slopes, out=o4,
                                         num_threads=for_attention(
                                             4 * B * H * L * S * D,
                                             other_pool_hot=q_via == "blas"))
        return buf.reshape(-1, E), weights, out_shape
