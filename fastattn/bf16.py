"""bfloat16 storage: conversions, packed weights and the bf16 GEMM (issue 12).

A bf16 array is a NumPy array of dtype ``ml_dtypes.bfloat16`` (an optional
dependency: ``pip install "fastattn[bf16]"``; imported only when a bf16 array
is made or read).  Accumulation is always float32.

- :data:`bfloat16` -- the dtype (``ml_dtypes.bfloat16``).
- :func:`to_bfloat16` / :func:`to_float32` -- fast OpenMP conversions;
  float32 -> bf16 rounds to nearest even (NaN stays NaN, +-inf stay), bit for
  bit what ``x.astype(ml_dtypes.bfloat16)`` gives.
- :func:`pack_weight` -- a weight (N, K) in torch layout, packed once into the
  microkernel layout (a bf16 copy: half the float32 bytes).
- :func:`linear` -- ``act(x @ w.T + bias)`` with x bf16 (M, K), fp32
  accumulation, the bias and activation fused into the store, output float32
  or bf16 (rounded once).

The GEMM runs on fastattn's OpenMP team with the microkernel of the kernel
build chosen at import: AMX tiles (``amx``), ``vdpbf16ps`` (``avx512bf16``)
or fp32 FMAs on weights widened in the loads (``avx512``, ``avx2``,
``baseline``).  A row's result is bit-identical whatever M is, wherever the
row sits in x and for any thread count (docs/architecture.md, "bfloat16").
"""
import numpy as np

from . import _dispatch
from .threads import for_flops as _for_flops, for_stream as _for_stream

_k = _dispatch.kernels

__all__ = ["bfloat16", "to_bfloat16", "to_float32", "pack_weight", "PackedWeight",
           "linear", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "quick_gelu")
_ACT_CODE = {None: "ACT_NONE", "relu": "ACT_RELU", "gelu": "ACT_GELU",
             "gelu_tanh": "ACT_GELU_TANH", "silu": "ACT_SILU", "quick_gelu": "ACT_QUICK_GELU"}
_CVT_ELEMS_PER_FLOP = 8   # a conversion element costs like ~8 flops in the thread policy


def _ml_dtypes():
    try:
        import ml_dtypes
    except ImportError as e:
        raise ImportError('fastattn: bfloat16 needs the ml_dtypes package: '
                          'pip install "fastattn[bf16]"') from e
    return ml_dtypes


def _bf16():
    return np.dtype(_ml_dtypes().bfloat16)


def __getattr__(name):
    if name == "bfloat16":
        return _ml_dtypes().bfloat16
    raise AttributeError(f"module 'fastattn.bf16' has no attribute {name!r}")


def _is_bf16(dt):
    dt = np.dtype(dt)
    return dt.itemsize == 2 and dt.name == "bfloat16"


def _u16(a):
    """The uint16 view of a bf16 array (same memory)."""
    return a.view(np.uint16)


def _nthreads(num_threads, work):
    return _for_flops(num_threads, work)


def _linear_threads(num_threads, M, N, K, w):
    """Threads for an (M, K) x packed w -> (M, N) GEMM: enough for the
    arithmetic, and for the weight stream: at a decode step's few rows the
    call is a read of the packed weight, which one core cannot do at the
    memory's speed (GPT-2 bf16 decode at batch 1 ran 1.03-1.18x its fp32
    decode with the flops rule alone)."""
    return max(_nthreads(num_threads, 2 * M * N * max(K, 1)), _for_stream(num_threads, w.nbytes))


def _check_out(out, shape, dtype, name="out"):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")


def to_bfloat16(x, *, out=None, num_threads=None):
    """float32 array (any shape) -> bf16, round to nearest even."""
    bf = _bf16()
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"to_bfloat16: x must be float32, got {x.dtype} "
                        f"(convert with x.astype(numpy.float32) first)")
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(x.shape, bf)
    else:
        _check_out(out, x.shape, bf)
        if not out.flags.c_contiguous:
            raise ValueError("to_bfloat16: out must be C-contiguous")
        if np.shares_memory(out, x):
            raise ValueError("to_bfloat16: out overlaps x")
    _k.bf16_from_f32(x.reshape(-1), _u16(out).reshape(-1),
                     _nthreads(num_threads, x.size * _CVT_ELEMS_PER_FLOP))
    return out


def to_float32(x, *, out=None, num_threads=None):
    """bf16 array (any shape) -> float32 (exact)."""
    x = np.asarray(x)
    if not _is_bf16(x.dtype):
        raise TypeError(f"to_float32: x must be bfloat16, got {x.dtype}")
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(x.shape, np.float32)
    else:
        _check_out(out, x.shape, np.dtype(np.float32))
        if not out.flags.c_contiguous:
            raise ValueError("to_float32: out must be C-contiguous")
        if np.shares_memory(out, x):
            raise ValueError("to_float32: out overlaps x")
    _k.bf16_to_f32(_u16(x).reshape(-1), out.reshape(-1),
                   _nthreads(num_threads, x.size * _CVT_ELEMS_PER_FLOP))
    return out


class PackedWeight:
    """A weight (N, K) packed once into the bf16 GEMM's layout ("vnni16":
    groups of 16 output features, feature pairs interleaved, N padded to 16
    and K to 32 with zeros; the same layout in every build).  Holds its own
    bf16 copy, no reference to the source array.

    ``shape`` (N, K); ``nbytes`` (the packed bytes); ``layout`` (the kernel
    build that packed it and the layout name); :meth:`unpack` gives the bf16
    (N, K) weight back."""

    __slots__ = ("_data", "shape", "layout")

    def __init__(self, data, shape, layout):
        self._data = data
        self.shape = tuple(int(s) for s in shape)
        self.layout = layout

    @property
    def nbytes(self):
        return int(self._data.nbytes)

    def unpack(self):
        N, K = self.shape
        return _k.bf16_unpack(self._data, N, K).view(_bf16())

    def __repr__(self):
        return f"PackedWeight(shape={self.shape}, layout={self.layout!r}, nbytes={self.nbytes})"


def pack_weight(w, alloc=None):
    """Pack ``w`` (N, K) float32 or bf16, torch layout [out, in], for
    :func:`linear`.  float32 is rounded to bf16 (nearest even) first.
    ``alloc(n, dtype)``, if given, provides the packed memory: a 1-D,
    64-byte-aligned array of ``n`` elements (e.g. a
    ``fastattn._memory.WeightArena``'s ``empty``: huge pages)."""
    if isinstance(w, PackedWeight):
        return w
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack_weight: w must be 2-D (N, K), got shape {w.shape}")
    if w.dtype == np.float32:
        wb = _u16(to_bfloat16(w))
    elif _is_bf16(w.dtype):
        wb = _u16(w)
        if wb.strides[1] != 2 or wb.strides[0] % 2 or wb.strides[0] < 0:
            wb = np.ascontiguousarray(wb)
    else:
        raise TypeError(f"pack_weight: w must be float32 or bfloat16, got {w.dtype}")
    if wb.size == 0:
        wb = np.zeros(w.shape, np.uint16)      # (empty arrays may have strides 0)
    data = _k.bf16_pack(wb, alloc)
    return PackedWeight(data, w.shape, f"{_k.ISA}:vnni16")


def _out_dtype(out_dtype):
    if out_dtype is None:
        return None
    if isinstance(out_dtype, str):
        if out_dtype in ("float32", "bfloat16"):
            return np.dtype(np.float32) if out_dtype == "float32" else _bf16()
        raise ValueError(f"out_dtype must be float32 or bfloat16, got {out_dtype!r}")
    try:
        dt = np.dtype(out_dtype)
    except TypeError:
        raise TypeError(f"out_dtype must be float32 or bfloat16, got {out_dtype!r}") from None
    if dt == np.float32:
        return dt
    if _is_bf16(dt):
        return dt
    raise TypeError(f"out_dtype must be float32 or bfloat16, got {dt}")


def linear(x, w, bias=None, *, activation=None, out_dtype=None, out=None, num_threads=None):
    """``activation(x @ w.T + bias)`` with float32 accumulation.

    x: (M, K) bfloat16 (rows may be strided; the last axis is made contiguous
    if it is not).  w: a :class:`PackedWeight`, or an (N, K) float32/bf16
    array packed on the fly (pack once with :func:`pack_weight` when the
    weight is reused).  bias: (N,) float32 (other float dtypes are converted)
    or None.  activation: None, "relu", "gelu" (erf), "gelu_tanh", "silu" or
    "quick_gelu" (x * sigmoid(1.702 x)), computed in float32 on the
    accumulator.  out_dtype: float32 (default) or bfloat16 (rounded once,
    after bias and activation); with ``out`` given, its dtype decides.
    Returns the (M, N) result."""
    bf = _bf16()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"linear: x must be a numpy.ndarray of bfloat16, got {type(x).__name__}")
    if not _is_bf16(x.dtype):
        raise TypeError(f"linear: x must be bfloat16, got {x.dtype} "
                        f"(convert with fastattn.bf16.to_bfloat16)")
    if x.ndim != 2:
        raise ValueError(f"linear: x must be 2-D (M, K), got shape {x.shape}")
    if not isinstance(w, PackedWeight):
        if not isinstance(w, np.ndarray):
            raise TypeError(f"linear: w must be a PackedWeight or an (N, K) array, "
                            f"got {type(w).__name__}")
        w = pack_weight(w)
    M, K = x.shape
    N, Kw = w.shape
    if Kw != K:
        raise ValueError(f"linear: x (M, K) = {x.shape} and w (N, K) = {w.shape} "
                         f"disagree on K")
    if activation not in _ACT_CODE:
        raise ValueError(f"linear: activation must be None or one of {ACTIVATIONS}, "
                         f"got {activation!r}")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (N,):
            raise ValueError(f"linear: bias must have shape ({N},) for w {w.shape}, "
                             f"got {bias.shape}")
        if _is_bf16(bias.dtype):
            bias = to_float32(bias)
        elif bias.dtype.kind != "f":
            raise TypeError(f"linear: bias must be float32, got {bias.dtype}")
        bias = np.ascontiguousarray(bias, dtype=np.float32)
    odt = _out_dtype(out_dtype)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"linear: out must be a numpy.ndarray, got {type(out).__name__}")
        if odt is None:
            odt = out.dtype
            if odt != np.float32 and not _is_bf16(odt):
                raise TypeError(f"linear: out must be float32 or bfloat16, got {odt}")
        _check_out(out, (M, N), odt)
        if out.strides[1] != out.itemsize or out.strides[0] % out.itemsize:
            raise ValueError("linear: out's last axis must be contiguous")
        if np.shares_memory(out, x):
            raise ValueError("linear: out overlaps x")
    else:
        odt = np.dtype(np.float32) if odt is None else odt
        out = np.empty((M, N), odt)
    xu = _u16(x) if x.size else np.zeros((M, K), np.uint16)   # (empty: strides 0)
    if xu.strides[1] != 2 or xu.strides[0] % 2 or xu.strides[0] < 0:
        xu = np.ascontiguousarray(xu)
    if out.size == 0:
        return out
    final = None
    if out.strides[0] <= 0 < M - 1:          # rows backwards or aliased: via a temporary
        final, out = out, np.empty((M, N), odt)
    ou = _u16(out) if _is_bf16(odt) else out
    nt = _linear_threads(num_threads, M, N, K, w)
    _k.bf16_linear(xu, w._data, bias, getattr(_k, _ACT_CODE[activation]), ou, nt)
    if final is not None:
        final[...] = out
        return final
    return out


def _linear_plan(x, w, activation, out):
    """``run(w, bias)``: :func:`linear` ``(x, w, bias, activation=,
    out=out)`` for weights packed like ``w``, with the checks, views, thread
    count and activation code worked out once (a short query's projection
    costs more in this function's checks than in the kernel).  For the
    models' own scratch: ``x`` a C-contiguous bf16 (M, K) array, ``out`` a
    C-contiguous float32 or bf16 (M, N) array not overlapping ``x``; each
    ``bias`` float32 contiguous (N,) or None.  The kernel call still checks
    the shapes against the packed weight it is given; the bits are
    :func:`linear`'s (the thread count never changes them)."""
    M, K = x.shape
    N = w.shape[0]
    if not (_is_bf16(x.dtype) and x.flags.c_contiguous and out.flags.c_contiguous
            and out.shape == (M, N) and (out.dtype == np.float32 or _is_bf16(out.dtype))):
        raise ValueError(f"_linear_plan: x {x.dtype} {x.shape} and out {out.dtype} {out.shape} "
                         f"must be contiguous bf16 rows and ({M}, {N}) float32/bf16")
    if activation not in _ACT_CODE:
        raise ValueError(f"_linear_plan: activation must be None or one of {ACTIVATIONS}, "
                         f"got {activation!r}")
    if M == 0 or N == 0:
        return lambda w, bias: None
    xu = _u16(x)
    ou = _u16(out) if _is_bf16(out.dtype) else out
    nt = _linear_threads(None, M, N, K, w)
    code = getattr(_k, _ACT_CODE[activation])
    kern = _k.bf16_linear
    shape = (N, K)

    def run(w, bias):
        if w.shape != shape:    # (the packed array alone cannot tell K from K+1)
            raise ValueError(f"_linear_plan: planned for weights of shape {shape}, "
                             f"got {w.shape}")
        kern(xu, w._data, bias, code, ou, nt)
    return run
