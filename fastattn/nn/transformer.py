"""Transformer encoder/decoder layers and stacks with PyTorch's interface.

Same constructor arguments, defaults, forward arguments and ``state_dict``
names as ``torch.nn.TransformerEncoderLayer``, ``TransformerDecoderLayer``,
``TransformerEncoder``, ``TransformerDecoder`` and ``Transformer`` (so
:func:`fastattn.from_torch` is a plain copy of the state dict), for
inference: ``dropout`` is accepted and ignored (eval mode).

Inside a layer every sub-block is::

    GEMM(s) on token-major rows  ->  one fused pass: + bias + residual -> norm

so the output projection's bias, the residual add and the LayerNorm of the
post-norm layout (or the next pre-norm) are a single loop over the rows
(:func:`fastattn.nn._ops.add_norm`), and the feed-forward's bias and
activation another.  Masks follow ``torch.nn.MultiheadAttention``
(bool True = not allowed, float added); see :mod:`fastattn.nn.attention`.
"""
import copy

import numpy as np

from . import _ops
from .attention import MultiHeadAttention
from .layers import (Linear, LayerNorm, rows, gemm, feed_forward_rows,
                     check_activation, _rng, _pos_int)
from .module import Module, check_input, _xavier_uniform

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer",
           "TransformerEncoder", "TransformerDecoder", "Transformer",
           "generate_square_subsequent_mask"]


def generate_square_subsequent_mask(sz, dtype=np.float32):
    """The float causal mask PyTorch's ``Transformer`` builds: ``-inf`` above
    the diagonal, 0 elsewhere, shape (sz, sz).  (``is_causal=True`` gives the
    same result faster, without a mask.)"""
    m = np.zeros((sz, sz), dtype=dtype)
    m[np.triu_indices(sz, 1)] = -np.inf
    return m


def _act_from(activation):
    return check_activation(activation)


def _norm_params(norm):
    return norm.weight, norm.bias, norm.eps


def _bool_or_none(v, name):
    if v is None:
        return None
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool or None, got {type(v).__name__}")
    return bool(v)


class _Layer(Module):
    """Shared construction of the encoder and decoder layers."""

    @staticmethod
    def _add_norm(norm, y, bias, resid, **buffers):
        """``(y + bias + resid, LayerNorm_norm(y + bias + resid))`` in one fused
        pass over rows (``buffers``: optional outputs to write into)."""
        w, b, eps = _norm_params(norm)
        return _ops.add_norm(y, bias, resid, "layer", w, b, eps, **buffers)

    def _init_common(self, d_model, nhead, dim_feedforward, dropout, activation,
                     layer_norm_eps, batch_first, norm_first, bias, dtype, rng,
                     n_norms, num_kv_heads=None):
        self.d_model = _pos_int(d_model, "d_model")
        self.nhead = _pos_int(nhead, "nhead")
        self.dim_feedforward = _pos_int(dim_feedforward, "dim_feedforward")
        self.dropout = float(dropout)
        self.activation = _act_from(activation)
        self.layer_norm_eps = float(layer_norm_eps)
        self.batch_first = bool(batch_first)
        self.norm_first = bool(norm_first)
        g = _rng(rng)
        self._child("self_attn", MultiHeadAttention(
            d_model, nhead, num_kv_heads, bias=bias, batch_first=batch_first,
            dtype=self.dtype, rng=g))
        return g

    def _init_ff(self, bias, g, n_norms):
        F = self.dim_feedforward
        n1 = 2 * F if self.activation == "swiglu" else F
        self._child("linear1", Linear(self.d_model, n1, bias, dtype=self.dtype, rng=g))
        self._child("linear2", Linear(F, self.d_model, bias, dtype=self.dtype, rng=g))
        for i in range(1, n_norms + 1):
            self._child(f"norm{i}", LayerNorm(self.d_model, self.layer_norm_eps,
                                              bias=bias, dtype=self.dtype))

    def extra_repr(self):
        act = self.activation if isinstance(self.activation, str) else repr(self.activation)
        return (f"d_model={self.d_model}, nhead={self.nhead}, "
                f"dim_feedforward={self.dim_feedforward}, activation={act}, "
                f"norm_first={self.norm_first}, batch_first={self.batch_first}, "
                f"dtype={self.dtype}")

    def _ff(self, x2):
        """feed-forward without linear2's bias (fused by the caller)."""
        return feed_forward_rows(x2, self.linear1, self.linear2, self.activation,
                                 add_bias2=False)


class TransformerEncoderLayer(_Layer):
    """Self-attention and feed-forward, each with a residual and a
    LayerNorm (``torch.nn.TransformerEncoderLayer``).

    Parameters
    ----------
    d_model : int
    nhead : int
    dim_feedforward : int
    dropout : float
        Ignored (inference only); kept for PyTorch's signature.
    activation : {"relu", "gelu", "gelu_tanh", "silu", "swiglu"} or callable
    layer_norm_eps : float
    batch_first : bool
        ``(B, L, E)`` inputs if True, ``(L, B, E)`` if False (the default,
        like PyTorch).
    norm_first : bool
        Pre-norm (``x + sa(norm1(x))``) instead of post-norm
        (``norm1(x + sa(x))``).
    bias : bool
    num_kv_heads : int, optional
        Grouped-query self-attention (not in PyTorch).
    dtype : float32 (default) or float64
    rng : int or Generator, optional
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1,
                 activation="relu", layer_norm_eps=1e-5, batch_first=False,
                 norm_first=False, bias=True, *, num_kv_heads=None, dtype=None,
                 rng=None):
        super().__init__(dtype)
        g = self._init_common(d_model, nhead, dim_feedforward, dropout, activation,
                              layer_norm_eps, batch_first, norm_first, bias, dtype,
                              rng, 2, num_kv_heads)
        self._init_ff(bias, g, 2)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        """Parameters
        ----------
        src : ndarray, (B, L, E) if batch_first else (L, B, E); or (L, E)
        src_mask : ndarray, (L, L) or (B * nhead, L, L), optional
            bool (True = not allowed) or float (added).
        src_key_padding_mask : ndarray, (B, L) (or (L,)), optional
            bool (True = padding) or float (added).
        is_causal : bool
            Causal self-attention computed by the kernel (no mask needed).

        Returns
        -------
        ndarray, same shape as ``src``
        """
        x = check_input(src, "src", self.dtype, self.d_model)
        is_causal = bool(_bool_or_none(is_causal, "is_causal"))
        x2 = rows(x, self.d_model)
        sa = self.self_attn
        if self.norm_first:
            _, n = self._add_norm(self.norm1, x2, None, None)
            a, _, _ = sa.attend(n.reshape(x.shape), None, None, src_key_padding_mask,
                                False, src_mask, True, is_causal)
            y = gemm(a, sa.out_proj.weight)
            # residual stream into y (a fresh buffer), its norm into n
            s, n = self._add_norm(self.norm2, y, sa.out_proj.bias, x2, s=y, n=n)
            f = self._ff(n)
            out, _ = _ops.add_norm(f, self.linear2.bias, s, "none", s=f)
        else:
            a, _, _ = sa.attend(x, None, None, src_key_padding_mask, False,
                                src_mask, True, is_causal)
            y = gemm(a, sa.out_proj.weight)
            _, x1 = self._add_norm(self.norm1, y, sa.out_proj.bias, x2, n=y)
            f = self._ff(x1)
            _, out = self._add_norm(self.norm2, f, self.linear2.bias, x1, n=f)
        return out.reshape(x.shape)


class TransformerDecoderLayer(_Layer):
    """Self-attention, cross-attention over the encoder's memory, and
    feed-forward, each with a residual and a LayerNorm
    (``torch.nn.TransformerDecoderLayer``).

    Parameters are those of :class:`TransformerEncoderLayer`.  The layer owns
    ``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``,
    ``norm2`` and ``norm3`` (PyTorch's names).
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1,
                 activation="relu", layer_norm_eps=1e-5, batch_first=False,
                 norm_first=False, bias=True, *, num_kv_heads=None, dtype=None,
                 rng=None):
        super().__init__(dtype)
        g = self._init_common(d_model, nhead, dim_feedforward, dropout, activation,
                              layer_norm_eps, batch_first, norm_first, bias, dtype,
                              rng, 3, num_kv_heads)
        self._child("multihead_attn", MultiHeadAttention(
            d_model, nhead, num_kv_heads, bias=bias, batch_first=batch_first,
            dtype=self.dtype, rng=g))
        self._init_ff(bias, g, 3)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None,
                tgt_is_causal=False, memory_is_causal=False, *, cache=None):
        """Parameters
        ----------
        tgt : ndarray, (B, T, E) if batch_first else (T, B, E); or (T, E)
        memory : ndarray, (B, S, E) / (S, B, E) / (S, E)
            The encoder's output.
        tgt_mask : ndarray, (T, T') or (B * nhead, T, T'), optional
            T' = T, or the cache length after this step with a cache.
        memory_mask : ndarray, (T, S) or (B * nhead, T, S), optional
        tgt_key_padding_mask : ndarray, (B, T'), optional
        memory_key_padding_mask : ndarray, (B, S), optional
        tgt_is_causal : bool or None
            Causal self-attention by the kernel.  ``None``: True with a cache,
            False without.
        memory_is_causal : bool
        cache : LayerCache, optional
            Incremental decoding: ``tgt`` holds only the new positions; their
            keys/values are appended and attend to all earlier ones.  The
            projected ``memory`` is kept in the cache after the first step
            (pass the same memory every step, or ``cache.reset()``).

        Returns
        -------
        ndarray, same shape as ``tgt``
        """
        x = check_input(tgt, "tgt", self.dtype, self.d_model)
        mem = check_input(memory, "memory", self.dtype, self.d_model)
        if mem.ndim != x.ndim:
            raise ValueError(f"tgt {x.shape} and memory {mem.shape} must both be "
                             "batched or both unbatched")
        tgt_is_causal = _bool_or_none(tgt_is_causal, "tgt_is_causal")
        if tgt_is_causal is None:
            tgt_is_causal = cache is not None
        memory_is_causal = bool(_bool_or_none(memory_is_causal, "memory_is_causal"))
        x2 = rows(x, self.d_model)
        sa, ca = self.self_attn, self.multihead_attn
        kv = None
        if cache is not None and cache.cross_kv is not None:
            kv = cache.cross_kv
        elif cache is not None:
            kv = (ca.project_kv(mem) if mem.ndim == 3 else
                  ca.project_kv(mem[None], batch_first=True))
            cache.cross_kv = kv

        def cross(q):
            a, _, _ = ca.attend(q.reshape(x.shape), mem, mem, memory_key_padding_mask,
                                False, memory_mask, True, memory_is_causal, kv=kv)
            return a

        if self.norm_first:
            _, n = self._add_norm(self.norm1, x2, None, None)
            a, _, _ = sa.attend(n.reshape(x.shape), None, None, tgt_key_padding_mask,
                                False, tgt_mask, True, tgt_is_causal, cache)
            y = gemm(a, sa.out_proj.weight)
            s, n = self._add_norm(self.norm2, y, sa.out_proj.bias, x2, s=y, n=n)
            y = gemm(cross(n), ca.out_proj.weight)
            s, n = self._add_norm(self.norm3, y, ca.out_proj.bias, s, s=y, n=n)
            f = self._ff(n)
            out, _ = _ops.add_norm(f, self.linear2.bias, s, "none", s=f)
        else:
            a, _, _ = sa.attend(x, None, None, tgt_key_padding_mask, False,
                                tgt_mask, True, tgt_is_causal, cache)
            y = gemm(a, sa.out_proj.weight)
            _, x1 = self._add_norm(self.norm1, y, sa.out_proj.bias, x2, n=y)
            y = gemm(cross(x1), ca.out_proj.weight)
            _, x1 = self._add_norm(self.norm2, y, ca.out_proj.bias, x1, n=y)
            f = self._ff(x1)
            _, out = self._add_norm(self.norm3, f, self.linear2.bias, x1, n=f)
        return out.reshape(x.shape)


class _Stack(Module):
    def _init_stack(self, layer, num_layers, norm, kind):
        if not isinstance(layer, kind):
            raise TypeError(f"expected a {kind.__name__}, got {type(layer).__name__}")
        n = _pos_int(num_layers, "num_layers")
        self._child("layers", [copy.deepcopy(layer) for _ in range(n)])
        self.num_layers = n
        if norm is not None and not isinstance(norm, Module):
            raise TypeError(f"norm must be a fastattn layer or None, got {type(norm).__name__}")
        self._child("norm", norm)

    def _final(self, x):
        return x if self.norm is None else self.norm(x)


class TransformerEncoder(_Stack):
    """A stack of ``num_layers`` copies of ``encoder_layer``
    (``torch.nn.TransformerEncoder``), optionally followed by ``norm``.

    Parameters
    ----------
    encoder_layer : TransformerEncoderLayer
        Deep-copied ``num_layers`` times.
    num_layers : int
    norm : LayerNorm, optional
    enable_nested_tensor, mask_check : bool
        Accepted for PyTorch's signature; no effect.  (PyTorch's nested
        tensor fast path returns zeros at padded positions; fastattn
        computes them like any other position.)
    """

    def __init__(self, encoder_layer, num_layers, norm=None,
                 enable_nested_tensor=True, mask_check=True):
        super().__init__(encoder_layer.dtype)
        self._init_stack(encoder_layer, num_layers, norm, TransformerEncoderLayer)

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        """src : (B, L, E) / (L, B, E) -> same shape; masks as in
        :meth:`TransformerEncoderLayer.forward`.  ``is_causal=None`` means
        False (a causal ``mask``, if given, is applied as a mask)."""
        is_causal = bool(_bool_or_none(is_causal, "is_causal"))
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask, is_causal)
        return self._final(x)


class TransformerDecoder(_Stack):
    """A stack of ``num_layers`` copies of ``decoder_layer``
    (``torch.nn.TransformerDecoder``), optionally followed by ``norm``."""

    def __init__(self, decoder_layer, num_layers, norm=None):
        super().__init__(decoder_layer.dtype)
        self._init_stack(decoder_layer, num_layers, norm, TransformerDecoderLayer)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None,
                tgt_is_causal=None, memory_is_causal=False, *, cache=None):
        """See :meth:`TransformerDecoderLayer.forward`; ``cache`` is a
        :class:`KVCache` with one entry per layer."""
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"the cache has {len(cache)} layers, the decoder "
                             f"{len(self.layers)}")
        x = tgt
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                      memory_key_padding_mask, tgt_is_causal, memory_is_causal,
                      cache=None if cache is None else cache[i])
        return self._final(x)


class Transformer(Module):
    """The encoder-decoder of "Attention Is All You Need"
    (``torch.nn.Transformer``): an encoder stack and a decoder stack, each
    ending with a LayerNorm.

    Parameters
    ----------
    d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
    dim_feedforward=2048, dropout=0.1 (ignored), activation="relu",
    custom_encoder=None, custom_decoder=None, layer_norm_eps=1e-5,
    batch_first=False, norm_first=False, bias=True
        As in PyTorch.
    dtype : float32 (default) or float64
    rng : int or Generator, optional
    """

    def __init__(self, d_model=512, nhead=8, num_encoder_layers=6,
                 num_decoder_layers=6, dim_feedforward=2048, dropout=0.1,
                 activation="relu", custom_encoder=None, custom_decoder=None,
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False,
                 bias=True, *, dtype=None, rng=None):
        super().__init__(dtype)
        g = _rng(rng)
        self.d_model = _pos_int(d_model, "d_model")
        self.nhead = _pos_int(nhead, "nhead")
        self.batch_first = bool(batch_first)
        if custom_encoder is not None:
            enc = custom_encoder
        else:
            layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                            activation, layer_norm_eps, batch_first,
                                            norm_first, bias, dtype=self.dtype, rng=g)
            enc = TransformerEncoder(layer, num_encoder_layers,
                                     LayerNorm(d_model, layer_norm_eps, bias=bias,
                                               dtype=self.dtype))
        if custom_decoder is not None:
            dec = custom_decoder
        else:
            layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout,
                                            activation, layer_norm_eps, batch_first,
                                            norm_first, bias, dtype=self.dtype, rng=g)
            dec = TransformerDecoder(layer, num_decoder_layers,
                                     LayerNorm(d_model, layer_norm_eps, bias=bias,
                                               dtype=self.dtype))
        self._child("encoder", enc)
        self._child("decoder", dec)
        if custom_encoder is None and custom_decoder is None:
            # PyTorch re-initialises every matrix with Xavier-uniform
            for _, p in self.named_parameters():
                if p.ndim > 1:
                    p[...] = _xavier_uniform(g, p.shape, self.dtype)

    generate_square_subsequent_mask = staticmethod(generate_square_subsequent_mask)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, src_is_causal=None,
                tgt_is_causal=None, memory_is_causal=False):
        """Encode ``src`` and decode ``tgt`` against it.

        Parameters
        ----------
        src : ndarray, (B, S, E) if batch_first else (S, B, E); or (S, E)
        tgt : ndarray, (B, T, E) / (T, B, E) / (T, E)
        masks : as in the encoder and decoder layers

        Returns
        -------
        ndarray, same shape as ``tgt``
        """
        s = check_input(src, "src", self.dtype, self.d_model)
        t = check_input(tgt, "tgt", self.dtype, self.d_model)
        if s.ndim != t.ndim:
            raise ValueError(f"src {s.shape} and tgt {t.shape} must both be batched "
                             "or both unbatched")
        if s.ndim == 3:
            bs, bt = (s.shape[0], t.shape[0]) if self.batch_first else (s.shape[1], t.shape[1])
            if bs != bt:
                raise ValueError(f"the batch size of src and tgt must be equal: "
                                 f"src {s.shape}, tgt {t.shape}")
        memory = self.encoder(s, src_mask, src_key_padding_mask, src_is_causal)
        return self.decoder(t, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                            memory_key_padding_mask, tgt_is_causal, memory_is_causal)
