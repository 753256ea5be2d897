"""Linear, LayerNorm, RMSNorm and FeedForward.

Projections are single GEMMs on ``(tokens, features)`` matrices
(:func:`gemm`: fastattn's tiled OpenMP GEMM with the bias and ReLU fused in,
or BLAS for a few rows); everything after them (activation, residual, norm)
is one fused Cython pass over the rows (:mod:`fastattn.nn._ops`).  All of a
layer's kernels thus run on one OpenMP team, one after the other.
"""
import numbers

import numpy as np

from . import _ops
from .module import Module, check_input, _kaiming_uniform
from .._dispatch import kernels as _kern
from ..threads import for_flops, for_stream

__all__ = ["Linear", "LayerNorm", "RMSNorm", "FeedForward", "rows", "gemm",
           "gemm_via", "gemv", "GEMV_MAX_ROWS", "ACTIVATIONS"]

#: activation names accepted by FeedForward and the transformer layers
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu")


def rows(x, C):
    """``x`` as an ``(N, C)`` matrix with a contiguous last axis (a view when
    possible, else one copy)."""
    x2 = x.reshape(-1, C)
    if C > 1 and x2.strides[1] != x2.itemsize or (x2.shape[0] > 1 and x2.strides[0] < C * x2.itemsize):
        x2 = np.ascontiguousarray(x2)
    return x2


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _pos_int(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _norm_shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    shape = tuple(int(s) for s in normalized_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"normalized_shape must be positive sizes, got {normalized_shape!r}")
    return shape


def gemm(x2, w, bias=None, relu=False, out=None):
    """``relu?(x2 @ w.T + bias)`` for a (N, in) matrix and a torch-layout
    (out, in) weight; ``out`` (N, out) is allocated when not given.

    From :data:`TILE_GEMM_MIN_ROWS` rows on, this is fastattn's own tiled
    GEMM (the attention kernel's register tile, OpenMP, bias and ReLU fused
    into the store): a layer then runs every kernel on one thread pool, and
    the attention that follows a projection no longer shares the cores with
    BLAS workers still spinning from it (measured in NOTES.md).  Blocks of
    fewer than 64 rows run on the narrow-lane variant of the tile, which
    gives the same bits (NOTES.md, "the narrow-lane tile"); a single row
    (decoding one token) goes to BLAS, whose matrix-vector path is about
    twice as fast there as any lane layout that keeps the tile's order.
    :func:`gemm_via` also says which of the two ran.
    """
    return gemm_via(x2, w, bias, relu, out)[0]


def gemm_via(x2, w, bias=None, relu=False, out=None):
    """:func:`gemm`, returning ``(out, via)`` where ``via`` is ``"tiles"``
    (fastattn's OpenMP GEMM) or ``"blas"`` (NumPy's matmul: its thread
    pool is then hot, see :func:`fastattn.threads.for_attention`)."""
    N, K = x2.shape
    if w.ndim != 2 or w.shape[1] != K:
        raise ValueError(f"weight must have shape (out_features, {K}) for input rows of "
                         f"{K} features, got {w.shape}")
    M = w.shape[0]
    if bias is not None and bias.shape != (M,):
        raise ValueError(f"bias must have shape ({M},), got {bias.shape}")
    if out is None:
        out = np.empty((N, M), dtype=x2.dtype)
    elif out.shape != (N, M):
        raise ValueError(f"out must have shape {(N, M)}, got {out.shape}")
    if N >= TILE_GEMM_MIN_ROWS and _tile_ok(x2, w, bias, out):
        it = x2.itemsize
        nt = for_flops(None, 2 * N * M * K)
        _kern.linear(_kern.LinearCall(x=x2, xs=x2.strides[0] // it, w=w,
                                      ws=w.strides[0] // it, bias=bias, relu=bool(relu),
                                      out=out, ys=out.strides[0] // it, nthreads=nt))
        return out, "tiles"
    y = np.matmul(x2, w.T, out=out)
    if bias is not None:
        y += bias
    if relu:
        np.maximum(y, 0, out=y)
    return y, "blas"


#: up to this many rows the decoders' projections take :func:`gemv` (W read
#: once per call in rows; from 16 rows on the narrow GEMM tile reuses W better)
GEMV_MAX_ROWS = 16

_GEMV_ACTS = (None, "identity", "relu", "gelu", "gelu_tanh", "silu")


def _fwd_rows(a, name):
    """``a`` (2-D) with a contiguous last axis and a forward row stride (a
    copy otherwise)."""
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if (a.shape[1] > 1 and a.strides[1] != a.itemsize) or a.strides[0] < a.shape[1] * a.itemsize \
            or a.strides[0] % a.itemsize:
        a = np.ascontiguousarray(a)
    return a


def gemv(x2, w, bias=None, act=None, glu=False, out=None, num_threads=None):
    """``act(x2 @ w.T + bias)`` for a few rows ``x2`` (M, K) and a
    torch-layout weight ``w`` (N, K), on fastattn's own OpenMP team.

    The rows-layout GEMV of ``fastattn/src/fa_gemv.h``: W is read once per
    call, in place, whatever M is (every W row meets all M rows while it is
    in cache), with vector accumulators over K in a fixed order, so the
    result is bit-identical for any thread count and a row's result does
    not depend on the other rows.  Made for decoding (M = batch rows, up to
    :data:`GEMV_MAX_ROWS`); larger M runs in blocks of 64 rows.

    ``act``: None, ``"relu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"silu"``,
    applied in the store after the bias.  ``glu=True``: ``w`` is (2F, K)
    with the gate rows first and the result (M, F) is
    ``silu(gate + bias[:F]) * (up + bias[F:])`` (SwiGLU in one pass).
    """
    x2 = np.asarray(x2)
    w = np.asarray(w)
    if x2.ndim != 2:
        raise ValueError(f"x2 must be a 2-D (rows, features) matrix, got shape {x2.shape}")
    M, K = x2.shape
    if w.ndim != 2 or w.shape[1] != K:
        raise ValueError(f"weight must have shape (out_features, {K}) for input rows of "
                         f"{K} features, got {w.shape}")
    dt = x2.dtype
    if dt not in (np.float32, np.float64):
        raise TypeError(f"gemv: x2 must be float32 or float64, got {dt}")
    if w.dtype != dt or (bias is not None and np.asarray(bias).dtype != dt):
        raise TypeError(f"gemv: weight and bias must share x2's dtype {dt}, got "
                        f"{w.dtype}" + ("" if bias is None else f" and {np.asarray(bias).dtype}"))
    if act not in _GEMV_ACTS:
        raise ValueError(f"act must be one of {_GEMV_ACTS}, got {act!r}")
    if not isinstance(glu, (bool, np.bool_)):
        raise TypeError(f"glu must be a bool, got {type(glu).__name__}")
    if glu and act not in (None, "identity"):
        raise ValueError("gemv: glu=True is SwiGLU (SiLU on the gate); act must be None")
    Nw = w.shape[0]
    if glu and Nw % 2:
        raise ValueError(f"gemv: glu=True needs an even number of weight rows (gate, up), "
                         f"got {Nw}")
    N = Nw // 2 if glu else Nw
    if bias is not None:
        bias = np.ascontiguousarray(bias)
        if bias.shape != (Nw,):
            raise ValueError(f"bias must have shape ({Nw},), got {bias.shape}")
    if out is None:
        out = np.empty((M, N), dtype=dt)
    else:
        if not isinstance(out, np.ndarray) or out.shape != (M, N) or out.dtype != dt:
            raise ValueError(f"out must be a {np.dtype(dt).name} array of shape {(M, N)}, got "
                             f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out))}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        if out.ndim == 2 and ((N > 1 and out.strides[1] != out.itemsize)
                              or (M > 1 and out.strides[0] < N * out.itemsize)
                              or out.strides[0] % out.itemsize):
            raise ValueError("out must have a contiguous last axis and forward rows")
        for a in (x2, w, bias):
            if a is not None and np.may_share_memory(out, a) and np.shares_memory(out, a):
                raise ValueError("out must not overlap x2, weight or bias")
    if M == 0 or N == 0:
        return out
    x2 = _fwd_rows(x2, "x2")
    w = _fwd_rows(w, "weight")
    it = x2.itemsize
    nt = for_stream(num_threads, w.nbytes)
    code = _kern.GEMV_ACTS[act]
    ys = out.strides[0] // it if M > 1 else N
    for m0 in range(0, M, _kern.GEMV_MAX_ROWS):
        xb = x2[m0:m0 + _kern.GEMV_MAX_ROWS]
        ob = out[m0:m0 + _kern.GEMV_MAX_ROWS]
        _kern.gemv(_kern.GemvCall(x=xb, xs=xb.strides[0] // it if xb.shape[0] > 1 else K,
                                  w=w, ws=w.strides[0] // it, bias=bias, act=code,
                                  glu=bool(glu), out=ob, ys=ys, nthreads=nt))
    return out


#: below this many rows a projection goes to BLAS (see :func:`gemm`): from 2
#: rows on the narrow tile beat BLAS in NOTES.md's small-M table
TILE_GEMM_MIN_ROWS = 2


def _tile_ok(x2, w, bias, out):
    """The tiled GEMM's preconditions: one float dtype, 2-D operands with a
    contiguous last axis and forward row strides, a contiguous bias."""
    dt = x2.dtype
    if dt not in (np.float32, np.float64) or w.dtype != dt or out.dtype != dt:
        return False
    for a in (x2, w, out):
        if a.ndim != 2 or (a.shape[1] > 1 and a.strides[1] != a.itemsize) \
                or a.strides[0] < a.shape[1] * a.itemsize or a.strides[0] % a.itemsize:
            return False
    if not out.flags.writeable or np.shares_memory(out, x2) or np.shares_memory(out, w):
        return False
    return bias is None or (bias.dtype == dt and bias.ndim == 1 and bias.flags.c_contiguous)


class Linear(Module):
    """``y = x @ weight.T + bias`` (``torch.nn.Linear``).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : float32 (default) or float64
    rng : int or numpy.random.Generator, optional
        Seeds the random initialisation (torch's default uniform bounds).

    Attributes
    ----------
    weight : ndarray, shape (out_features, in_features)
    bias : ndarray, shape (out_features,) or None
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None, rng=None):
        super().__init__(dtype)
        self.in_features = _pos_int(in_features, "in_features")
        self.out_features = _pos_int(out_features, "out_features")
        g = _rng(rng)
        self._param("weight", _kaiming_uniform(g, (out_features, in_features),
                                               in_features, self.dtype))
        self._param("bias", _kaiming_uniform(g, (out_features,), in_features,
                                             self.dtype) if bias else None)

    def forward(self, x):
        """x : (..., in_features) -> (..., out_features)"""
        x = check_input(x, "input", self.dtype, self.in_features,
                        ndims=tuple(range(1, 33)))
        x2 = rows(x, self.in_features)
        y = gemm(x2, self.weight, self.bias)
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.dtype}")


class _Norm(Module):
    _mode = None

    def _apply(self, x, residual=None, residual_out=None):
        x = check_input(x, "input", self.dtype, ndims=tuple(range(1, 33)))
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k:] != self.normalized_shape:
            raise ValueError(f"input of shape {x.shape} does not end with "
                             f"normalized_shape {self.normalized_shape}")
        C = int(np.prod(self.normalized_shape))
        x2 = rows(x, C)
        r2 = None
        if residual is not None:
            residual = check_input(residual, "residual", self.dtype,
                                   ndims=(x.ndim,))
            if residual.shape != x.shape:
                raise ValueError(f"residual has shape {residual.shape}, "
                                 f"input {x.shape}")
            r2 = rows(residual, C)
        w = None if self.weight is None else self.weight.reshape(-1)
        b = None if self.bias is None else self.bias.reshape(-1)
        _, n = _ops.add_norm(x2, None, r2, self._mode, w, b, self._eps(), n=None)
        return n.reshape(x.shape)

    def forward(self, x):
        """x : (..., *normalized_shape) -> same shape"""
        return self._apply(x)

    def add_forward(self, x, residual):
        """``norm(x + residual)`` in one fused pass (same shapes)."""
        return self._apply(x, residual)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.weight is not None}, dtype={self.dtype}")


class LayerNorm(_Norm):
    """Layer normalisation over the last ``len(normalized_shape)`` axes
    (``torch.nn.LayerNorm``): ``(x - mean) / sqrt(var + eps) * weight + bias``
    with the biased variance; one fused Cython pass per row.

    Parameters
    ----------
    normalized_shape : int or tuple of int
    eps : float
    elementwise_affine : bool
        Learnable ``weight`` (ones) and, if ``bias``, ``bias`` (zeros).
    bias : bool
    dtype : float32 (default) or float64
    """
    _mode = "layer"

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True,
                 bias=True, dtype=None):
        super().__init__(dtype)
        self.normalized_shape = _norm_shape(normalized_shape)
        self.eps = float(eps)
        self._param("weight", np.ones(self.normalized_shape) if elementwise_affine else None)
        self._param("bias", np.zeros(self.normalized_shape)
                    if (elementwise_affine and bias) else None)

    def _eps(self):
        return self.eps


class RMSNorm(_Norm):
    """Root-mean-square normalisation (``torch.nn.RMSNorm``):
    ``x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
    eps : float, optional
        Defaults to the machine epsilon of the dtype, like PyTorch.
    elementwise_affine : bool
    dtype : float32 (default) or float64
    """
    _mode = "rms"

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=None):
        super().__init__(dtype)
        self.normalized_shape = _norm_shape(normalized_shape)
        self.eps = None if eps is None else float(eps)
        self._param("weight", np.ones(self.normalized_shape) if elementwise_affine else None)
        self.bias = None

    def _eps(self):
        return float(np.finfo(self.dtype).eps) if self.eps is None else self.eps


def check_activation(activation):
    """Normalise an activation given as a name, a torch function/module name
    or a NumPy callable."""
    if callable(activation) and not isinstance(activation, str):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a name or a callable, got {activation!r}")
    name = activation.lower().replace("-", "_")
    name = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
            "swish": "silu"}.get(name, name)
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} or a "
                         f"callable, got {activation!r}")
    return name


def feed_forward_rows(x2, linear1, linear2, activation, add_bias2=True):
    """The position-wise feed-forward on (N, d) rows: two GEMMs and a fused
    bias + activation between them.  Returns ``(N, d)``; ``linear2``'s bias is
    left out when ``add_bias2`` is False (the caller fuses it)."""
    if activation == "relu":        # bias and ReLU fused into the GEMM's store
        h = gemm(x2, linear1.weight, linear1.bias, relu=True)
    else:
        h = gemm(x2, linear1.weight)
        if activation == "swiglu":
            h = _ops.swiglu(h, linear1.bias, out=h[:, :h.shape[1] // 2])
        elif isinstance(activation, str):
            _ops.bias_act(h, linear1.bias, activation, out=h)
        else:
            if linear1.bias is not None:
                h += linear1.bias
            h = np.ascontiguousarray(activation(h), dtype=h.dtype)
    return gemm(h, linear2.weight, linear2.bias if add_bias2 else None)


class FeedForward(Module):
    """Position-wise feed-forward network ``linear2(act(linear1(x)))``.

    Parameters
    ----------
    d_model : int
    dim_feedforward : int
    activation : {"relu", "gelu", "gelu_tanh", "silu", "swiglu"} or callable
        ``"gelu"`` is the exact (erf) GELU, ``"gelu_tanh"`` the tanh
        approximation.  ``"swiglu"``: ``linear1`` is the fused gate and up
        projection, shape ``(2 * dim_feedforward, d_model)`` with the gate
        rows first, and the hidden vector is ``silu(gate) * up``.  A callable
        gets the (N, F) pre-activation array and returns an array.
    bias : bool
    dtype : float32 (default) or float64
    rng : int or Generator, optional

    Attributes
    ----------
    linear1 : Linear, (F or 2F, d_model)
    linear2 : Linear, (d_model, F)
    """

    def __init__(self, d_model, dim_feedforward, activation="relu", bias=True,
                 dtype=None, rng=None):
        super().__init__(dtype)
        self.activation = check_activation(activation)
        self.d_model = _pos_int(d_model, "d_model")
        self.dim_feedforward = _pos_int(dim_feedforward, "dim_feedforward")
        g = _rng(rng)
        n1 = 2 * dim_feedforward if self.activation == "swiglu" else dim_feedforward
        self._child("linear1", Linear(d_model, n1, bias, dtype=self.dtype, rng=g))
        self._child("linear2", Linear(dim_feedforward, d_model, bias, dtype=self.dtype, rng=g))

    def forward(self, x):
        """x : (..., d_model) -> (..., d_model)"""
        x = check_input(x, "input", self.dtype, self.d_model, ndims=tuple(range(1, 33)))
        y = feed_forward_rows(rows(x, self.d_model), self.linear1, self.linear2,
                              self.activation)
        return y.reshape(x.shape)

    def extra_repr(self):
        act = self.activation if isinstance(self.activation, str) else repr(self.activation)
        return (f"d_model={self.d_model}, dim_feedforward={self.dim_feedforward}, "
                f"activation={act}, dtype={self.dtype}")
