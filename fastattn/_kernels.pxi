# Shared body of fastattn's attention kernels, compiled once per instruction
# set (_kernels_baseline.pyx, _kernels_avx2.pyx, _kernels_avx512.pyx include
# this file; setup.py gives each its own -m flags and fa_tiles.h picks its
# SIMD branch from them).
#
# Parallel layout
# ---------------
# Every kernel flattens the leading (batch, head) dimensions into a list of
# element offsets computed in Python (functional.py), so broadcast dimensions
# (stride 0), negative strides and views straight out of a fused QKV
# projection are read in place; only the last axis must be contiguous.  The
# kernels trust those offsets: nothing here validates user input.
#
# * flash(): the fused attention (FlashAttention-2 style).  Two layouts:
#   - "lanes": a task is (batch, kv head, block of FA_BR query rows).  The
#     query block is packed transposed (Qt, D x FA_BR), pre-multiplied by
#     scale*log2(e), so the score tile St (keys x queries), the online softmax
#     statistics and the output accumulator Ot (Dv x FA_BR) are all vectors
#     over the query lanes.  K and V are read in place, FA_BC keys at a time.
#     All query heads that share a kv head (GQA) are processed by the same
#     task, so each K/V tile is brought into cache once per group.
#   - "rows": when a kv head has only a few query rows (decode: one new token,
#     G query heads per kv head), lanes would be mostly empty.  Rows are kept
#     as rows (R x D), scores are dot products vectorised over D, and the key
#     axis is split into fixed chunks of FA_SPLIT keys (split-K,
#     "flash-decoding") so that even B*H = 1 keeps every core busy.  Partial
#     (m, l, O) per chunk are merged by log-sum-exp in a fixed order.
#   Chunk sizes never depend on the thread count, so results are
#   bit-identical for any number of threads.
# * Tile visibility: causal / sliding window bounds are computed per tile
#   from the row intervals [lo(i), hi(i)], and masks are summarised per tile
#   by classify_mask() (hidden / visible / partial) over the mask's own,
#   un-broadcast shape.  Hidden tiles are skipped, visible tiles skip the
#   masking arithmetic, only partial tiles pay per-element work.
# * scores(), softmax(), weighted_sum(): the materialised path (returns the
#   attention weights), built from the same tile functions.

from cython.parallel cimport prange, parallel
from libc.math cimport fabs, INFINITY, exp, expf
from libc.float cimport FLT_MAX, DBL_MAX
from libc.stdint cimport int64_t, uint8_t

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
    ROWS_MAX = 16          # at most this many query rows per kv head -> rows path

cdef double LOG2E = 1.4426950408889634

# tile classes
cdef enum:
    T_HIDDEN = 0
    T_VISIBLE = 1
    T_PARTIAL = 2


ISA = (<bytes>FA_BUILD_ISA).decode()
OPENMP = bool(FA_OPENMP)
TILE_ROWS = FA_BR
TILE_KEYS = FA_BC
SPLIT_KEYS = FA_SPLIT
ROWS_PATH_MAX = ROWS_MAX


def omp_max_threads():
    """OpenMP's default team size (1 without OpenMP)."""
    return fa_omp_max_threads()


cdef inline char *_ptr(cnp.ndarray a):
    return <char *>cnp.PyArray_DATA(a)


# ---------------------------------------------------------------------------
# Flash attention
# ---------------------------------------------------------------------------

ctypedef struct FlashArgs:
    const char *q
    const int64_t *qoff
    Py_ssize_t qs
    const char *k
    const int64_t *koff
    Py_ssize_t ks
    const char *v
    const int64_t *voff
    Py_ssize_t vs
    char *o
    const int64_t *ooff
    Py_ssize_t os
    Py_ssize_t L, S, D, Dv, nb, Hq, Hkv, G
    double qscale            # scale * log2(e)
    int mask_kind            # 0 none, 1 bool (uint8), 2 additive (same dtype)
    const char *mask
    const int64_t *moff      # per (nb*Hq)
    Py_ssize_t msq, msk      # element strides of the mask over L and S
    const uint8_t *tab       # tile classes [ntab, tab_nq, tab_nk]
    const int64_t *tidx      # per (nb*Hq): slice of tab
    Py_ssize_t tab_nq, tab_nk
    bint has_lo, has_hi      # row i sees keys in [i+off-left, i+off+right]
    Py_ssize_t left, right, off
    const double *slopes     # ALiBi slopes per query head (natural units) or NULL
    # partial results of the rows path: [n_tasks, R, Dv + 2]
    char *part
    Py_ssize_t nchunk, R


cdef inline Py_ssize_t _row_lo(const FlashArgs *a, Py_ssize_t i) noexcept nogil:
    if a.has_lo:
        return i + a.off - a.left
    return 0


cdef inline Py_ssize_t _row_hi(const FlashArgs *a, Py_ssize_t i) noexcept nogil:
    if a.has_hi:
        return i + a.off + a.right
    return a.S - 1


cdef inline int _geo_class(const FlashArgs *a, Py_ssize_t q0, Py_ssize_t q1,
                           Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    """Visibility of keys [k0, k1] for query rows [q0, q1] from causal/window
    bounds alone (the row intervals slide by one key per row)."""
    if _row_hi(a, q1) < k0 or _row_lo(a, q0) > k1:
        return T_HIDDEN
    if _row_lo(a, q1) <= k0 and _row_hi(a, q0) >= k1:
        return T_VISIBLE
    return T_PARTIAL


cdef inline int _mask_class(const FlashArgs *a, Py_ssize_t n, Py_ssize_t qb,
                            Py_ssize_t kb) noexcept nogil:
    if a.mask_kind == 0:
        return T_VISIBLE
    if a.tab_nq == 1:
        qb = 0
    if a.tab_nk == 1:
        kb = 0
    return a.tab[(a.tidx[n] * a.tab_nq + qb) * a.tab_nk + kb]


cdef inline floating _log2_units(floating x) noexcept nogil:
    """An additive mask value in log2 units, saturating at the largest finite
    value instead of overflowing to inf (which would turn the row into
    inf - inf = NaN); -inf and NaN pass through."""
    cdef floating c = x * <floating>LOG2E
    if floating is float:
        if c > FLT_MAX and x <= FLT_MAX:
            return FLT_MAX
        if c < -FLT_MAX and x >= -FLT_MAX:
            return -FLT_MAX
    else:
        if c > DBL_MAX and x <= DBL_MAX:
            return DBL_MAX
        if c < -DBL_MAX and x >= -DBL_MAX:
            return -DBL_MAX
    return c


cdef inline void _fill_neginf(floating *x, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(lo, hi):
        x[i] = -INFINITY


cdef void _bias_tile(const FlashArgs *a, floating *St, Py_ssize_t n,
                     Py_ssize_t h, Py_ssize_t q0, Py_ssize_t nr, Py_ssize_t k0,
                     Py_ssize_t nk, int geo, int mcls) noexcept nogil:
    """Bounds, mask and ALiBi for a lanes tile (St[j][i], log2 units).  Key j
    sees a contiguous range of rows, so the bounds are two fills per key."""
    cdef Py_ssize_t j, i, kj, ilo, ihi
    cdef floating *row
    cdef floating c
    cdef floating slope = 0
    cdef const uint8_t *mb
    cdef const floating *mf
    if a.slopes != NULL:
        slope = <floating>(a.slopes[h] * LOG2E)
    for j in range(nk):
        kj = k0 + j
        row = St + j * FA_BR
        if geo == T_PARTIAL:
            # row i sees kj iff i >= kj - off - right and i <= kj - off + left
            ilo = kj - a.off - a.right - q0 if a.has_hi else 0
            ihi = kj - a.off + a.left - q0 if a.has_lo else nr - 1
            _fill_neginf(row, 0, min(max(ilo, 0), nr))
            _fill_neginf(row, min(max(ihi + 1, 0), nr), nr)
        if mcls == T_PARTIAL:
            if a.mask_kind == 1:
                mb = (<const uint8_t *>a.mask) + a.moff[n] + q0 * a.msq + kj * a.msk
                if a.msq == 0:
                    if mb[0] == 0:
                        _fill_neginf(row, 0, nr)
                else:
                    for i in range(nr):
                        if mb[i * a.msq] == 0:
                            row[i] = -INFINITY
            else:
                mf = (<const floating *>a.mask) + a.moff[n] + q0 * a.msq + kj * a.msk
                # -inf hides the key outright (like False), so a NaN score of
                # a hidden key cannot leak; other values are added.
                if a.msq == 0:
                    c = _log2_units(mf[0])
                    if c == -INFINITY:
                        _fill_neginf(row, 0, nr)
                    else:
                        for i in range(nr):
                            row[i] = row[i] + c
                else:
                    for i in range(nr):
                        c = _log2_units(mf[i * a.msq])
                        row[i] = -INFINITY if c == -INFINITY else row[i] + c
        if a.slopes != NULL:
            for i in range(nr):
                row[i] = row[i] - slope * <floating>fabs(<double>(q0 + i + a.off - kj))


cdef void _bias_row(const FlashArgs *a, floating *s, Py_ssize_t n, Py_ssize_t h,
                    Py_ssize_t qi, Py_ssize_t k0, Py_ssize_t nk, int geo,
                    int mcls) noexcept nogil:
    """Bounds, mask and ALiBi for one query row against keys k0..k0+nk."""
    cdef Py_ssize_t j, jlo, jhi
    cdef floating slope, c
    cdef const uint8_t *mb
    cdef const floating *mf
    if geo == T_PARTIAL:
        jlo = _row_lo(a, qi) - k0
        jhi = _row_hi(a, qi) - k0
        _fill_neginf(s, 0, min(max(jlo, 0), nk))
        _fill_neginf(s, min(max(jhi + 1, 0), nk), nk)
    if mcls == T_PARTIAL:
        if a.mask_kind == 1:
            mb = (<const uint8_t *>a.mask) + a.moff[n] + qi * a.msq + k0 * a.msk
            for j in range(nk):
                if mb[j * a.msk] == 0:
                    s[j] = -INFINITY
        else:
            mf = (<const floating *>a.mask) + a.moff[n] + qi * a.msq + k0 * a.msk
            for j in range(nk):
                c = _log2_units(mf[j * a.msk])
                s[j] = -INFINITY if c == -INFINITY else s[j] + c
    if a.slopes != NULL:
        slope = <floating>(a.slopes[h] * LOG2E)
        for j in range(nk):
            s[j] = s[j] - slope * <floating>fabs(<double>(qi + a.off - k0 - j))


cdef void _flash_lanes_task(const FlashArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    """One task of the lanes layout: (batch, kv head, query block)."""
    cdef Py_ssize_t nqb = (a.L + FA_BR - 1) // FA_BR
    # largest query blocks (most keys when causal) first: with the dynamic
    # schedule this balances the triangle.
    cdef Py_ssize_t qb = nqb - 1 - (t % nqb)
    cdef Py_ssize_t bh = t // nqb
    cdef Py_ssize_t hkv = bh % a.Hkv
    cdef Py_ssize_t bn = bh // a.Hkv
    cdef Py_ssize_t q0 = qb * FA_BR
    cdef Py_ssize_t nr = a.L - q0
    if nr > FA_BR:
        nr = FA_BR
    cdef Py_ssize_t q1 = q0 + nr - 1
    cdef Py_ssize_t D = a.D, Dv = a.Dv, G = a.G
    cdef Py_ssize_t qt_sz = D * FA_BR, ot_sz = Dv * FA_BR
    # buffer layout: St | alpha | per head g: Qt, Ot, m, l
    cdef floating *St = buf
    cdef floating *alpha = St + FA_BC * FA_BR
    cdef floating *hbase = alpha + FA_BR
    cdef Py_ssize_t hstride = qt_sz + ot_sz + 2 * FA_BR
    cdef floating *Qt
    cdef floating *Ot
    cdef floating *m
    cdef floating *l
    cdef const floating *qrow
    cdef const floating *kp
    cdef const floating *vp
    cdef floating *orow
    cdef Py_ssize_t g, h, n, i, d, j, kb, k0, k1, nk, kb_lo, kb_hi, lo, hi
    cdef int geo, mcls
    cdef floating qscale = <floating>a.qscale
    cdef floating inv

    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qt = hbase + g * hstride
        Ot = Qt + qt_sz
        m = Ot + ot_sz
        l = m + FA_BR
        qrow = (<const floating *>a.q) + a.qoff[n] + q0 * a.qs
        if floating is float:
            fa_pack_qt_f32(qrow, a.qs, <int>nr, <int>D, qscale, Qt)
        else:
            fa_pack_qt_f64(qrow, a.qs, <int>nr, <int>D, qscale, Qt)
        for i in range(ot_sz):
            Ot[i] = 0
        for i in range(FA_BR):
            m[i] = -INFINITY
            l[i] = 0

    # key blocks that can hold a visible key for some row of the block
    lo = _row_lo(a, q0)
    hi = _row_hi(a, q1)
    if lo < 0:
        lo = 0
    if hi > a.S - 1:
        hi = a.S - 1
    kb_lo = lo // FA_BC
    kb_hi = hi // FA_BC + 1 if hi >= lo else kb_lo

    kp = (<const floating *>a.k) + a.koff[bn * a.Hkv + hkv]
    vp = (<const floating *>a.v) + a.voff[bn * a.Hkv + hkv]
    for kb in range(kb_lo, kb_hi):
        k0 = kb * FA_BC
        nk = a.S - k0
        if nk > FA_BC:
            nk = FA_BC
        k1 = k0 + nk - 1
        geo = _geo_class(a, q0, q1, k0, k1)
        if geo == T_HIDDEN:
            continue
        for g in range(G):
            n = bn * a.Hq + hkv * G + g
            mcls = _mask_class(a, n, qb, kb)
            if mcls == T_HIDDEN:
                continue
            Qt = hbase + g * hstride
            Ot = Qt + qt_sz
            m = Ot + ot_sz
            l = m + FA_BR
            if floating is float:
                fa_qk_f32(kp + k0 * a.ks, a.ks, <int>nk, <int>D, Qt, St)
            else:
                fa_qk_f64(kp + k0 * a.ks, a.ks, <int>nk, <int>D, Qt, St)
            if geo == T_PARTIAL or mcls == T_PARTIAL or a.slopes != NULL:
                _bias_tile(a, St, n, hkv * G + g, q0, nr, k0, nk, geo, mcls)
            if floating is float:
                fa_softmax_f32(St, <int>nk, m, l, alpha)
                fa_rescale_pv_f32(vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, St, Ot, alpha)
            else:
                fa_softmax_f64(St, <int>nk, m, l, alpha)
                fa_rescale_pv_f64(vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, St, Ot, alpha)

    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qt = hbase + g * hstride
        Ot = Qt + qt_sz
        m = Ot + ot_sz
        l = m + FA_BR
        # rows with no visible key (l == 0) are written as zeros, never NaN
        orow = (<floating *>a.o) + a.ooff[n] + q0 * a.os
        if floating is float:
            fa_store_ot_f32(Ot, l, <int>nr, <int>Dv, orow, a.os)
        else:
            fa_store_ot_f64(Ot, l, <int>nr, <int>Dv, orow, a.os)


cdef void _flash_rows_task(const FlashArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    """One task of the rows layout: (batch, kv head, chunk of FA_SPLIT keys).
    Writes the chunk's partial (O, m, l) for every row of the kv head."""
    cdef Py_ssize_t c = t % a.nchunk
    cdef Py_ssize_t bh = t // a.nchunk
    cdef Py_ssize_t hkv = bh % a.Hkv
    cdef Py_ssize_t bn = bh // a.Hkv
    cdef Py_ssize_t R = a.R, D = a.D, Dv = a.Dv, L = a.L
    # thread buffer: Qr (R x D) | s (R x ROWS_BC) | Ob (R x Dv) | mb (R) | lb (R)
    cdef floating *Qr = buf
    cdef floating *s = Qr + R * D
    cdef floating *Ob = s + R * ROWS_BC
    cdef floating *mb = Ob + R * Dv
    cdef floating *lb = mb + R
    # this chunk's partial (O, m, l) per row, stride Dv + 2
    cdef floating *P = (<floating *>a.part) + t * R * (Dv + 2)
    cdef const floating *qrow
    cdef const floating *kp
    cdef const floating *vp
    cdef Py_ssize_t r, g, i, n, d, j, kb, k0, k1, nk, c0, c1, t0, t1, tt
    cdef int geo, mcls, any_vis
    cdef floating qscale = <floating>a.qscale
    cdef floating mx, al, sm

    for r in range(R):
        g = r // L
        i = r % L
        n = bn * a.Hq + hkv * a.G + g
        qrow = (<const floating *>a.q) + a.qoff[n] + i * a.qs
        for d in range(D):
            Qr[r * D + d] = qrow[d] * qscale
        for d in range(Dv):
            Ob[r * Dv + d] = 0
        mb[r] = -INFINITY
        lb[r] = 0

    kp = (<const floating *>a.k) + a.koff[bn * a.Hkv + hkv]
    vp = (<const floating *>a.v) + a.voff[bn * a.Hkv + hkv]
    c0 = c * FA_SPLIT
    c1 = c0 + FA_SPLIT
    if c1 > a.S:
        c1 = a.S
    for kb in range(c0 // ROWS_BC, (c1 + ROWS_BC - 1) // ROWS_BC):
        k0 = kb * ROWS_BC
        nk = c1 - k0
        if nk > ROWS_BC:
            nk = ROWS_BC
        k1 = k0 + nk - 1
        # skip the block when no row of any head sees any of its keys (the
        # mask summary is per FA_BC-key tile: a block holds several)
        any_vis = 0
        for r in range(R):
            n = bn * a.Hq + hkv * a.G + r // L
            for tt in range((nk + FA_BC - 1) // FA_BC):
                t0 = k0 + tt * FA_BC
                t1 = min(t0 + FA_BC - 1, k1)
                if (_geo_class(a, r % L, r % L, t0, t1) != T_HIDDEN and
                        _mask_class(a, n, (r % L) // FA_BR, t0 // FA_BC) != T_HIDDEN):
                    any_vis = 1
                    break
            if any_vis:
                break
        if not any_vis:
            continue
        if floating is float:
            fa_dot_rows_f32(Qr, <int>R, kp + k0 * a.ks, a.ks, <int>nk, <int>D, s, ROWS_BC)
        else:
            fa_dot_rows_f64(Qr, <int>R, kp + k0 * a.ks, a.ks, <int>nk, <int>D, s, ROWS_BC)
        for r in range(R):
            g = r // L
            i = r % L
            n = bn * a.Hq + hkv * a.G + g
            for tt in range((nk + FA_BC - 1) // FA_BC):
                t0 = k0 + tt * FA_BC
                t1 = min(t0 + FA_BC - 1, k1)
                geo = _geo_class(a, i, i, t0, t1)
                mcls = _mask_class(a, n, i // FA_BR, t0 // FA_BC)
                if geo == T_HIDDEN or mcls == T_HIDDEN:
                    for j in range(t0 - k0, t1 - k0 + 1):
                        s[r * ROWS_BC + j] = -INFINITY
                elif geo == T_PARTIAL or mcls == T_PARTIAL or a.slopes != NULL:
                    _bias_row(a, &s[r * ROWS_BC + t0 - k0], n, hkv * a.G + g, i,
                              t0, t1 - t0 + 1, geo, mcls)
            if floating is float:
                mx = fa_max_f32(&s[r * ROWS_BC], <int>nk)
            else:
                mx = fa_max_f64(&s[r * ROWS_BC], <int>nk)
            if mb[r] > mx:
                mx = mb[r]
            if mx == -INFINITY:
                al = 0
            elif floating is float:
                al = fa_exp2_f32(mb[r] - mx)
            else:
                al = fa_exp2_f64(mb[r] - mx)
            if floating is float:
                sm = fa_exp2_sub_sum_f32(&s[r * ROWS_BC], <int>nk, mx)
            else:
                sm = fa_exp2_sub_sum_f64(&s[r * ROWS_BC], <int>nk, mx)
            lb[r] = lb[r] * al + sm
            mb[r] = mx
            if lb[r] != lb[r]:
                # NaN scores: fa_max skips NaN, so carry it in m for the merge
                mb[r] = lb[r]
            if al != 1:
                for d in range(Dv):
                    Ob[r * Dv + d] = Ob[r * Dv + d] * al
        if floating is float:
            fa_axpy_rows_f32(s, <int>R, ROWS_BC, vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, Ob)
        else:
            fa_axpy_rows_f64(s, <int>R, ROWS_BC, vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, Ob)

    for r in range(R):
        for d in range(Dv):
            P[r * (Dv + 2) + d] = Ob[r * Dv + d]
        P[r * (Dv + 2) + Dv] = mb[r]
        P[r * (Dv + 2) + Dv + 1] = lb[r]


cdef void _flash_rows_merge(const FlashArgs *a, Py_ssize_t bh, floating dummy) noexcept nogil:
    """Merge the split-K partials of one (batch, kv head) in chunk order."""
    cdef Py_ssize_t hkv = bh % a.Hkv
    cdef Py_ssize_t bn = bh // a.Hkv
    cdef Py_ssize_t R = a.R, Dv = a.Dv, L = a.L, rs = a.R * (a.Dv + 2)
    cdef const floating *base = (<const floating *>a.part) + bh * a.nchunk * rs
    cdef const floating *Pc
    cdef floating *orow
    cdef Py_ssize_t r, c, d, n
    cdef floating M, lsum, w
    for r in range(R):
        n = bn * a.Hq + hkv * a.G + r // L
        orow = (<floating *>a.o) + a.ooff[n] + (r % L) * a.os
        M = -INFINITY
        for c in range(a.nchunk):
            Pc = base + c * rs + r * (Dv + 2)
            if Pc[Dv] != Pc[Dv] or Pc[Dv] > M:
                M = Pc[Dv]
                if M != M:
                    break
        for d in range(Dv):
            orow[d] = 0
        if M == -INFINITY:
            continue          # fully masked row: zeros
        lsum = 0
        for c in range(a.nchunk):
            Pc = base + c * rs + r * (Dv + 2)
            if Pc[Dv] == -INFINITY:
                continue
            if floating is float:
                w = fa_exp2_f32(Pc[Dv] - M)
            else:
                w = fa_exp2_f64(Pc[Dv] - M)
            lsum = lsum + w * Pc[Dv + 1]
            for d in range(Dv):
                orow[d] = orow[d] + w * Pc[d]
        if lsum == 0:
            for d in range(Dv):
                orow[d] = 0
        else:
            w = 1 / lsum
            for d in range(Dv):
                orow[d] = orow[d] * w


cdef int _flash_run(FlashArgs *a, floating dummy, bint rows, int nthreads) except -1:
    cdef Py_ssize_t ntasks, t, nbuf, bh
    cdef floating *buf
    cdef int failed = 0
    cdef int *pfailed = &failed
    cdef Py_ssize_t nqb = (a.L + FA_BR - 1) // FA_BR
    if rows:
        ntasks = a.nb * a.Hkv * a.nchunk
        nbuf = a.R * (a.D + ROWS_BC + a.Dv + 2)
    else:
        ntasks = a.nb * a.Hkv * nqb
        nbuf = FA_BC * FA_BR + FA_BR + a.G * (a.D * FA_BR + a.Dv * FA_BR + 2 * FA_BR)
    if nthreads > ntasks:
        nthreads = <int>ntasks
    if nthreads < 1:
        nthreads = 1
    buf = NULL
    with nogil, parallel(num_threads=nthreads):
        buf = <floating *>fa_aligned_calloc(nbuf * sizeof(floating))
        if buf == NULL:
            pfailed[0] = 1
        for t in prange(ntasks, schedule='dynamic'):
            if buf != NULL:
                if rows:
                    _flash_rows_task(a, t, buf)
                else:
                    _flash_lanes_task(a, t, buf)
        fa_aligned_free(buf)
    if failed:
        raise MemoryError("fastattn: could not allocate per-thread tile buffers")
    if rows:
        nthreads = nthreads if nthreads < a.nb * a.Hkv else <int>(a.nb * a.Hkv)
        for bh in prange(a.nb * a.Hkv, nogil=True, schedule='static',
                         num_threads=nthreads):
            _flash_rows_merge(a, bh, dummy)
    return 0


def flash(cnp.ndarray q, const int64_t[::1] qoff, Py_ssize_t qs,
          cnp.ndarray k, const int64_t[::1] koff, Py_ssize_t ks,
          cnp.ndarray v, const int64_t[::1] voff, Py_ssize_t vs,
          cnp.ndarray out, const int64_t[::1] ooff, Py_ssize_t os,
          Py_ssize_t L, Py_ssize_t S, Py_ssize_t D, Py_ssize_t Dv,
          Py_ssize_t nb, Py_ssize_t Hq, Py_ssize_t Hkv, double scale,
          int mask_kind, cnp.ndarray mask, const int64_t[::1] moff,
          Py_ssize_t msq, Py_ssize_t msk,
          const uint8_t[:, :, ::1] tab, const int64_t[::1] tidx,
          bint has_lo, Py_ssize_t left, bint has_hi, Py_ssize_t right,
          Py_ssize_t off, const double[::1] slopes, int nthreads,
          int force_path=0):
    """Fused attention over pre-validated operands (see functional.py).

    Offsets are element offsets of each (batch, head) slice: ``qoff``/``ooff``
    have ``nb*Hq`` entries, ``koff``/``voff`` ``nb*Hkv``.  Row strides
    (``qs``, ``ks``, ``vs``, ``os``) are in elements; the last axis of every
    operand is contiguous.  ``force_path`` (tests only): 1 lanes, 2 rows.
    """
    cdef FlashArgs a
    cdef bint rows
    a.q = _ptr(q); a.qoff = &qoff[0]; a.qs = qs
    a.k = _ptr(k); a.koff = &koff[0]; a.ks = ks
    a.v = _ptr(v); a.voff = &voff[0]; a.vs = vs
    a.o = _ptr(out); a.ooff = &ooff[0]; a.os = os
    a.L = L; a.S = S; a.D = D; a.Dv = Dv; a.nb = nb; a.Hq = Hq; a.Hkv = Hkv
    a.G = Hq // Hkv
    a.qscale = scale * LOG2E
    a.mask_kind = mask_kind
    a.mask = _ptr(mask) if mask_kind else NULL
    a.moff = &moff[0] if mask_kind else NULL
    a.msq = msq; a.msk = msk
    if mask_kind:
        a.tab = &tab[0, 0, 0]
        a.tidx = &tidx[0]
        a.tab_nq = tab.shape[1]
        a.tab_nk = tab.shape[2]
    else:
        a.tab = NULL; a.tidx = NULL; a.tab_nq = 1; a.tab_nk = 1
    a.has_lo = has_lo; a.left = left; a.has_hi = has_hi; a.right = right
    a.off = off
    a.slopes = &slopes[0] if slopes is not None else NULL
    a.R = L * a.G
    rows = a.R <= ROWS_MAX
    if force_path == 1:
        rows = False
    elif force_path == 2:
        rows = True
    a.part = NULL
    a.nchunk = 1
    part = None
    if rows:
        a.nchunk = (S + FA_SPLIT - 1) // FA_SPLIT
        part = np.empty(nb * Hkv * a.nchunk * a.R * (Dv + 2), dtype=q.dtype)
        a.part = _ptr(part)
    if q.dtype == np.float32:
        _flash_run[float](&a, 0, rows, nthreads)
    else:
        _flash_run[double](&a, 0, rows, nthreads)
    return out


def classify_mask(cnp.ndarray mask, int mask_kind, const int64_t[::1] moff,
                  Py_ssize_t msq, Py_ssize_t msk, Py_ssize_t Lm, Py_ssize_t Sm,
                  uint8_t[:, :, ::1] tab, int nthreads):
    """Summarise each (mask slice, FA_BR x FA_BC tile) as hidden (0), visible
    (1: all True / all 0.0) or partial (2), over the mask's own shape."""
    cdef Py_ssize_t ntab = tab.shape[0], nq = tab.shape[1], nk = tab.shape[2]
    cdef Py_ssize_t t
    cdef const char *base = _ptr(mask)
    if ntab * nq * nk == 0:
        return tab
    if nthreads > ntab * nq:
        nthreads = <int>(ntab * nq)
    if mask.dtype == np.bool_:
        for t in prange(ntab * nq, nogil=True, schedule='static', num_threads=nthreads):
            _classify_rows(<const uint8_t *>base, 1, moff[t // nq], msq, msk,
                           t % nq, Lm, Sm, nk, &tab[t // nq, t % nq, 0])
    elif mask.dtype == np.float32:
        for t in prange(ntab * nq, nogil=True, schedule='static', num_threads=nthreads):
            _classify_rows(<const float *>base, 2, moff[t // nq], msq, msk,
                           t % nq, Lm, Sm, nk, &tab[t // nq, t % nq, 0])
    else:
        for t in prange(ntab * nq, nogil=True, schedule='static', num_threads=nthreads):
            _classify_rows(<const double *>base, 2, moff[t // nq], msq, msk,
                           t % nq, Lm, Sm, nk, &tab[t // nq, t % nq, 0])
    return tab


ctypedef fused mask_t:
    uint8_t
    float
    double


cdef void _classify_rows(const mask_t *m, int kind, int64_t off, Py_ssize_t msq,
                         Py_ssize_t msk, Py_ssize_t qb, Py_ssize_t Lm,
                         Py_ssize_t Sm, Py_ssize_t nk, uint8_t *out) noexcept nogil:
    cdef Py_ssize_t q0 = qb * FA_BR if Lm > 1 else 0
    cdef Py_ssize_t q1 = q0 + FA_BR if Lm > 1 else 1
    cdef Py_ssize_t kb, i, j, k0, k1
    cdef int nvis, nhid
    cdef mask_t x
    if q1 > Lm:
        q1 = Lm
    for kb in range(nk):
        k0 = kb * FA_BC if Sm > 1 else 0
        k1 = k0 + FA_BC if Sm > 1 else 1
        if k1 > Sm:
            k1 = Sm
        nvis = 0
        nhid = 0
        for i in range(q0, q1):
            for j in range(k0, k1):
                x = m[off + i * msq + j * msk]
                if mask_t is uint8_t:
                    if x:
                        nvis = nvis + 1
                    else:
                        nhid = nhid + 1
                else:
                    if x == 0:
                        nvis = nvis + 1
                    elif x == -INFINITY:
                        nhid = nhid + 1
        if nhid == (q1 - q0) * (k1 - k0):
            out[kb] = T_HIDDEN
        elif nvis == (q1 - q0) * (k1 - k0):
            out[kb] = T_VISIBLE
        else:
            out[kb] = T_PARTIAL


# ---------------------------------------------------------------------------
# Materialised path: scores, softmax, weighted sum
# ---------------------------------------------------------------------------

cdef void _scores_task(const floating *q, Py_ssize_t qs, const floating *k,
                       Py_ssize_t ks, floating *o, Py_ssize_t os,
                       Py_ssize_t nr, Py_ssize_t S, Py_ssize_t D,
                       floating scale, floating *buf) noexcept nogil:
    cdef floating *Qt = buf
    cdef floating *St = buf + D * FA_BR
    cdef Py_ssize_t i, d, j, k0, nk, kb
    for d in range(D):
        for i in range(nr):
            Qt[d * FA_BR + i] = q[i * qs + d] * scale
        for i in range(nr, FA_BR):
            Qt[d * FA_BR + i] = 0
    for kb in range((S + FA_BC - 1) // FA_BC):
        k0 = kb * FA_BC
        nk = S - k0
        if nk > FA_BC:
            nk = FA_BC
        if floating is float:
            fa_qk_f32(k + k0 * ks, ks, <int>nk, <int>D, Qt, St)
        else:
            fa_qk_f64(k + k0 * ks, ks, <int>nk, <int>D, Qt, St)
        for i in range(nr):
            for j in range(nk):
                o[i * os + k0 + j] = St[j * FA_BR + i]


cdef int _scores_run(const floating *q, const int64_t *qoff, Py_ssize_t qs,
                     const floating *k, const int64_t *koff, Py_ssize_t ks,
                     floating *o, const int64_t *ooff, Py_ssize_t os,
                     Py_ssize_t N, Py_ssize_t L, Py_ssize_t S, Py_ssize_t D,
                     floating scale, int nthreads) except -1:
    cdef Py_ssize_t nqb = (L + FA_BR - 1) // FA_BR
    cdef Py_ssize_t t, n, q0, nr
    cdef floating *buf
    cdef int failed = 0
    cdef int *pfailed = &failed
    if nthreads > N * nqb:
        nthreads = <int>(N * nqb)
    buf = NULL
    with nogil, parallel(num_threads=nthreads):
        buf = <floating *>fa_aligned_calloc((D * FA_BR + FA_BC * FA_BR) * sizeof(floating))
        if buf == NULL:
            pfailed[0] = 1
        for t in prange(N * nqb, schedule='static'):
            if buf != NULL:
                n = t // nqb
                q0 = (t % nqb) * FA_BR
                nr = L - q0
                if nr > FA_BR:
                    nr = FA_BR
                _scores_task(q + qoff[n] + q0 * qs, qs, k + koff[n], ks,
                             o + ooff[n] + q0 * os, os, nr, S, D, scale, buf)
        fa_aligned_free(buf)
    if failed:
        raise MemoryError("fastattn: could not allocate tile buffers")
    return 0


def scores(cnp.ndarray q, const int64_t[::1] qoff, Py_ssize_t qs,
           cnp.ndarray k, const int64_t[::1] koff, Py_ssize_t ks,
           cnp.ndarray out, const int64_t[::1] ooff, Py_ssize_t os,
           Py_ssize_t L, Py_ssize_t S, Py_ssize_t D, double scale, int nthreads):
    """out[n][i, j] = scale * sum_d q[n][i, d] k[n][j, d] over N = len(qoff)
    pre-validated slices (element offsets and row strides)."""
    cdef Py_ssize_t N = qoff.shape[0]
    if N == 0 or L == 0 or S == 0:
        return out
    if q.dtype == np.float32:
        _scores_run[float](<const float *>_ptr(q), &qoff[0], qs,
                           <const float *>_ptr(k), &koff[0], ks,
                           <float *>_ptr(out), &ooff[0], os, N, L, S, D,
                           <float>scale, nthreads)
    else:
        _scores_run[double](<const double *>_ptr(q), &qoff[0], qs,
                            <const double *>_ptr(k), &koff[0], ks,
                            <double *>_ptr(out), &ooff[0], os, N, L, S, D,
                            scale, nthreads)
    return out


cdef void _softmax_row(const floating *x, Py_ssize_t xs, floating *o,
                       Py_ssize_t os, Py_ssize_t C) noexcept nogil:
    # Accurate libm exp here (not the exp2 of the fused path): this is the
    # public softmax, held to scipy.special.softmax within ~1 ulp per element.
    cdef Py_ssize_t j
    cdef floating mx = -INFINITY
    cdef double sm = 0          # double accumulator: error independent of C
    cdef floating e, inv
    cdef bint has_nan = False
    for j in range(C):
        e = x[j * xs]
        if e != e:
            has_nan = True
        elif e > mx:
            mx = e
    if has_nan:
        mx = x[0] * 0 + (<floating>INFINITY - <floating>INFINITY)  # NaN
    if mx == -INFINITY:
        # every entry masked: zeros, never NaN
        for j in range(C):
            o[j * os] = 0
        return
    for j in range(C):
        if floating is float:
            e = expf(x[j * xs] - mx)
        else:
            e = exp(x[j * xs] - mx)
        o[j * os] = e
        sm = sm + e
    inv = <floating>(1.0 / sm)
    for j in range(C):
        o[j * os] = o[j * os] * inv


def softmax(cnp.ndarray x, const int64_t[::1] xoff, Py_ssize_t xs,
            cnp.ndarray out, const int64_t[::1] ooff, Py_ssize_t os,
            Py_ssize_t C, int nthreads):
    """Stable softmax of rows: row r holds C elements at ``xoff[r] + j*xs``
    (element units), written to ``ooff[r] + j*os``."""
    cdef Py_ssize_t N = xoff.shape[0], r
    cdef char *xp = _ptr(x)
    cdef char *op = _ptr(out)
    if N == 0 or C == 0:
        return out
    if nthreads > N:
        nthreads = <int>N
    if x.dtype == np.float32:
        for r in prange(N, nogil=True, schedule='static', num_threads=nthreads):
            _softmax_row((<const float *>xp) + xoff[r], xs,
                         (<float *>op) + ooff[r], os, C)
    else:
        for r in prange(N, nogil=True, schedule='static', num_threads=nthreads):
            _softmax_row((<const double *>xp) + xoff[r], xs,
                         (<double *>op) + ooff[r], os, C)
    return out


cdef void _wsum_task(const floating *p, Py_ssize_t ps, const floating *v,
                     Py_ssize_t vs, floating *o, Py_ssize_t os, Py_ssize_t nr,
                     Py_ssize_t S, Py_ssize_t Dv, floating *buf) noexcept nogil:
    cdef floating *Pt = buf
    cdef floating *Ot = buf + FA_BC * FA_BR
    cdef Py_ssize_t i, d, j, k0, nk, kb
    for i in range(Dv * FA_BR):
        Ot[i] = 0
    for kb in range((S + FA_BC - 1) // FA_BC):
        k0 = kb * FA_BC
        nk = S - k0
        if nk > FA_BC:
            nk = FA_BC
        for j in range(nk):
            for i in range(nr):
                Pt[j * FA_BR + i] = p[i * ps + k0 + j]
            for i in range(nr, FA_BR):
                Pt[j * FA_BR + i] = 0
        if floating is float:
            fa_pv_f32(v + k0 * vs, vs, <int>nk, <int>Dv, Pt, Ot)
        else:
            fa_pv_f64(v + k0 * vs, vs, <int>nk, <int>Dv, Pt, Ot)
    for i in range(nr):
        for d in range(Dv):
            o[i * os + d] = Ot[d * FA_BR + i]


cdef int _wsum_run(const floating *p, const int64_t *poff, Py_ssize_t ps,
                   const floating *v, const int64_t *voff, Py_ssize_t vs,
                   floating *o, const int64_t *ooff, Py_ssize_t os,
                   Py_ssize_t N, Py_ssize_t L, Py_ssize_t S, Py_ssize_t Dv,
                   int nthreads) except -1:
    cdef Py_ssize_t nqb = (L + FA_BR - 1) // FA_BR
    cdef Py_ssize_t t, n, q0, nr
    cdef floating *buf
    cdef int failed = 0
    cdef int *pfailed = &failed
    if nthreads > N * nqb:
        nthreads = <int>(N * nqb)
    buf = NULL
    with nogil, parallel(num_threads=nthreads):
        buf = <floating *>fa_aligned_calloc((FA_BC * FA_BR + Dv * FA_BR) * sizeof(floating))
        if buf == NULL:
            pfailed[0] = 1
        for t in prange(N * nqb, schedule='static'):
            if buf != NULL:
                n = t // nqb
                q0 = (t % nqb) * FA_BR
                nr = L - q0
                if nr > FA_BR:
                    nr = FA_BR
                _wsum_task(p + poff[n] + q0 * ps, ps, v + voff[n], vs,
                           o + ooff[n] + q0 * os, os, nr, S, Dv, buf)
        fa_aligned_free(buf)
    if failed:
        raise MemoryError("fastattn: could not allocate tile buffers")
    return 0


def weighted_sum(cnp.ndarray p, const int64_t[::1] poff, Py_ssize_t ps,
                 cnp.ndarray v, const int64_t[::1] voff, Py_ssize_t vs,
                 cnp.ndarray out, const int64_t[::1] ooff, Py_ssize_t os,
                 Py_ssize_t L, Py_ssize_t S, Py_ssize_t Dv, int nthreads):
    """out[n][i, :] = sum_j p[n][i, j] v[n][j, :] over pre-validated slices."""
    cdef Py_ssize_t N = poff.shape[0]
    if N == 0 or L == 0 or Dv == 0:
        return out
    if p.dtype == np.float32:
        _wsum_run[float](<const float *>_ptr(p), &poff[0], ps,
                         <const float *>_ptr(v), &voff[0], vs,
                         <float *>_ptr(out), &ooff[0], os, N, L, S, Dv, nthreads)
    else:
        _wsum_run[double](<const double *>_ptr(p), &poff[0], ps,
                          <const double *>_ptr(v), &voff[0], vs,
                          <double *>_ptr(out), &ooff[0], os, N, L, S, Dv, nthreads)
    return out


# ---------------------------------------------------------------------------
# Linear layers: Y = X W^T (+ bias) (ReLU), on the attention tiles
# ---------------------------------------------------------------------------
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
        if floating is float:
            fa_pack_qt_f32(x + k0, xs, nr, kc, 1.0, Xt)
            fa_gemm_nt_f32(w + k0, ws, nn, kc, Xt, Yt, k0 > 0)
        else:
            fa_pack_qt_f64(x + k0, xs, nr, kc, 1.0, Xt)
            fa_gemm_nt_f64(w + k0, ws, nn, kc, Xt, Yt, k0 > 0)
        k0 += kc
    if floating is float:
        fa_store_yt_f32(Yt, nr, nn, bias, relu, y, ys)
    else:
        fa_store_yt_f64(Yt, nr, nn, bias, relu, y, ys)


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


cdef int _lin_run(const floating *x, Py_ssize_t xs, const floating *w, Py_ssize_t ws,
                  const floating *bias, int relu, floating *y, Py_ssize_t ys,
                  Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, int nthreads) except -1:
    cdef Py_ssize_t nmb = (M + FA_BR - 1) // FA_BR
    cdef Py_ssize_t nb = LIN_NB, nnb
    cdef Py_ssize_t t, m0, n0
    cdef int nr, nn
    cdef floating *buf
    cdef int failed = 0
    cdef int *pfailed = &failed
    # few row blocks (short inputs): narrower W blocks, so every thread has
    # several tasks (widths stay multiples of the 6- and 8-key micro-tiles)
    while nb > 48 and nmb * ((N + nb - 1) // nb) < 4 * nthreads:
        nb = nb // 2
    # equal widths (multiples of 24, so of both micro-tiles) keep the
    # threads' static shares of the work equal when N is no multiple of nb
    nnb = (N + nb - 1) // nb
    nb = ((N + nnb - 1) // nnb + 23) // 24 * 24
    nnb = (N + nb - 1) // nb
    if nthreads > nmb * nnb:
        nthreads = <int>(nmb * nnb)
    buf = NULL
    with nogil, parallel(num_threads=nthreads):
        buf = <floating *>fa_aligned_calloc((LIN_KC + LIN_NB) * FA_BR * sizeof(floating))
        if buf == NULL:
            pfailed[0] = 1
        # W-block-major order: consecutive tasks of a thread reuse W's block
        for t in prange(nmb * nnb, schedule='static'):
            if buf != NULL:
                n0 = (t // nmb) * nb
                m0 = (t % nmb) * FA_BR
                nr = <int>(M - m0) if M - m0 < FA_BR else FA_BR
                nn = <int>(N - n0) if N - n0 < nb else <int>nb
                if _lin_narrow(buf, nr):
                    _lin_task_narrow(x + m0 * xs, xs, w + n0 * ws, ws,
                                     (bias + n0) if bias != NULL else NULL, relu,
                                     y + m0 * ys + n0, ys, nr, nn, K,
                                     buf, buf + LIN_KC * FA_BR)
                else:
                    _lin_task(x + m0 * xs, xs, w + n0 * ws, ws,
                              (bias + n0) if bias != NULL else NULL, relu,
                              y + m0 * ys + n0, ys, nr, nn, K,
                              buf, buf + LIN_KC * FA_BR)
        fa_aligned_free(buf)
    if failed:
        raise MemoryError("fastattn: could not allocate tile buffers")
    return 0


def linear(cnp.ndarray x, Py_ssize_t xs, cnp.ndarray w, Py_ssize_t ws, bias,
           bint relu, cnp.ndarray out, Py_ssize_t ys, int nthreads):
    """out[m, :] = relu?(x[m, :] @ w.T + bias) over pre-validated 2-D arrays:
    x (M, K), w (N, K), out (M, N), bias (N,) contiguous or None, each with a
    contiguous last axis and the given row strides (elements); same dtype."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], N = w.shape[0]
    cdef cnp.ndarray b
    cdef char *bp = NULL
    if M == 0 or N == 0:
        return out
    if bias is not None:
        b = bias
        bp = _ptr(b)
    if x.dtype == np.float32:
        _lin_run[float](<const float *>_ptr(x), xs, <const float *>_ptr(w), ws,
                        <const float *>bp, relu, <float *>_ptr(out), ys, M, N, K, nthreads)
    else:
        _lin_run[double](<const double *>_ptr(x), xs, <const double *>_ptr(w), ws,
                         <const double *>bp, relu, <double *>_ptr(out), ys, M, N, K, nthreads)
    return out
