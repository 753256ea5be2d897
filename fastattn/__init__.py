"""fastattn: fast CPU attention and transformer layers.

Cython + OpenMP kernels (with hand-written SIMD tiles) under a NumPy API.
"""
from ._version import __version__
from . import _check_build

_check_build.check()  # an unbuilt source tree: an ImportError that says what to do
from ._dispatch import kernels, isa
from .threads import set_num_threads, get_num_threads, threads, describe_num_threads
from .functional import (scaled_dot_product_attention, varlen_attention,
                         attention_scores, softmax, weighted_sum, attention_weights)
from . import reference, nn, positional, weights, bf16
from .nn.convert import from_torch

__all__ = [
    "__version__", "scaled_dot_product_attention", "varlen_attention",
    "attention_scores",
    "softmax", "weighted_sum", "attention_weights", "set_num_threads",
    "get_num_threads", "threads", "describe_num_threads", "reference", "isa", "kernels",
    "nn", "positional", "weights", "from_torch", "bf16",
]
