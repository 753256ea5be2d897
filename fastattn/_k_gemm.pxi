# Linear layers: Y = X W^T (+ bias) (ReLU), on the attention tiles.
# Included by _kernels.pxi.
#
# The same register tile as the score matmul: a task packs a block of FA_BR
# rows of X transposed (LIN_KC features at a time) and runs fa_gemm_nt over
# LIN_NB rows of W, read in place; the transposing store adds the bias (and
# ReLU).  Running the projections on the same OpenMP team as the attention
# keeps a second thread pool (BLAS) from spinning on the cores that the next
# kernel needs (NOTES.md, "one thread pool").  Each Y element is summed in a
# fixed order (K slices in order), whatever the thread count.

cdef enum:
    LIN_KC = 256        # features per packed X^T slice
    LIN_NB = 384         # rows of W (output features) per task


ctypedef struct LinArgs:
    const char *x
    Py_ssize_t xs
    const char *w
    Py_ssize_t ws
    const char *bias         # (N,) or NULL
    int relu
    char *y
    Py_ssize_t ys
    Py_ssize_t M, N, K, nmb, nb


cdef void _lin_task(const floating *x, Py_ssize_t xs, const floating *w, Py_ssize_t ws,
                    const floating *bias, int relu, floating *y, Py_ssize_t ys,
                    int nr, int nn, Py_ssize_t K, floating *Xt, floating *Yt) noexcept nogil:
    cdef Py_ssize_t k0 = 0, i
    cdef int kc
    if K == 0:
        for i in range(nn * FA_BR):
            Yt[i] = 0
    while k0 < K:
        kc = <int>(K - k0) if K - k0 < LIN_KC else LIN_KC
        _pack_qt(x + k0, xs, nr, kc, <floating>1.0, Xt)
        _gemm_nt(w + k0, ws, nn, kc, Xt, Yt, k0 > 0)
        k0 += kc
    _store_yt(Yt, nr, nn, bias, relu, y, ys)



# Narrow-lane tile (fa_narrow.h) for row blocks of fewer than FA_BR rows:
# decode steps, short sentences and the last block of every M that is no
# multiple of 64.  Every element is computed by the same floating-point
# operations in the same order as in the 64-lane tile (tested bit for bit in
# src/tests/fa_narrow_test.c and tests/test_gemm_narrow.py), so a row's
# result never depends on how many other rows share the call.  It packs the
# rows into whole vectors only (16 lanes per zmm for 12 rows instead of 64)
# and reuses the wide task's buffers (Xt: FA_NR_XN elements, Yt: nn*FA_BR).
cdef extern from "fa_narrow.h" nogil:
    int FA_NR_XN
    int fa_narrow_lanes_f32(int nr)
    int fa_narrow_lanes_f64(int nr)
    void fa_gemm_narrow_f32(const float *x, Py_ssize_t xs, int nr, const float *w, Py_ssize_t ws,
                            int nn, Py_ssize_t K, const float *bias, int relu, float *y,
                            Py_ssize_t ys, float *Xn, float *Yn)
    void fa_gemm_narrow_f64(const double *x, Py_ssize_t xs, int nr, const double *w, Py_ssize_t ws,
                            int nn, Py_ssize_t K, const double *bias, int relu, double *y,
                            Py_ssize_t ys, double *Xn, double *Yn)


if FA_NR_XN > LIN_KC * FA_BR:   # the narrow tile packs into the wide task's Xt
    raise ImportError("fastattn: fa_narrow.h's FA_NR_XN exceeds the linear tile buffer")


cdef inline bint _lin_narrow(floating *tag, int nr) noexcept nogil:
    """The narrow tile for this block: fewer vectors of lanes than FA_BR
    (blocks that would fill all 64 lanes anyway keep the wide tile)."""
    if floating is float:
        return fa_narrow_lanes_f32(nr) < FA_BR
    else:
        return fa_narrow_lanes_f64(nr) < FA_BR


cdef void _lin_task_narrow(const floating *x, Py_ssize_t xs, const floating *w, Py_ssize_t ws,
                           const floating *bias, int relu, floating *y, Py_ssize_t ys,
                           int nr, int nn, Py_ssize_t K, floating *Xt, floating *Yt) noexcept nogil:
    if floating is float:
        fa_gemm_narrow_f32(x, xs, nr, w, ws, nn, K, bias, relu, y, ys, Xt, Yt)
    else:
        fa_gemm_narrow_f64(x, xs, nr, w, ws, nn, K, bias, relu, y, ys, Xt, Yt)


cdef inline void _lin_t(const LinArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    # W-block-major order: consecutive tasks of a thread reuse W's block
    cdef Py_ssize_t n0 = (t // a.nmb) * a.nb
    cdef Py_ssize_t m0 = (t % a.nmb) * FA_BR
    cdef int nr = <int>(a.M - m0) if a.M - m0 < FA_BR else FA_BR
    cdef int nn = <int>(a.N - n0) if a.N - n0 < a.nb else <int>a.nb
    cdef const floating *bias = <const floating *>a.bias
    if _lin_narrow(buf, nr):
        _lin_task_narrow((<const floating *>a.x) + m0 * a.xs, a.xs,
                         (<const floating *>a.w) + n0 * a.ws, a.ws,
                         (bias + n0) if bias != NULL else NULL, a.relu,
                         (<floating *>a.y) + m0 * a.ys + n0, a.ys, nr, nn, a.K,
                         buf, buf + LIN_KC * FA_BR)
    else:
        _lin_task((<const floating *>a.x) + m0 * a.xs, a.xs,
                  (<const floating *>a.w) + n0 * a.ws, a.ws,
                  (bias + n0) if bias != NULL else NULL, a.relu,
                  (<floating *>a.y) + m0 * a.ys + n0, a.ys, nr, nn, a.K,
                  buf, buf + LIN_KC * FA_BR)

cdef void _lin_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _lin_t(<const LinArgs *>c, t, <float *>b)
cdef void _lin_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _lin_t(<const LinArgs *>c, t, <double *>b)


cdef class LinearCall:
    """Operands of linear(), by name: ``x`` (M, K), ``w`` (N, K), ``out``
    (M, N), ``bias`` (N,) contiguous or None, each 2-D with a contiguous last
    axis and element row strides ``xs``/``ws``/``ys``; one dtype; ``relu``."""
    cdef public cnp.ndarray x, w, bias, out
    cdef public Py_ssize_t xs, ws, ys
    cdef public bint relu
    cdef public int nthreads

    def __init__(self, *, cnp.ndarray x=None, Py_ssize_t xs=-4611686018427387904,
                 cnp.ndarray w=None, Py_ssize_t ws=-4611686018427387904,
                 cnp.ndarray bias=None, bint relu=False, cnp.ndarray out=None,
                 Py_ssize_t ys=-4611686018427387904, int nthreads=0):
        self.x = x; self.xs = xs; self.w = w; self.ws = ws
        self.bias = bias; self.relu = relu; self.out = out; self.ys = ys
        self.nthreads = nthreads


def linear(LinearCall call not None):
    """out[m, :] = relu?(x[m, :] @ w.T + bias) over the pre-validated 2-D
    operands of ``call`` (a LinearCall); returns ``call.out``."""
    cdef LinArgs a
    cdef int dt, nthreads = call.nthreads
    cdef Py_ssize_t nb = LIN_NB, nnb
    _set(call.x is not None and cnp.PyArray_NDIM(call.x) == 2, "x (2-D)")
    _set(call.w is not None and cnp.PyArray_NDIM(call.w) == 2, "w (2-D)")
    _set(call.out is not None and cnp.PyArray_NDIM(call.out) == 2, "out (2-D)")
    dt = _dtype_code(call.x)
    if (dt < 0 or _dtype_code(call.w) != dt or _dtype_code(call.out) != dt
            or (call.bias is not None and _dtype_code(call.bias) != dt)):
        raise TypeError("fastattn kernel call: x, w, bias and out must share one "
                        "float32/float64 dtype")
    _set(call.xs != _UNSET, "xs")
    _set(call.ws != _UNSET, "ws")
    _set(call.ys != _UNSET, "ys")
    _set(nthreads >= 1, "nthreads")
    a.M = call.x.shape[0]; a.K = call.x.shape[1]; a.N = call.w.shape[0]
    _set(call.w.shape[1] == a.K, "w (N, K)")
    _set(call.out.shape[0] >= a.M and call.out.shape[1] >= a.N, "out (M, N)")
    if call.bias is not None:
        _set(cnp.PyArray_IS_C_CONTIGUOUS(call.bias)
             and cnp.PyArray_SIZE(call.bias) >= a.N, "bias (N,)")
    if a.M == 0 or a.N == 0:
        return call.out
    a.x = _ptr(call.x); a.xs = call.xs; a.w = _ptr(call.w); a.ws = call.ws
    a.bias = _ptr(call.bias) if call.bias is not None else NULL
    a.relu = call.relu; a.y = _ptr(call.out); a.ys = call.ys
    a.nmb = (a.M + FA_BR - 1) // FA_BR
    # few row blocks (short inputs): narrower W blocks, so every thread has
    # several tasks (widths stay multiples of the 6- and 8-key micro-tiles)
    while nb > 48 and a.nmb * ((a.N + nb - 1) // nb) < 4 * nthreads:
        nb = nb // 2
    # equal widths (multiples of 24, so of both micro-tiles) keep the
    # threads' static shares of the work equal when N is no multiple of nb
    nnb = (a.N + nb - 1) // nb
    nb = ((a.N + nnb - 1) // nnb + 23) // 24 * 24
    nnb = (a.N + nb - 1) // nb
    a.nb = nb
    _run_tasks(a.nmb * nnb, (LIN_KC + LIN_NB) * FA_BR * (4 if dt == 0 else 8),
               _lin_f32 if dt == 0 else _lin_f64, &a, nthreads, False)
    return call.out
