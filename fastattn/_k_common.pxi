# Shared declarations of fastattn's attention kernels: fused types, the C
# tile externs, constants, the per-dtype tile table and the one parallel
# scratch scaffold.  Included first by _kernels.pxi (which every per-ISA
# _kernels_<isa>.pyx includes), so it is compiled once per instruction set.

from cython.parallel cimport prange, parallel
from libc.math cimport fabs, INFINITY, exp, expf, NAN
from libc.float cimport FLT_MAX, DBL_MAX
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport malloc, free, qsort

import numpy as np
cimport numpy as cnp

cnp.import_array()

ctypedef fused floating:
    float
    double

cdef extern from "fa_util.h" nogil:
    int FA_OPENMP
    const char *FA_BUILD_ISA
    void *fa_aligned_calloc(size_t nbytes)
    void fa_aligned_free(void *p)
    int fa_omp_max_threads()
    void fa_pack_qt_f32(const float *q, Py_ssize_t qs, int nr, int D, float scale, float *Qt)
    void fa_pack_qt_f64(const double *q, Py_ssize_t qs, int nr, int D, double scale, double *Qt)
    void fa_pack_qt_lanes_f32(const float *q, Py_ssize_t qs, int nr, int D, float scale,
                              float *Qt, int nl)
    void fa_pack_qt_lanes_f64(const double *q, Py_ssize_t qs, int nr, int D, double scale,
                              double *Qt, int nl)
    void fa_store_ot_f32(const float *Ot, const float *l, int nr, int Dv, float *o, Py_ssize_t os)
    void fa_store_ot_f64(const double *Ot, const double *l, int nr, int Dv, double *o, Py_ssize_t os)
    void fa_store_yt_f32(const float *Yt, int nr, int nn, const float *bias, int relu, float *o, Py_ssize_t os)
    void fa_store_yt_f64(const double *Yt, int nr, int nn, const double *bias, int relu, double *o, Py_ssize_t os)

cdef extern from "fa_tiles.h" nogil:
    int FA_BR
    int FA_BC
    void fa_qk_f32(const float *K, Py_ssize_t ks, int nk, int D, const float *Qt, float *St)
    void fa_pv_f32(const float *V, Py_ssize_t vs, int nk, int Dv, const float *Pt, float *Ot)
    void fa_gemm_nt_f32(const float *W, Py_ssize_t ws, int nn, int kc, const float *Xt, float *Yt, int accumulate)
    void fa_softmax_f32(float *St, int nk, float *m, float *l, float *alpha)
    void fa_rescale_pv_f32(const float *V, Py_ssize_t vs, int nk, int Dv, const float *Pt, float *Ot, const float *alpha)
    float fa_exp2_f32(float x)
    void fa_dot_rows_f32(const float *Q, int R, const float *K, Py_ssize_t ks, int nk, int D, float *s, int lds)
    void fa_axpy_rows_f32(const float *P, int R, int ldp, const float *V, Py_ssize_t vs, int nk, int Dv, float *O)
    float fa_exp2_sub_sum_f32(float *x, int n, float mx)
    float fa_max_f32(const float *x, int n)
    void fa_qk_f64(const double *K, Py_ssize_t ks, int nk, int D, const double *Qt, double *St)
    void fa_pv_f64(const double *V, Py_ssize_t vs, int nk, int Dv, const double *Pt, double *Ot)
    void fa_gemm_nt_f64(const double *W, Py_ssize_t ws, int nn, int kc, const double *Xt, double *Yt, int accumulate)
    void fa_softmax_f64(double *St, int nk, double *m, double *l, double *alpha)
    void fa_rescale_pv_f64(const double *V, Py_ssize_t vs, int nk, int Dv, const double *Pt, double *Ot, const double *alpha)
    double fa_exp2_f64(double x)
    void fa_dot_rows_f64(const double *Q, int R, const double *K, Py_ssize_t ks, int nk, int D, double *s, int lds)
    void fa_axpy_rows_f64(const double *P, int R, int ldp, const double *V, Py_ssize_t vs, int nk, int Dv, double *O)
    double fa_exp2_sub_sum_f64(double *x, int n, double mx)
    double fa_max_f64(const double *x, int n)

# Keys per split-K chunk on the row (decode) path.  A constant, never derived
# from the thread count: the chunking fixes the summation order.
cdef enum:
    FA_SPLIT = 1024
    # keys per block on the rows path: 4 mask tiles; 256 read K and V at
    # 17-19 GB/s on 2 threads where 64-key blocks reached 13-16 (NOTES.md)
    ROWS_BC = 256
    ROWS_MAX = 32          # at most this many query rows per kv head -> rows path
    # from this many rows per kv head the rows path's scores run on the
    # narrow GEMM tile (rows in the lanes) instead of per-key dot products
    ROWS_NARROW = 16

# "never set" marker of the call objects' stride fields (strides may be 0 or
# negative, sizes are never negative: those use -1)
cdef extern from *:
    """
    #define FA_UNSET_STRIDE ((Py_ssize_t)-4611686018427387904LL)
    """
    Py_ssize_t _UNSET "FA_UNSET_STRIDE"

cdef double LOG2E = 1.4426950408889634

# tile classes (classify_mask's output, the fused kernel's skip decisions)
cdef enum:
    T_HIDDEN = 0
    T_VISIBLE = 1
    T_PARTIAL = 2

# mask kinds (FlashCall.mask_kind, MaskCall.kind)
cdef enum:
    M_NONE = 0
    M_BOOL = 1             # uint8/bool: True keeps the key
    M_FLOAT = 2            # additive, the operands' dtype

# fused-kernel layouts (FlashCall.path)
cdef enum:
    P_AUTO = 0
    P_LANES = 1
    P_ROWS = 2


ISA = (<bytes>FA_BUILD_ISA).decode()
OPENMP = bool(FA_OPENMP)
TILE_ROWS = FA_BR
TILE_KEYS = FA_BC
SPLIT_KEYS = FA_SPLIT
ROWS_PATH_MAX = ROWS_MAX
ROWS_NARROW_MIN = ROWS_NARROW

TILE_HIDDEN = T_HIDDEN
TILE_VISIBLE = T_VISIBLE
TILE_PARTIAL = T_PARTIAL
MASK_NONE = M_NONE
MASK_BOOL = M_BOOL
MASK_FLOAT = M_FLOAT
PATH_AUTO = P_AUTO
cdef inline bint _layout_rows(int path, bint auto_rows) noexcept nogil:
    # The layout a call runs: the one forced through FlashCall.path (tests,
    # benchmarks), else what the kernel's automatic rule chose (``auto_rows``).
    if path == P_LANES:
        return False
    if path == P_ROWS:
        return True
    return auto_rows


PATH_LANES = P_LANES
PATH_ROWS = P_ROWS


def omp_max_threads():
    """OpenMP's default team size (1 without OpenMP)."""
    return fa_omp_max_threads()


cdef inline char *_ptr(cnp.ndarray a):
    return <char *>cnp.PyArray_DATA(a)


cdef cnp.ndarray _alloc_out(alloc, Py_ssize_t n, dtype, str who):
    """``alloc(n, dtype)``'s array for packed weights (e.g.
    ``fastattn._memory.WeightArena.empty``), checked: 1-D, C-contiguous,
    writable, ``dtype``, at least ``n`` elements, 64-byte aligned (when
    ``n > 0``: NumPy gives empty slices no address of their own)."""
    a = alloc(n, dtype)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{who}: alloc must return a NumPy array, got {type(a).__name__}")
    dt = np.dtype(dtype)
    if (a.dtype != dt or a.ndim != 1 or a.size < n or not a.flags.c_contiguous
            or not a.flags.writeable or (n > 0 and a.ctypes.data % 64)):
        raise ValueError(f"{who}: alloc({n}, {dt}) returned a {a.dtype} array of shape "
                         f"{a.shape}; it must be 1-D, C-contiguous, writable, {dt}, hold at "
                         f"least {n} elements and start on a 64-byte boundary")
    return a


# ---------------------------------------------------------------------------
# Per-dtype tile table.  One fused inline wrapper per tile instead of an
# `if floating is float` branch at every call site: the choice is made at
# compile time (each specialisation inlines its f32 or f64 tile), so unlike a
# table of function pointers it costs nothing in the inner loops that call
# fa_exp2 once per row.
# ---------------------------------------------------------------------------

cdef inline void _pack_qt(const floating *q, Py_ssize_t qs, int nr, int D,
                          floating scale, floating *Qt) noexcept nogil:
    if floating is float:
        fa_pack_qt_f32(q, qs, nr, D, scale, Qt)
    else:
        fa_pack_qt_f64(q, qs, nr, D, scale, Qt)

cdef inline void _pack_qt_lanes(const floating *q, Py_ssize_t qs, int nr, int D,
                                floating scale, floating *Qt, int nl) noexcept nogil:
    if floating is float:
        fa_pack_qt_lanes_f32(q, qs, nr, D, scale, Qt, nl)
    else:
        fa_pack_qt_lanes_f64(q, qs, nr, D, scale, Qt, nl)

cdef inline void _store_ot(const floating *Ot, const floating *l, int nr, int Dv,
                           floating *o, Py_ssize_t os) noexcept nogil:
    if floating is float:
        fa_store_ot_f32(Ot, l, nr, Dv, o, os)
    else:
        fa_store_ot_f64(Ot, l, nr, Dv, o, os)

cdef inline void _store_yt(const floating *Yt, int nr, int nn, const floating *bias,
                           int relu, floating *o, Py_ssize_t os) noexcept nogil:
    if floating is float:
        fa_store_yt_f32(Yt, nr, nn, bias, relu, o, os)
    else:
        fa_store_yt_f64(Yt, nr, nn, bias, relu, o, os)

cdef inline void _qk(const floating *K, Py_ssize_t ks, int nk, int D,
                     const floating *Qt, floating *St) noexcept nogil:
    if floating is float:
        fa_qk_f32(K, ks, nk, D, Qt, St)
    else:
        fa_qk_f64(K, ks, nk, D, Qt, St)

cdef inline void _pv(const floating *V, Py_ssize_t vs, int nk, int Dv,
                     const floating *Pt, floating *Ot) noexcept nogil:
    if floating is float:
        fa_pv_f32(V, vs, nk, Dv, Pt, Ot)
    else:
        fa_pv_f64(V, vs, nk, Dv, Pt, Ot)

cdef inline void _gemm_nt(const floating *W, Py_ssize_t ws, int nn, int kc,
                          const floating *Xt, floating *Yt, int accumulate) noexcept nogil:
    if floating is float:
        fa_gemm_nt_f32(W, ws, nn, kc, Xt, Yt, accumulate)
    else:
        fa_gemm_nt_f64(W, ws, nn, kc, Xt, Yt, accumulate)

cdef inline void _softmax_tile(floating *St, int nk, floating *m, floating *l,
                               floating *alpha) noexcept nogil:
    if floating is float:
        fa_softmax_f32(St, nk, m, l, alpha)
    else:
        fa_softmax_f64(St, nk, m, l, alpha)

cdef inline void _rescale_pv(const floating *V, Py_ssize_t vs, int nk, int Dv,
                             const floating *Pt, floating *Ot,
                             const floating *alpha) noexcept nogil:
    if floating is float:
        fa_rescale_pv_f32(V, vs, nk, Dv, Pt, Ot, alpha)
    else:
        fa_rescale_pv_f64(V, vs, nk, Dv, Pt, Ot, alpha)

cdef inline floating _exp2(floating x) noexcept nogil:
    if floating is float:
        return fa_exp2_f32(x)
    else:
        return fa_exp2_f64(x)

cdef inline void _dot_rows(const floating *Q, int R, const floating *K, Py_ssize_t ks,
                           int nk, int D, floating *s, int lds) noexcept nogil:
    if floating is float:
        fa_dot_rows_f32(Q, R, K, ks, nk, D, s, lds)
    else:
        fa_dot_rows_f64(Q, R, K, ks, nk, D, s, lds)

cdef inline void _axpy_rows(const floating *P, int R, int ldp, const floating *V,
                            Py_ssize_t vs, int nk, int Dv, floating *O) noexcept nogil:
    if floating is float:
        fa_axpy_rows_f32(P, R, ldp, V, vs, nk, Dv, O)
    else:
        fa_axpy_rows_f64(P, R, ldp, V, vs, nk, Dv, O)

cdef inline floating _exp2_sub_sum(floating *x, int n, floating mx) noexcept nogil:
    if floating is float:
        return fa_exp2_sub_sum_f32(x, n, mx)
    else:
        return fa_exp2_sub_sum_f64(x, n, mx)

cdef inline floating _vmax(const floating *x, int n) noexcept nogil:
    if floating is float:
        return fa_max_f32(x, n)
    else:
        return fa_max_f64(x, n)


# ---------------------------------------------------------------------------
# The parallel scratch scaffold, written once.
# ---------------------------------------------------------------------------
# Every kernel is a list of independent tasks; a task writes a disjoint part
# of the output and reads its own per-thread scratch buffer.  The scaffold
# opens one OpenMP team, gives each thread an aligned, zeroed buffer of
# `buf_bytes` (none when 0), runs the tasks through the task function and
# frees the buffers; a failed allocation skips the work and raises
# MemoryError after the team has joined.  The per-task indirect call costs
# nothing measurable (a task is at least one FA_BR x FA_BC tile, or a row).

ctypedef void (*task_fn)(const void *ctx, Py_ssize_t t, void *buf) noexcept nogil


cdef int _run_tasks(Py_ssize_t ntasks, size_t buf_bytes, task_fn fn,
                    const void *ctx, int nthreads, bint dynamic) except -1:
    cdef Py_ssize_t t
    cdef void *buf
    cdef int failed = 0
    cdef int *pfailed = &failed
    if ntasks <= 0:
        return 0
    if nthreads > ntasks:
        nthreads = <int>ntasks
    if nthreads < 1:
        nthreads = 1
    buf = NULL
    with nogil, parallel(num_threads=nthreads):
        buf = NULL
        if buf_bytes:
            buf = fa_aligned_calloc(buf_bytes)
            if buf == NULL:
                pfailed[0] = 1
        if dynamic:
            for t in prange(ntasks, schedule='dynamic'):
                if buf != NULL or buf_bytes == 0:
                    fn(ctx, t, buf)
        else:
            for t in prange(ntasks, schedule='static'):
                if buf != NULL or buf_bytes == 0:
                    fn(ctx, t, buf)
        if buf != NULL:
            fa_aligned_free(buf)
    if failed:
        raise MemoryError("fastattn: could not allocate per-thread tile buffers")
    return 0


cdef inline int _dtype_code(cnp.ndarray a) noexcept:
    """0 float32, 1 float64, -1 anything else."""
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_FLOAT32:
        return 0
    if t == cnp.NPY_FLOAT64:
        return 1
    return -1


cdef inline const int64_t *_offs(cnp.ndarray a, Py_ssize_t n, str field) except? NULL:
    """Pointer to an int64 offset array with at least n entries (an internal
    consistency check: the call objects are built by fastattn, not users)."""
    if a is None:
        raise ValueError(f"fastattn kernel call: required field {field!r} was never set")
    if (cnp.PyArray_TYPE(a) != cnp.NPY_INT64 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or cnp.PyArray_SIZE(a) < n):
        raise ValueError(f"fastattn kernel call: {field} must be a contiguous int64 "
                         f"array of at least {n} entries")
    return <const int64_t *>cnp.PyArray_DATA(a)
