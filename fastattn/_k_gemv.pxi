# Decode-sized projections: Y = act(X W^T + bias) for a few rows of X (1..16),
# W (N, K) read in place in rows (fa_gemv.h).  Included by _kernels.pxi.
#
# A task is a block of W rows (output features) against every row of X, so
# W is read from memory once per call, on fastattn's own OpenMP team (no
# BLAS pool spinning on the cores the next kernel needs).  Each output is
# one vector accumulator over K in a fixed order (fa_gemv.h), so the task
# split changes the speed only: results are bit-identical for any thread
# count and for any number of rows in the call.

cdef extern from "fa_gemv.h" nogil:
    int FA_GV_NONE, FA_GV_RELU, FA_GV_GELU, FA_GV_GELU_TANH, FA_GV_SILU
    void fa_gemv_f32(const float *X, Py_ssize_t xs, int M, const float *W, Py_ssize_t ws,
                     const float *Wu, int nn, Py_ssize_t K, const float *bias,
                     const float *bu, int act, float *Y, Py_ssize_t ys)
    void fa_gemv_f64(const double *X, Py_ssize_t xs, int M, const double *W, Py_ssize_t ws,
                     const double *Wu, int nn, Py_ssize_t K, const double *bias,
                     const double *bu, int act, double *Y, Py_ssize_t ys)

GEMV_ACTS = {None: FA_GV_NONE, "identity": FA_GV_NONE, "relu": FA_GV_RELU,
             "gelu": FA_GV_GELU, "gelu_tanh": FA_GV_GELU_TANH, "silu": FA_GV_SILU}
GEMV_MAX_ROWS = 64          # the kernel's own limit (the callers use it for <= 16)


ctypedef struct GvArgs:
    const char *x
    Py_ssize_t xs
    const char *w
    Py_ssize_t ws
    Py_ssize_t up             # rows from a W row to its GLU partner, or 0
    const char *bias
    int act
    char *y
    Py_ssize_t ys
    Py_ssize_t M, N, K, nb


cdef inline void _gv_t(const GvArgs *a, Py_ssize_t t, floating *tag) noexcept nogil:
    cdef Py_ssize_t n0 = t * a.nb
    cdef int nn = <int>(a.N - n0) if a.N - n0 < a.nb else <int>a.nb
    cdef const floating *w = (<const floating *>a.w) + n0 * a.ws
    cdef const floating *wu = NULL
    cdef const floating *bias = <const floating *>a.bias
    cdef const floating *bu = NULL
    if a.up:
        wu = w + a.up * a.ws
        if bias != NULL:
            bu = bias + a.up + n0
    if bias != NULL:
        bias = bias + n0
    if floating is float:
        fa_gemv_f32(<const float *>a.x, a.xs, <int>a.M, w, a.ws, wu, nn, a.K, bias, bu,
                    a.act, (<float *>a.y) + n0, a.ys)
    else:
        fa_gemv_f64(<const double *>a.x, a.xs, <int>a.M, w, a.ws, wu, nn, a.K, bias, bu,
                    a.act, (<double *>a.y) + n0, a.ys)

cdef void _gv_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _gv_t(<const GvArgs *>c, t, <float *>NULL)
cdef void _gv_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _gv_t(<const GvArgs *>c, t, <double *>NULL)


cdef class GemvCall:
    """Operands of gemv(), by name: ``x`` (M, K) with M <= GEMV_MAX_ROWS,
    ``w`` (N, K) (``glu``: (2F, K), gate rows first), ``bias`` (N,) (or
    (2F,)) contiguous or None, ``out`` (M, N) (``glu``: (M, F)); each 2-D
    with a contiguous last axis and element row strides ``xs``/``ws``/``ys``;
    one dtype; ``act`` a GEMV_ACTS value (not with ``glu``, which is SiLU)."""
    cdef public cnp.ndarray x, w, bias, out
    cdef public Py_ssize_t xs, ws, ys
    cdef public int act, nthreads
    cdef public bint glu

    def __init__(self, *, cnp.ndarray x=None, Py_ssize_t xs=-4611686018427387904,
                 cnp.ndarray w=None, Py_ssize_t ws=-4611686018427387904,
                 cnp.ndarray bias=None, int act=0, bint glu=False,
                 cnp.ndarray out=None, Py_ssize_t ys=-4611686018427387904,
                 int nthreads=0):
        self.x = x; self.xs = xs; self.w = w; self.ws = ws
        self.bias = bias; self.act = act; self.glu = glu; self.out = out
        self.ys = ys; self.nthreads = nthreads


def gemv(GemvCall call not None):
    """out[m, :] = act(x[m, :] @ w.T + bias) (or SwiGLU with ``glu``) over
    the pre-validated 2-D operands of ``call`` (a GemvCall); returns
    ``call.out``."""
    cdef GvArgs a
    cdef int dt, nthreads = call.nthreads
    cdef Py_ssize_t nb, ntask
    _set(call.x is not None and cnp.PyArray_NDIM(call.x) == 2, "x (2-D)")
    _set(call.w is not None and cnp.PyArray_NDIM(call.w) == 2, "w (2-D)")
    _set(call.out is not None and cnp.PyArray_NDIM(call.out) == 2, "out (2-D)")
    dt = _dtype_code(call.x)
    if (dt < 0 or _dtype_code(call.w) != dt or _dtype_code(call.out) != dt
            or (call.bias is not None and _dtype_code(call.bias) != dt)):
        raise TypeError("fastattn kernel call: x, w, bias and out must share one "
                        "float32/float64 dtype")
    _set(call.xs != _UNSET and call.xs >= call.x.shape[1], "xs")
    _set(call.ws != _UNSET and call.ws >= call.w.shape[1], "ws")
    _set(call.ys != _UNSET, "ys")
    _set(nthreads >= 1, "nthreads")
    _set(FA_GV_NONE <= call.act <= FA_GV_SILU and not (call.glu and call.act),
         "act (a GEMV_ACTS value; none with glu)")
    a.M = call.x.shape[0]; a.K = call.x.shape[1]; a.N = call.w.shape[0]
    _set(a.M <= GEMV_MAX_ROWS, "x (at most GEMV_MAX_ROWS rows)")
    _set(call.w.shape[1] == a.K, "w (N, K)")
    if call.bias is not None:
        _set(cnp.PyArray_IS_C_CONTIGUOUS(call.bias)
             and cnp.PyArray_SIZE(call.bias) >= a.N, "bias (N,)")
    a.up = 0
    if call.glu:
        _set(a.N % 2 == 0, "w (2F, K) with glu")
        a.N = a.N // 2
        a.up = a.N
    _set(call.out.shape[0] >= a.M and call.out.shape[1] >= a.N, "out (M, N)")
    _set(a.M <= 1 or call.ys >= a.N, "ys")
    if a.M == 0 or a.N == 0:
        return call.out
    a.x = _ptr(call.x); a.xs = call.xs; a.w = _ptr(call.w); a.ws = call.ws
    a.bias = _ptr(call.bias) if call.bias is not None else NULL
    a.act = call.act; a.y = _ptr(call.out); a.ys = call.ys
    # blocks of W rows: 64, narrower (multiples of 8) when that would leave a
    # thread without several tasks; the split never changes a value
    nb = 64
    if (a.N + nb - 1) // nb < 4 * nthreads:
        nb = max(8, ((a.N + 4 * nthreads - 1) // (4 * nthreads) + 7) // 8 * 8)
    a.nb = nb
    ntask = (a.N + nb - 1) // nb
    _run_tasks(ntask, 0, _gv_f32 if dt == 0 else _gv_f64, &a, nthreads, False)
    return call.out
