"""Transformer layers over fastattn's kernels.

Thin Python: projections are NumPy GEMMs, attention is
:func:`fastattn.scaled_dot_product_attention` reading strided views of the
projections, and bias / activation / residual / norm steps are fused Cython
loops over rows.  Weights are NumPy arrays owned by the layers (float32 or
float64), named like PyTorch's ``state_dict``; layers pickle, and
``save(path)`` / ``load(path)`` use safetensors (or ``.npz``).
"""
from .module import Module
from .layers import Linear, LayerNorm, RMSNorm, FeedForward
from .attention import MultiHeadAttention
from .cache import KVCache, LayerCache
from .transformer import (TransformerEncoderLayer, TransformerDecoderLayer,
                          TransformerEncoder, TransformerDecoder, Transformer,
                          generate_square_subsequent_mask)

__all__ = ["Module", "Linear", "LayerNorm", "RMSNorm", "FeedForward",
           "MultiHeadAttention", "KVCache", "LayerCache",
           "TransformerEncoderLayer", "TransformerDecoderLayer",
           "TransformerEncoder", "TransformerDecoder", "Transformer",
           "generate_square_subsequent_mask"]
