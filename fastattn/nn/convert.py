"""Conversion from PyTorch modules: :func:`from_torch` (re-exported as
``fastattn.from_torch``) and :func:`torch_state_dict`.

torch is not imported by this module: the functions read the module they
are given (its ``state_dict`` and configuration attributes) and import
``torch.nn.functional`` only inside a call, to recognise activation
functions, so fastattn runs without torch installed.  File I/O lives in
:mod:`fastattn.weights`, which imports nothing from :mod:`fastattn.nn`.
"""
import numpy as np

from .attention import MultiHeadAttention
from .layers import Linear, LayerNorm, RMSNorm
from .transformer import (TransformerEncoderLayer, TransformerDecoderLayer,
                          TransformerEncoder, TransformerDecoder, Transformer)

__all__ = ["from_torch", "torch_state_dict"]


def torch_state_dict(module):
    """``module.state_dict()`` as ``{name: ndarray}`` (detached copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _torch_dtype(module):
    for p in module.parameters():
        name = str(p.dtype)
        if name == "torch.float64":
            return np.float64
        return np.float32
    return np.float32


def _torch_activation(layer):
    import torch.nn.functional as F
    act = layer.activation
    if act is F.relu or type(act).__name__ == "ReLU":
        return "relu"
    if act is F.gelu:
        return "gelu"
    if type(act).__name__ == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if act is F.silu or type(act).__name__ == "SiLU":
        return "silu"
    raise NotImplementedError(f"activation {act!r} has no fastattn equivalent")


def _from_mha(m, dtype):
    if m.bias_k is not None or m.add_zero_attn:
        raise NotImplementedError("nn.MultiheadAttention with add_bias_kv or "
                                  "add_zero_attn is not supported")
    if not m._qkv_same_embed_dim and m.in_proj_bias is None:
        bias = m.out_proj.bias is not None
    else:
        bias = m.in_proj_bias is not None
    return MultiHeadAttention(m.embed_dim, m.num_heads, bias=bias, kdim=m.kdim,
                              vdim=m.vdim, batch_first=m.batch_first, dtype=dtype)


def _enc_layer(m, dtype):
    return TransformerEncoderLayer(
        m.self_attn.embed_dim, m.self_attn.num_heads, m.linear1.out_features,
        0.0, _torch_activation(m), m.norm1.eps, m.self_attn.batch_first,
        m.norm_first, m.linear1.bias is not None, dtype=dtype)


def _dec_layer(m, dtype):
    return TransformerDecoderLayer(
        m.self_attn.embed_dim, m.self_attn.num_heads, m.linear1.out_features,
        0.0, _torch_activation(m), m.norm1.eps, m.self_attn.batch_first,
        m.norm_first, m.linear1.bias is not None, dtype=dtype)


def _norm(m, dtype):
    if m is None:
        return None
    return _convert(m, dtype)


def _convert(m, dtype):
    kind = type(m).__name__
    if kind == "Linear" or kind == "NonDynamicallyQuantizableLinear":
        return Linear(m.in_features, m.out_features, m.bias is not None, dtype=dtype)
    if kind == "LayerNorm":
        return LayerNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine,
                         bias=m.bias is not None, dtype=dtype)
    if kind == "RMSNorm":
        return RMSNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine,
                       dtype=dtype)
    if kind == "MultiheadAttention":
        return _from_mha(m, dtype)
    if kind == "TransformerEncoderLayer":
        return _enc_layer(m, dtype)
    if kind == "TransformerDecoderLayer":
        return _dec_layer(m, dtype)
    if kind == "TransformerEncoder":
        return TransformerEncoder(_enc_layer(m.layers[0], dtype), len(m.layers),
                                  _norm(m.norm, dtype))
    if kind == "TransformerDecoder":
        return TransformerDecoder(_dec_layer(m.layers[0], dtype), len(m.layers),
                                  _norm(m.norm, dtype))
    if kind == "Transformer":
        enc = _convert(m.encoder, dtype)
        dec = _convert(m.decoder, dtype)
        sa = m.encoder.layers[0].self_attn
        return Transformer(sa.embed_dim, sa.num_heads, custom_encoder=enc,
                           custom_decoder=dec, batch_first=sa.batch_first,
                           dtype=dtype)
    raise NotImplementedError(f"from_torch does not know torch.nn.{kind}")


def from_torch(module, dtype=None):
    """A fastattn layer with the configuration and weights of a PyTorch module.

    Supported: ``Linear``, ``LayerNorm``, ``RMSNorm``, ``MultiheadAttention``
    (without ``add_bias_kv`` / ``add_zero_attn``), ``TransformerEncoderLayer``,
    ``TransformerDecoderLayer``, ``TransformerEncoder``, ``TransformerDecoder``
    and ``Transformer`` (activations ReLU, GELU exact or tanh, SiLU).

    Parameters
    ----------
    module : torch.nn.Module
    dtype : float32 or float64, optional
        Defaults to the module's parameter dtype (float64 stays float64,
        anything else becomes float32).

    Returns
    -------
    fastattn.nn.Module
        Same ``state_dict`` names as the torch module; evaluates like the
        torch module in eval mode (dropout off).
    """
    dt = _torch_dtype(module) if dtype is None else dtype
    layer = _convert(module, dt)
    sd = torch_state_dict(module)
    if type(module).__name__ == "MultiheadAttention" and layer.in_proj_bias is None:
        sd.pop("in_proj_bias", None)
    layer.load_state_dict(sd, strict=True)
    return layer
