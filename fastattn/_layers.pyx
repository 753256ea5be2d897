# cython: language_level=3
"""Fused row kernels for fastattn's transformer layers.

Parallel layout
---------------
Everything here works on a matrix of ``N`` rows (tokens) by ``C`` features,
each row a contiguous run; row ``i`` starts ``i * ld`` elements after the
first.  One ``prange`` over rows (``schedule(static)``); a row is processed
start to finish by one thread, in a fixed order, so the results do not
depend on the thread count.  The layers in :mod:`fastattn.nn` validate and
shape everything first (``fastattn/nn/_ops.py``); nothing here checks user
input.

Why fused: the NumPy expression of ``LayerNorm(x + a + bias)`` makes five or
six passes over memory with as many temporaries; here it is one read pass
into a row that stays in L1 and one write pass.  Measured in
``benchmarks/bench_layers.py --kernels``.

Precision: row sums (mean, variance, mean square) are accumulated in double
with four independent partial sums (so gcc can vectorise them without
reassociating); the elementwise work runs in the input type.  Variance is
the centred two-pass form, never ``E[x^2] - E[x]^2``.

Kernels
-------
* ``add_norm``: ``s = a (+ a_bias) (+ r)``; optionally store ``s``; then
  ``n = LayerNorm(s)`` or ``RMSNorm(s)`` (optional weight and bias), or no
  norm at all (just the fused residual add).
* ``bias_act``: ``out = act(h (+ bias))`` for identity, ReLU, exact GELU,
  tanh GELU and SiLU.
* ``swiglu``: ``out = silu(g + bg) * (u + bu)`` where ``g`` and ``u`` are the
  two halves of each row of ``h`` (one fused gate/up projection).

bfloat16 copies (float32 only): each kernel can also write its result rounded
to bfloat16 (round to nearest even, NaN kept as a quiet NaN of the same sign,
the rounding of ``ml_dtypes``' ``astype``) into a second output, in the same
pass: ``add_norm``'s ``nb`` (the normalised sum, e.g. the next GEMM's input,
while ``s`` / ``n`` stay the float32 residual stream), ``bias_act``'s and
``swiglu``'s ``outb``.  ``n`` / ``out`` of ``add_norm`` / ``swiglu`` may then
be omitted (only the bfloat16 copy is stored).  A bfloat16 array is passed as
any 2-byte array (``ml_dtypes.bfloat16`` or its ``uint16`` view).
"""
from cython.parallel cimport prange
from libc.math cimport sqrt, erf, tanh, exp
from libc.stdint cimport uint16_t

import numpy as np
cimport numpy as cnp

cnp.import_array()

ctypedef fused floating:
    float
    double

cdef extern from "fa_util.h" nogil:
    int FA_OPENMP

# float32 activations written so that gcc vectorises them (no libm calls in
# the loops): exp by range reduction to [-ln2/2, ln2/2], cephes' degree-5
# polynomial and scaling by 2^n through the exponent bits; GELU's erf by a
# rational approximation (fa_act.h: erf's |error| <= 4.5e-7 in float32).
# libm's erff / tanhf / expf are not vectorised and cost 10-30 ns per element
# here (bench_layers.py --kernels).
# float64 keeps libm.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include "fa_act.h"
    /* With gcc's default -ftrapping-math the clamps below keep these loops
       scalar ("control flow in loop"); they never rely on FP exceptions. */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("no-trapping-math")
    #endif
    /* exp and the GELU / tanh-GELU / SiLU loops: fa_act.h's, the formulas
       the GEMMs fuse into their stores, so a row pass here and a fused
       store give the same bits */
    static inline float fa_expf(float x) { return fa_act_expf(x); }
    static void fa_silu_f32(float *o, Py_ssize_t n) { fa_act_f32(o, n, FA_ACT_SILU); }
    static void fa_gelu_tanh_f32(float *o, Py_ssize_t n) { fa_act_f32(o, n, FA_ACT_GELU_TANH); }
    static void fa_gelu_f32(float *o, Py_ssize_t n) { fa_act_f32(o, n, FA_ACT_GELU); }
    static void fa_swiglu_f32(const float *g, const float *u, const float *bg,
                              const float *bu, float *o, Py_ssize_t n) {
        if (bg) {
            for (Py_ssize_t j = 0; j < n; j++) {
                float x = g[j] + bg[j];
                o[j] = x / (1.0f + fa_expf(-x)) * (u[j] + bu[j]);
            }
        } else {
            for (Py_ssize_t j = 0; j < n; j++) {
                float x = g[j];
                o[j] = x / (1.0f + fa_expf(-x)) * u[j];
            }
        }
    }
    /* float32 -> bfloat16, round to nearest even; a NaN becomes the quiet
       NaN 0x7fc0 with its sign (what ml_dtypes' astype gives); branch-free
       so that the store loops vectorise */
    static inline uint16_t fa_bf16_rne(float f) {
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        uint32_t q = ((u >> 16) & 0x8000u) | 0x7fc0u;
        return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? q : r);
    }
    static void fa_store_bf16(const float *x, uint16_t *o, Py_ssize_t n) {
        for (Py_ssize_t j = 0; j < n; j++)
            o[j] = fa_bf16_rne(x[j]);
    }
    static void fa_swiglu_f32_bf16(const float *g, const float *u, const float *bg,
                                   const float *bu, uint16_t *o, Py_ssize_t n) {
        /* the same float32 values as fa_swiglu_f32, stored as bfloat16 */
        if (bg) {
            for (Py_ssize_t j = 0; j < n; j++) {
                float x = g[j] + bg[j];
                o[j] = fa_bf16_rne(x / (1.0f + fa_expf(-x)) * (u[j] + bu[j]));
            }
        } else {
            for (Py_ssize_t j = 0; j < n; j++) {
                float x = g[j];
                o[j] = fa_bf16_rne(x / (1.0f + fa_expf(-x)) * u[j]);
            }
        }
    }
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    uint16_t fa_bf16_rne(float f) nogil
    void fa_store_bf16(const float *x, uint16_t *o, Py_ssize_t n) nogil
    void fa_swiglu_f32_bf16(const float *g, const float *u, const float *bg,
                            const float *bu, uint16_t *o, Py_ssize_t n) nogil
    float fa_expf(float x) nogil
    void fa_silu_f32(float *o, Py_ssize_t n) nogil
    void fa_gelu_tanh_f32(float *o, Py_ssize_t n) nogil
    void fa_gelu_f32(float *o, Py_ssize_t n) nogil
    void fa_swiglu_f32(const float *g, const float *u, const float *bg,
                       const float *bu, float *o, Py_ssize_t n) nogil

OPENMP = bool(FA_OPENMP)

# norm modes
cdef enum:
    NORM_NONE = 0
    NORM_LAYER = 1
    NORM_RMS = 2

# activations
cdef enum:
    ACT_IDENTITY = 0
    ACT_RELU = 1
    ACT_GELU = 2
    ACT_GELU_TANH = 3
    ACT_SILU = 4

NORMS = {"none": NORM_NONE, "layer": NORM_LAYER, "rms": NORM_RMS}
ACTIVATIONS = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "gelu": ACT_GELU,
               "gelu_tanh": ACT_GELU_TANH, "silu": ACT_SILU}

cdef double SQRT1_2 = 0.70710678118654752440
cdef double SQRT_2_OVER_PI = 0.79788456080286535588


cdef inline char *_ptr(object a):
    if a is None:
        return NULL
    return <char *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Py_ssize_t _ld(object a):
    """Row stride in elements of a 2-D array (0 for None or one row)."""
    if a is None:
        return 0
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_DIM(arr, 0) <= 1:
        return 0
    return cnp.PyArray_STRIDE(arr, 0) // cnp.PyArray_ITEMSIZE(arr)


# ---------------------------------------------------------------------------
# residual add + norm
# ---------------------------------------------------------------------------

cdef inline double _sum(const floating *t, Py_ssize_t C) noexcept nogil:
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t j = 0
    while j + 4 <= C:
        s0 += t[j]
        s1 += t[j + 1]
        s2 += t[j + 2]
        s3 += t[j + 3]
        j += 4
    while j < C:
        s0 += t[j]
        j += 1
    return (s0 + s1) + (s2 + s3)


cdef inline double _sumsq(const floating *t, double c, Py_ssize_t C) noexcept nogil:
    """sum((t - c)^2)"""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, d0, d1, d2, d3
    cdef Py_ssize_t j = 0
    while j + 4 <= C:
        d0 = t[j] - c
        d1 = t[j + 1] - c
        d2 = t[j + 2] - c
        d3 = t[j + 3] - c
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        j += 4
    while j < C:
        d0 = t[j] - c
        s0 += d0 * d0
        j += 1
    return (s0 + s1) + (s2 + s3)


cdef inline void _add_norm_row(const floating *a, const floating *ab,
                               const floating *r, int mode,
                               const floating *w, const floating *b, double eps,
                               floating *s, floating *n, uint16_t *nb,
                               Py_ssize_t C) noexcept nogil:
    # IN  a (C), ab (C, optional), r (C, optional), w, b (C, optional)
    # OUT s (C, optional): a + ab + r;  n (C, optional): norm(s);
    #     nb (C, optional, float32 only): norm(s) rounded to bfloat16
    #     (n and nb may not both be NULL when mode != NORM_NONE)
    cdef floating *t = s if s != NULL else n
    cdef const floating *src
    cdef Py_ssize_t j
    cdef double mean = 0.0, var
    cdef floating fm, fi
    # pass 1: the sum, written where the norm will read it
    if ab != NULL and r != NULL:
        for j in range(C):
            t[j] = a[j] + ab[j] + r[j]
    elif ab != NULL:
        for j in range(C):
            t[j] = a[j] + ab[j]
    elif r != NULL:
        for j in range(C):
            t[j] = a[j] + r[j]
    elif t != a and t != NULL:
        for j in range(C):
            t[j] = a[j]
    if mode == NORM_NONE:
        return
    src = <const floating *>t if t != NULL else a
    if mode == NORM_LAYER:
        mean = _sum(src, C) / C
        var = _sumsq(src, mean, C) / C
    else:
        var = _sumsq(src, 0.0, C) / C
    fm = <floating>mean
    fi = <floating>(1.0 / sqrt(var + eps))
    if n != NULL:
        if w != NULL and b != NULL:
            for j in range(C):
                n[j] = (src[j] - fm) * fi * w[j] + b[j]
        elif w != NULL:
            for j in range(C):
                n[j] = (src[j] - fm) * fi * w[j]
        elif b != NULL:
            for j in range(C):
                n[j] = (src[j] - fm) * fi + b[j]
        else:
            for j in range(C):
                n[j] = (src[j] - fm) * fi
        if floating is float:
            if nb != NULL:      # the row is still in L1
                fa_store_bf16(n, nb, C)
    elif floating is float:
        # only the bfloat16 copy: the same float32 expressions, rounded
        if w != NULL and b != NULL:
            for j in range(C):
                nb[j] = fa_bf16_rne((src[j] - fm) * fi * w[j] + b[j])
        elif w != NULL:
            for j in range(C):
                nb[j] = fa_bf16_rne((src[j] - fm) * fi * w[j])
        elif b != NULL:
            for j in range(C):
                nb[j] = fa_bf16_rne((src[j] - fm) * fi + b[j])
        else:
            for j in range(C):
                nb[j] = fa_bf16_rne((src[j] - fm) * fi)


cdef void _add_norm(const floating *a, Py_ssize_t lda, const floating *ab,
                    const floating *r, Py_ssize_t ldr, int mode,
                    const floating *w, const floating *b, double eps,
                    floating *s, Py_ssize_t lds, floating *n, Py_ssize_t ldn,
                    uint16_t *nb, Py_ssize_t ldnb,
                    Py_ssize_t N, Py_ssize_t C, int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(N, num_threads=nthreads, schedule="static"):
        _add_norm_row(a + i * lda, ab, (r + i * ldr) if r != NULL else NULL,
                      mode, w, b, eps,
                      (s + i * lds) if s != NULL else NULL,
                      (n + i * ldn) if n != NULL else NULL,
                      (nb + i * ldnb) if nb != NULL else NULL, C)


def add_norm(a, a_bias, r, int mode, w, b, double eps, s, n, int nthreads, nb=None):
    """``s = a + a_bias + r`` and ``n = norm(s)`` row by row, in one pass.

    Parameters
    ----------
    a : ndarray, shape (N, C)
        Rows with a contiguous last axis (IN).
    a_bias : ndarray, shape (C,), or None
        Added to every row of ``a`` (e.g. the bias of the GEMM that made ``a``).
    r : ndarray, shape (N, C), or None
        The residual.
    mode : int
        ``NORMS["none" | "layer" | "rms"]``.
    w, b : ndarray, shape (C,), or None
        Scale and shift of the norm.
    eps : float
    s : ndarray, shape (N, C), or None
        OUT: the sum; may be ``a`` or ``r`` itself (same rows).
    n : ndarray, shape (N, C), or None
        OUT: the normalised sum; may be ``a`` or ``r`` itself.
    nthreads : int
    nb : ndarray, shape (N, C), 2-byte elements, or None
        OUT (float32 only): the normalised sum rounded to bfloat16.  When it
        is given, ``n`` may be None (only the bfloat16 copy is stored), unless
        ``s`` is None too and there is something to add (the sum needs a
        float32 row to live in).

    Every array except ``nb`` must have the same dtype (float32 or float64);
    this is not checked here.
    """
    cdef cnp.ndarray A = <cnp.ndarray>a
    cdef Py_ssize_t N = cnp.PyArray_DIM(A, 0), C = cnp.PyArray_DIM(A, 1)
    if N == 0 or C == 0:
        return
    cdef char *pa = _ptr(a)
    cdef char *pab = _ptr(a_bias)
    cdef char *pr = _ptr(r)
    cdef char *pw = _ptr(w)
    cdef char *pb = _ptr(b)
    cdef char *ps = _ptr(s)
    cdef char *pn = _ptr(n)
    cdef char *pnb = _ptr(nb)
    cdef Py_ssize_t lda = _ld(a), ldr = _ld(r), lds = _ld(s), ldn = _ld(n), ldnb = _ld(nb)
    if A.dtype == np.float32:
        with nogil:
            _add_norm(<float *>pa, lda, <float *>pab, <float *>pr, ldr, mode,
                      <float *>pw, <float *>pb, eps, <float *>ps, lds,
                      <float *>pn, ldn, <uint16_t *>pnb, ldnb, N, C, nthreads)
    else:
        with nogil:
            _add_norm(<double *>pa, lda, <double *>pab, <double *>pr, ldr, mode,
                      <double *>pw, <double *>pb, eps, <double *>ps, lds,
                      <double *>pn, ldn, NULL, 0, N, C, nthreads)


# ---------------------------------------------------------------------------
# bias + activation
# ---------------------------------------------------------------------------

cdef inline double _gelu_d(double x) noexcept nogil:
    return 0.5 * x * (1.0 + erf(x * SQRT1_2))


cdef inline double _gelu_tanh_d(double x) noexcept nogil:
    return 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


cdef inline double _silu_d(double x) noexcept nogil:
    return x / (1.0 + exp(-x))


cdef inline void _bias_act_row(const floating *h, const floating *bias, int act,
                               floating *o, uint16_t *ob, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating x, zero = 0
    if bias != NULL:
        for j in range(C):
            o[j] = h[j] + bias[j]
    elif o != h:
        for j in range(C):
            o[j] = h[j]
    if act == ACT_RELU:
        for j in range(C):
            x = o[j]
            o[j] = zero if x < zero else x   # NaN stays NaN, like torch.relu
    elif act == ACT_GELU:
        if floating is float:
            fa_gelu_f32(o, C)
        else:
            for j in range(C):
                o[j] = _gelu_d(o[j])
    elif act == ACT_GELU_TANH:
        if floating is float:
            fa_gelu_tanh_f32(o, C)
        else:
            for j in range(C):
                o[j] = _gelu_tanh_d(o[j])
    elif act == ACT_SILU:
        if floating is float:
            fa_silu_f32(o, C)
        else:
            for j in range(C):
                o[j] = _silu_d(o[j])
    if floating is float:
        if ob != NULL:          # the row is still in L1
            fa_store_bf16(o, ob, C)


cdef void _bias_act(const floating *h, Py_ssize_t ldh, const floating *bias,
                    int act, floating *o, Py_ssize_t ldo, uint16_t *ob,
                    Py_ssize_t ldob, Py_ssize_t N,
                    Py_ssize_t C, int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(N, num_threads=nthreads, schedule="static"):
        _bias_act_row(h + i * ldh, bias, act, o + i * ldo,
                      (ob + i * ldob) if ob != NULL else NULL, C)


def bias_act(h, bias, int act, out, int nthreads, outb=None):
    """``out = act(h + bias)`` row by row.

    Parameters
    ----------
    h : ndarray, shape (N, C)  (IN)
    bias : ndarray, shape (C,), or None
    act : int
        ``ACTIVATIONS[name]``.
    out : ndarray, shape (N, C)
        OUT; may be ``h`` itself.
    nthreads : int
    outb : ndarray, shape (N, C), 2-byte elements, or None
        OUT (float32 only): ``out`` rounded to bfloat16, in the same pass.
    """
    cdef cnp.ndarray H = <cnp.ndarray>h
    cdef Py_ssize_t N = cnp.PyArray_DIM(H, 0), C = cnp.PyArray_DIM(H, 1)
    if N == 0 or C == 0:
        return
    cdef char *ph = _ptr(h)
    cdef char *pbias = _ptr(bias)
    cdef char *po = _ptr(out)
    cdef char *pob = _ptr(outb)
    cdef Py_ssize_t ldh = _ld(h), ldo = _ld(out), ldob = _ld(outb)
    if H.dtype == np.float32:
        with nogil:
            _bias_act(<float *>ph, ldh, <float *>pbias, act, <float *>po, ldo,
                      <uint16_t *>pob, ldob, N, C, nthreads)
    else:
        with nogil:
            _bias_act(<double *>ph, ldh, <double *>pbias, act, <double *>po,
                      ldo, NULL, 0, N, C, nthreads)


# ---------------------------------------------------------------------------
# SwiGLU
# ---------------------------------------------------------------------------

cdef inline void _swiglu_row(const floating *h, const floating *bias,
                             floating *o, uint16_t *ob, Py_ssize_t F) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating g, u
    if floating is float:
        if o != NULL:
            fa_swiglu_f32(h, h + F, bias, (bias + F) if bias != NULL else NULL, o, F)
            if ob != NULL:
                fa_store_bf16(o, ob, F)
        else:
            fa_swiglu_f32_bf16(h, h + F, bias, (bias + F) if bias != NULL else NULL,
                               ob, F)
    else:
        for j in range(F):
            g = h[j]
            u = h[F + j]
            if bias != NULL:
                g = g + bias[j]
                u = u + bias[F + j]
            o[j] = _silu_d(g) * u


cdef void _swiglu(const floating *h, Py_ssize_t ldh, const floating *bias,
                  floating *o, Py_ssize_t ldo, uint16_t *ob, Py_ssize_t ldob,
                  Py_ssize_t N, Py_ssize_t F, int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(N, num_threads=nthreads, schedule="static"):
        _swiglu_row(h + i * ldh, bias, (o + i * ldo) if o != NULL else NULL,
                    (ob + i * ldob) if ob != NULL else NULL, F)


def swiglu(h, bias, out, int nthreads, outb=None):
    """``out = silu(h[:, :F] + bias[:F]) * (h[:, F:] + bias[F:])``.

    Parameters
    ----------
    h : ndarray, shape (N, 2F)  (IN: gate and up projections side by side)
    bias : ndarray, shape (2F,), or None
    out : ndarray, shape (N, F), or None (only with ``outb``)
        OUT; may be ``h[:, :F]`` (the gate half, written in place).
    nthreads : int
    outb : ndarray, shape (N, F), 2-byte elements, or None
        OUT (float32 only): the result rounded to bfloat16, in the same pass.
    """
    cdef cnp.ndarray H = <cnp.ndarray>h
    cdef Py_ssize_t N = cnp.PyArray_DIM(H, 0), F = cnp.PyArray_DIM(H, 1) // 2
    if N == 0 or F == 0:
        return
    cdef char *ph = _ptr(h)
    cdef char *pbias = _ptr(bias)
    cdef char *po = _ptr(out)
    cdef char *pob = _ptr(outb)
    cdef Py_ssize_t ldh = _ld(h), ldo = _ld(out), ldob = _ld(outb)
    if H.dtype == np.float32:
        with nogil:
            _swiglu(<float *>ph, ldh, <float *>pbias, <float *>po, ldo,
                    <uint16_t *>pob, ldob, N, F, nthreads)
    else:
        with nogil:
            _swiglu(<double *>ph, ldh, <double *>pbias, <double *>po, ldo, NULL, 0,
                    N, F, nthreads)
