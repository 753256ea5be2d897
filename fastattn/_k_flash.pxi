# The fused attention kernel (FlashAttention-2 style): FlashArgs, the two
# task layouts, and its call object FlashCall.  Included by _kernels.pxi.
#
# * "lanes": a task is (batch, kv head, block of FA_BR query rows).  The
#   query block is packed transposed (Qt, D x FA_BR), pre-multiplied by
#   scale*log2(e), so the score tile St (keys x queries), the online softmax
#   statistics and the output accumulator Ot (Dv x FA_BR) are all vectors
#   over the query lanes.  K and V are read in place, FA_BC keys at a time.
#   All query heads that share a kv head (GQA) are processed by the same
#   task, so each K/V tile is brought into cache once per group.
# * "rows": when a kv head has only a few query rows (decode: one new token,
#   G query heads per kv head), lanes would be mostly empty.  Rows are kept
#   as rows (R x D), scores are dot products vectorised over D, and the key
#   axis is split into fixed chunks of FA_SPLIT keys (split-K,
#   "flash-decoding") so that even B*H = 1 keeps every core busy.  Partial
#   (m, l, O) per chunk are merged by log-sum-exp in a fixed order.
# Chunk sizes never depend on the thread count, so results are bit-identical
# for any number of threads.
#
# Tile visibility: causal / sliding window bounds are computed per tile from
# the row intervals [lo(i), hi(i)], and masks are summarised per tile by
# classify_mask() (hidden / visible / partial) over the mask's own,
# un-broadcast shape.  Hidden tiles are skipped, visible tiles skip the
# masking arithmetic, only partial tiles pay per-element work.
#
# Variable-length batches (FlashCall.cu_q / cu_k set): "batch" is a list of
# sequences packed along the token axis; sequence i has its own L_i, S_i
# (and causal offset S_i - L_i with bottom_right), and its own layout chosen
# from its own lengths only, so its result never depends on the rest of the
# batch.  Tasks come from a table built per call (longest sequences first).

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
    int mask_kind            # M_NONE, M_BOOL (uint8), M_FLOAT (same dtype)
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
    # variable-length batches (NULL when dense)
    const int64_t *cu_q      # [nb + 1] token offsets of each sequence
    const int64_t *cu_k
    bint bottom_right        # off_i = S_i - L_i (else 0)
    const int64_t *tasks     # [ntasks, 4]: sequence, kv head, block, layout
    const int64_t *part_off  # [nb]: element offset of a rows sequence's partials


# The rows path's scores for many rows per kv head (few-query attention:
# chunked prefill, speculative verification, GQA groups): fa_narrow.h's GEMM
# tile with the R query rows in the vector lanes and the keys as its W rows
# (s[r][j] = sum_d Qr[r][d] K[j][d], an FMA chain over d per element) instead
# of one dot product and lane sum per (row, key).  Chosen from R alone, so a
# sequence's result never depends on the thread count or the batch.
cdef extern from "fa_narrow.h" nogil:
    int _NR_XN "FA_NR_XN"
    void _nr_dot_f32 "fa_gemm_narrow_f32"(const float *x, Py_ssize_t xs, int nr, const float *w,
                                          Py_ssize_t ws, int nn, Py_ssize_t K, const float *bias,
                                          int relu, float *y, Py_ssize_t ys, float *Xn, float *Yn)
    void _nr_dot_f64 "fa_gemm_narrow_f64"(const double *x, Py_ssize_t xs, int nr, const double *w,
                                          Py_ssize_t ws, int nn, Py_ssize_t K, const double *bias,
                                          int relu, double *y, Py_ssize_t ys, double *Xn, double *Yn)


cdef inline void _nr_dot(const floating *Q, int R, const floating *K, Py_ssize_t ks, int nk,
                         int D, floating *s, int lds, floating *Xn, floating *Yn) noexcept nogil:
    if floating is float:
        _nr_dot_f32(Q, D, R, K, ks, nk, D, NULL, 0, s, lds, Xn, Yn)
    else:
        _nr_dot_f64(Q, D, R, K, ks, nk, D, NULL, 0, s, lds, Xn, Yn)


# The lanes layout on fewer than FA_BR query rows: the tile functions on the
# first fa_lanes_used(nr) lanes only (16-lane groups), every lane computed
# exactly as in the full tile, so a row's bits do not depend on how many rows
# share its block.
cdef extern from "fa_tiles.h" nogil:
    int fa_lanes_used_f32(int nq)
    int fa_lanes_used_f64(int nq)
    void fa_qk_n_f32(const float *K, Py_ssize_t ks, int nk, int D, const float *Qt, float *St, int nq)
    void fa_softmax_n_f32(float *St, int nk, float *m, float *l, float *alpha, int nq)
    void fa_rescale_pv_n_f32(const float *V, Py_ssize_t vs, int nk, int Dv, const float *Pt,
                             float *Ot, const float *alpha, int nq)
    void fa_qk_n_f64(const double *K, Py_ssize_t ks, int nk, int D, const double *Qt, double *St,
                     int nq)
    void fa_softmax_n_f64(double *St, int nk, double *m, double *l, double *alpha, int nq)
    void fa_rescale_pv_n_f64(const double *V, Py_ssize_t vs, int nk, int Dv, const double *Pt,
                             double *Ot, const double *alpha, int nq)


cdef inline void _qk_n(const floating *K, Py_ssize_t ks, int nk, int D, const floating *Qt,
                       floating *St, int nq) noexcept nogil:
    if floating is float:
        fa_qk_n_f32(K, ks, nk, D, Qt, St, nq)
    else:
        fa_qk_n_f64(K, ks, nk, D, Qt, St, nq)


cdef inline void _softmax_n(floating *St, int nk, floating *m, floating *l, floating *alpha,
                            int nq) noexcept nogil:
    if floating is float:
        fa_softmax_n_f32(St, nk, m, l, alpha, nq)
    else:
        fa_softmax_n_f64(St, nk, m, l, alpha, nq)


cdef inline void _rescale_pv_n(const floating *V, Py_ssize_t vs, int nk, int Dv,
                               const floating *Pt, floating *Ot, const floating *alpha,
                               int nq) noexcept nogil:
    if floating is float:
        fa_rescale_pv_n_f32(V, vs, nk, Dv, Pt, Ot, alpha, nq)
    else:
        fa_rescale_pv_n_f64(V, vs, nk, Dv, Pt, Ot, alpha, nq)


# Which layout a (sequence, kv head) of L query rows per head and G query
# heads per kv head takes (fp32/fp64 flash): a cost model measured on
# Sapphire Rapids at 1 and 2 threads, S 1k/4k, D 32/64/128, G 1/4
# (benchmarks/NOTES.md).  The lanes tile's cost grows with the 16-lane groups
# it runs (fa_lanes_used(L), one tile per query head), the rows path's with
# the R = L*G rows, and the rows path needs R <= FA_BR for its narrow score
# tile.  Rows are cheaper up to a row count that grows with the head size
# (wider rows amortise the per-key work) and with G (a GQA group's rows share
# each K/V read): at most _rows_max_l(D, G) rows per head; from there, and for
# every R > FA_BR, the lanes.  Chosen from L, G and D alone (never the batch,
# the key count or the threads), so a sequence's result never depends on them.
cdef inline Py_ssize_t _rows_max_l(Py_ssize_t D, Py_ssize_t G) noexcept nogil:
    # re-measured once the scores' lane sums were done a vector at a time
    # (fa__hsumv_f32): 8 / 12 / 14 rows at D < 64 / < 128 / from 128 for
    # MHA (were 8 / 11 / 13), 12 / 13 / 16 for GQA groups (were 10 / 13 / 15)
    if G > 1:
        return 12 if D < 64 else (13 if D < 128 else 16)
    return 8 if D < 64 else (12 if D < 128 else 14)


cdef inline bint _auto_rows(Py_ssize_t L, Py_ssize_t G, Py_ssize_t D) noexcept nogil:
    return L <= _rows_max_l(D, G) and L * G <= FA_BR


def rows_auto_max_l(Py_ssize_t D, Py_ssize_t G):
    """The most query rows per head that the automatic layout choice sends to
    the rows layout, for head size ``D`` and ``G`` query heads per kv head
    (it also needs ``L * G <= 64``); for tests and documentation."""
    return _rows_max_l(D, G)


cdef inline bint _rows_narrow(Py_ssize_t R) noexcept nogil:
    # (the narrow tile takes at most FA_BR rows; more only when a test forces
    # the rows path)
    return ROWS_NARROW <= R <= FA_BR


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
    if a.mask_kind == M_NONE:
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
            if a.mask_kind == M_BOOL:
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
        if a.mask_kind == M_BOOL:
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



cdef void _flash_lanes_block(const FlashArgs *a, Py_ssize_t bn, Py_ssize_t hkv,
                             Py_ssize_t qb, floating *buf) noexcept nogil:
    """One block of the lanes layout: (batch, kv head, query block qb)."""
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
    cdef Py_ssize_t g, n, i, kb, k0, k1, nk, kb_lo, kb_hi, lo, hi
    cdef int geo, mcls, nl
    cdef floating qscale = <floating>a.qscale
    cdef Py_ssize_t dd
    # the tiles read and write the first nl lanes only (all FA_BR from 49
    # rows): pack and clear just those (a 16-row block cleared 4x its Ot)
    if floating is float:
        nl = fa_lanes_used_f32(<int>nr)
    else:
        nl = fa_lanes_used_f64(<int>nr)

    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qt = hbase + g * hstride
        Ot = Qt + qt_sz
        m = Ot + ot_sz
        l = m + FA_BR
        qrow = (<const floating *>a.q) + a.qoff[n] + q0 * a.qs
        _pack_qt_lanes(qrow, a.qs, <int>nr, <int>D, qscale, Qt, nl)
        if nl == FA_BR:
            for i in range(ot_sz):
                Ot[i] = 0
        else:
            for dd in range(Dv):
                for i in range(nl):
                    Ot[dd * FA_BR + i] = 0
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
            _qk_n(kp + k0 * a.ks, a.ks, <int>nk, <int>D, Qt, St, <int>nr)
            if geo == T_PARTIAL or mcls == T_PARTIAL or a.slopes != NULL:
                _bias_tile(a, St, n, hkv * G + g, q0, nr, k0, nk, geo, mcls)
            _softmax_n(St, <int>nk, m, l, alpha, <int>nr)
            _rescale_pv_n(vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, St, Ot, alpha, <int>nr)

    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qt = hbase + g * hstride
        Ot = Qt + qt_sz
        m = Ot + ot_sz
        l = m + FA_BR
        # rows with no visible key (l == 0) are written as zeros, never NaN
        orow = (<floating *>a.o) + a.ooff[n] + q0 * a.os
        _store_ot(Ot, l, <int>nr, <int>Dv, orow, a.os)


cdef void _flash_rows_chunk(const FlashArgs *a, Py_ssize_t bn, Py_ssize_t hkv,
                            Py_ssize_t c, floating *P, floating *buf) noexcept nogil:
    """One chunk of the rows layout: (batch, kv head, chunk c of FA_SPLIT
    keys).  Writes the chunk's partial (O, m, l) for every row of the kv head
    to P ([R, Dv + 2])."""
    cdef Py_ssize_t R = a.R, D = a.D, Dv = a.Dv, L = a.L
    # thread buffer: [Xn (_NR_XN) | Yn (ROWS_BC x FA_BR), with many rows]
    #                Qr (R x D) | s (R x ROWS_BC) | Ob (R x Dv) | mb (R) | lb (R)
    cdef bint nar = _rows_narrow(R)
    cdef floating *Xn = buf
    cdef floating *Yn = buf + _NR_XN
    cdef floating *Qr = Yn + ROWS_BC * FA_BR if nar else buf
    cdef floating *s = Qr + R * D
    cdef floating *Ob = s + R * ROWS_BC
    cdef floating *mb = Ob + R * Dv
    cdef floating *lb = mb + R
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
        if nar:
            _nr_dot(Qr, <int>R, kp + k0 * a.ks, a.ks, <int>nk, <int>D, s, ROWS_BC, Xn, Yn)
        else:
            _dot_rows(Qr, <int>R, kp + k0 * a.ks, a.ks, <int>nk, <int>D, s, ROWS_BC)
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
            mx = _vmax(&s[r * ROWS_BC], <int>nk)
            if mb[r] > mx:
                mx = mb[r]
            if mx == -INFINITY:
                al = 0
            else:
                al = _exp2(mb[r] - mx)
            sm = _exp2_sub_sum(&s[r * ROWS_BC], <int>nk, mx)
            lb[r] = lb[r] * al + sm
            mb[r] = mx
            if lb[r] != lb[r]:
                # NaN scores: fa_max skips NaN, so carry it in m for the merge
                mb[r] = lb[r]
            if al != 1:
                for d in range(Dv):
                    Ob[r * Dv + d] = Ob[r * Dv + d] * al
        _axpy_rows(s, <int>R, ROWS_BC, vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, Ob)

    for r in range(R):
        for d in range(Dv):
            P[r * (Dv + 2) + d] = Ob[r * Dv + d]
        P[r * (Dv + 2) + Dv] = mb[r]
        P[r * (Dv + 2) + Dv + 1] = lb[r]


cdef void _flash_rows_merge(const FlashArgs *a, Py_ssize_t bn, Py_ssize_t hkv,
                            const floating *base) noexcept nogil:
    """Merge the split-K partials of one (batch, kv head) in chunk order;
    ``base`` holds its a.nchunk partials of [R, Dv + 2]."""
    cdef Py_ssize_t R = a.R, Dv = a.Dv, L = a.L, rs = a.R * (a.Dv + 2)
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
            w = _exp2(Pc[Dv] - M)
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


# -- dense batches: task t decodes to (batch, kv head, block) ---------------

cdef void _flash_lanes_task(const FlashArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    cdef Py_ssize_t nqb = (a.L + FA_BR - 1) // FA_BR
    # largest query blocks (most keys when causal) first: with the dynamic
    # schedule this balances the triangle.
    cdef Py_ssize_t qb = nqb - 1 - (t % nqb)
    cdef Py_ssize_t bh = t // nqb
    _flash_lanes_block(a, bh // a.Hkv, bh % a.Hkv, qb, buf)


cdef void _flash_rows_task(const FlashArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    cdef Py_ssize_t bh = t // a.nchunk
    _flash_rows_chunk(a, bh // a.Hkv, bh % a.Hkv, t % a.nchunk,
                      (<floating *>a.part) + t * a.R * (a.Dv + 2), buf)


cdef void _flash_merge_task(const FlashArgs *a, Py_ssize_t bh, floating *buf) noexcept nogil:
    _flash_rows_merge(a, bh // a.Hkv, bh % a.Hkv,
                      (<const floating *>a.part) + bh * a.nchunk * a.R * (a.Dv + 2))


# -- variable-length batches: task t is a row of the task table -------------

cdef inline void _seq_view(const FlashArgs *a, Py_ssize_t sq, FlashArgs *s,
                           const floating *tag) noexcept nogil:
    """s = a restricted to sequence sq as a batch of one: its rows, its own
    lengths and causal offset (qoff/koff/voff/ooff are per head)."""
    s[0] = a[0]
    s.q = <const char *>((<const floating *>a.q) + a.cu_q[sq] * a.qs)
    s.o = <char *>((<floating *>a.o) + a.cu_q[sq] * a.os)
    s.k = <const char *>((<const floating *>a.k) + a.cu_k[sq] * a.ks)
    s.v = <const char *>((<const floating *>a.v) + a.cu_k[sq] * a.vs)
    s.nb = 1
    s.L = a.cu_q[sq + 1] - a.cu_q[sq]
    s.S = a.cu_k[sq + 1] - a.cu_k[sq]
    s.off = s.S - s.L if a.bottom_right else 0
    s.R = s.L * a.G
    s.nchunk = (s.S + FA_SPLIT - 1) // FA_SPLIT


cdef void _flash_varlen_task(const FlashArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    cdef const int64_t *e = a.tasks + 4 * t
    cdef FlashArgs s
    _seq_view(a, e[0], &s, buf)
    if e[3] == P_LANES:
        _flash_lanes_block(&s, 0, e[1], e[2], buf)
    else:
        _flash_rows_chunk(&s, 0, e[1], e[2],
                          (<floating *>a.part) + a.part_off[e[0]]
                          + (e[1] * s.nchunk + e[2]) * s.R * (a.Dv + 2), buf)


cdef void _flash_varlen_merge(const FlashArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    cdef const int64_t *e = a.tasks + 4 * t
    cdef FlashArgs s
    _seq_view(a, e[0], &s, buf)
    _flash_rows_merge(&s, 0, e[1], (<const floating *>a.part) + a.part_off[e[0]]
                      + e[1] * s.nchunk * s.R * (a.Dv + 2))


# untyped task functions for the scaffold, one per layout and dtype
cdef void _lanes_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_lanes_task(<const FlashArgs *>c, t, <float *>b)
cdef void _lanes_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_lanes_task(<const FlashArgs *>c, t, <double *>b)
cdef void _rows_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_rows_task(<const FlashArgs *>c, t, <float *>b)
cdef void _rows_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_rows_task(<const FlashArgs *>c, t, <double *>b)
cdef void _merge_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_merge_task(<const FlashArgs *>c, t, <float *>NULL)
cdef void _merge_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_merge_task(<const FlashArgs *>c, t, <double *>NULL)
cdef void _varlen_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_varlen_task(<const FlashArgs *>c, t, <float *>b)
cdef void _varlen_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_varlen_task(<const FlashArgs *>c, t, <double *>b)
cdef void _vmerge_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_varlen_merge(<const FlashArgs *>c, t, <float *>NULL)
cdef void _vmerge_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _flash_varlen_merge(<const FlashArgs *>c, t, <double *>NULL)


cdef inline size_t _lanes_buf(const FlashArgs *a) noexcept:
    return FA_BC * FA_BR + FA_BR + a.G * (a.D * FA_BR + a.Dv * FA_BR + 2 * FA_BR)


cdef inline size_t _rows_buf(const FlashArgs *a, Py_ssize_t R) noexcept:
    return R * (a.D + ROWS_BC + a.Dv + 2) + (_NR_XN + ROWS_BC * FA_BR if _rows_narrow(R) else 0)


# ---------------------------------------------------------------------------
# The call object
# ---------------------------------------------------------------------------

cdef class FlashCall:
    """Operands of one fused-attention call, by name (see functional.py).

    Fields mirror the C ``FlashArgs`` struct.  Offsets are int64 element
    offsets of each (batch, head) slice: ``qoff``/``ooff`` have ``nb*Hq``
    entries, ``koff``/``voff`` ``nb*Hkv``.  Row strides (``qs``, ``ks``,
    ``vs``, ``os``) are in elements; the last axis of every operand is
    contiguous.  ``left``/``right`` are the window sides (None: unbounded),
    row i sees keys ``i + off - left .. i + off + right``.  ``mask_kind`` is
    MASK_NONE, MASK_BOOL or MASK_FLOAT; then ``mask``, ``moff`` (per
    (batch, head)), ``msq``/``msk`` (element strides over L and S), ``tab``
    (classify_mask's [ntab, nq, nk] tile classes) and ``tidx`` (per
    (batch, head): its slice of tab).  ``path`` is PATH_AUTO, PATH_LANES or
    PATH_ROWS (tests).

    Variable-length batches: set ``cu_q`` and ``cu_k`` (int64, ``nb + 1``
    token offsets of the ``nb`` sequences, packed along the row axis); then
    ``qoff``/``ooff`` hold ``Hq`` per-head offsets and ``koff``/``voff``
    ``Hkv``, sequence i's rows start ``cu_q[i]`` (``cu_k[i]``) rows further,
    ``L``/``S`` are per sequence (leave them unset), and ``bottom_right``
    makes the causal/window offset ``S_i - L_i`` (else 0; ``off`` unused).

    The object holds references to every array it points into.  It checks
    only its own consistency (required fields set, offset counts, dtypes):
    the public functions validate user input before building it.
    """
    cdef public cnp.ndarray q, k, v, out, qoff, koff, voff, ooff
    cdef public Py_ssize_t qs, ks, vs, os, L, S, D, Dv, nb, Hq, Hkv
    cdef public double scale
    cdef public int mask_kind
    cdef public cnp.ndarray mask, moff, tab, tidx
    cdef public Py_ssize_t msq, msk
    cdef public object left, right
    cdef public Py_ssize_t off
    cdef public cnp.ndarray slopes
    cdef public int nthreads, path
    cdef public cnp.ndarray cu_q, cu_k
    cdef public bint bottom_right

    def __init__(self, *, cnp.ndarray q=None, cnp.ndarray qoff=None,
                 Py_ssize_t qs=-4611686018427387904,
                 cnp.ndarray k=None, cnp.ndarray koff=None,
                 Py_ssize_t ks=-4611686018427387904,
                 cnp.ndarray v=None, cnp.ndarray voff=None,
                 Py_ssize_t vs=-4611686018427387904,
                 cnp.ndarray out=None, cnp.ndarray ooff=None,
                 Py_ssize_t os=-4611686018427387904,
                 Py_ssize_t L=-1, Py_ssize_t S=-1, Py_ssize_t D=-1,
                 Py_ssize_t Dv=-1, Py_ssize_t nb=-1, Py_ssize_t Hq=-1,
                 Py_ssize_t Hkv=-1, double scale=NAN,
                 int mask_kind=M_NONE, cnp.ndarray mask=None,
                 cnp.ndarray moff=None, Py_ssize_t msq=0, Py_ssize_t msk=0,
                 cnp.ndarray tab=None, cnp.ndarray tidx=None,
                 left=None, right=None, Py_ssize_t off=0,
                 cnp.ndarray slopes=None, int nthreads=0, int path=P_AUTO,
                 cnp.ndarray cu_q=None, cnp.ndarray cu_k=None,
                 bint bottom_right=False):
        self.q = q; self.qoff = qoff; self.qs = qs
        self.k = k; self.koff = koff; self.ks = ks
        self.v = v; self.voff = voff; self.vs = vs
        self.out = out; self.ooff = ooff; self.os = os
        self.L = L; self.S = S; self.D = D; self.Dv = Dv
        self.nb = nb; self.Hq = Hq; self.Hkv = Hkv; self.scale = scale
        self.mask_kind = mask_kind; self.mask = mask; self.moff = moff
        self.msq = msq; self.msk = msk; self.tab = tab; self.tidx = tidx
        self.left = left; self.right = right; self.off = off
        self.slopes = slopes; self.nthreads = nthreads; self.path = path
        self.cu_q = cu_q; self.cu_k = cu_k; self.bottom_right = bottom_right

    def rebind(self, cnp.ndarray q not None, cnp.ndarray k not None,
               cnp.ndarray v not None, cnp.ndarray out not None, int nthreads):
        """A new call with every field of this one but the four operands
        and the thread count: for arrays of the same shapes, strides and
        dtypes as the ones this call was built for (the caller checks that;
        the offsets and row strides are reused as they are).  The original
        is not changed, so one template may serve many threads at once."""
        cdef FlashCall c = FlashCall.__new__(FlashCall)
        c.q = q; c.qoff = self.qoff; c.qs = self.qs
        c.k = k; c.koff = self.koff; c.ks = self.ks
        c.v = v; c.voff = self.voff; c.vs = self.vs
        c.out = out; c.ooff = self.ooff; c.os = self.os
        c.L = self.L; c.S = self.S; c.D = self.D; c.Dv = self.Dv
        c.nb = self.nb; c.Hq = self.Hq; c.Hkv = self.Hkv; c.scale = self.scale
        c.mask_kind = self.mask_kind; c.mask = self.mask; c.moff = self.moff
        c.msq = self.msq; c.msk = self.msk; c.tab = self.tab; c.tidx = self.tidx
        c.left = self.left; c.right = self.right; c.off = self.off
        c.slopes = self.slopes; c.nthreads = nthreads; c.path = self.path
        c.cu_q = self.cu_q; c.cu_k = self.cu_k; c.bottom_right = self.bottom_right
        return c


cdef int _set(bint ok, str field) except -1:
    if not ok:
        raise ValueError(f"fastattn kernel call: required field {field!r} was never "
                         "set (or is out of range)")
    return 0


cdef int _fill_args(FlashCall c, FlashArgs *a, int *dt, bint bf16=False) except -1:
    """FlashArgs from a FlashCall, after checking its own consistency.  With
    bf16 (flash_bf16, which checks the operand dtypes itself) the compute
    dtype is float32 (dt 0): float masks must be float32."""
    cdef bint varlen = c.cu_q is not None or c.cu_k is not None
    cdef Py_ssize_t nq, nkv
    _set(c.q is not None, "q"); _set(c.k is not None, "k")
    _set(c.v is not None, "v"); _set(c.out is not None, "out")
    dt[0] = 0 if bf16 else _dtype_code(c.q)
    if not bf16 and (dt[0] < 0 or _dtype_code(c.k) != dt[0] or _dtype_code(c.v) != dt[0]
            or _dtype_code(c.out) != dt[0]):
        raise TypeError("fastattn kernel call: q, k, v and out must share one "
                        "float32/float64 dtype")
    if (c.qs == _UNSET or c.ks == _UNSET or c.vs == _UNSET or c.os == _UNSET
            or c.D < 0 or c.Dv < 0 or c.nb < 0):
        for name, val in (("qs", c.qs), ("ks", c.ks), ("vs", c.vs), ("os", c.os)):
            _set(val != _UNSET, name)
        for name, val in (("D", c.D), ("Dv", c.Dv), ("nb", c.nb)):
            _set(val >= 0, name)
    _set(c.Hq >= 1, "Hq"); _set(c.Hkv >= 1 and c.Hq % c.Hkv == 0, "Hkv")
    _set(c.scale == c.scale, "scale")
    _set(c.nthreads >= 1, "nthreads")
    _set(P_AUTO <= c.path <= P_ROWS, "path")
    if varlen:
        _set(c.L < 0 and c.S < 0, "L/S (per sequence with cu_q: leave them unset)")
        nq, nkv = c.Hq, c.Hkv
        a.cu_q = _offs(c.cu_q, c.nb + 1, "cu_q")
        a.cu_k = _offs(c.cu_k, c.nb + 1, "cu_k")
        _set(c.mask_kind == M_NONE, "mask_kind (no masks with cu_q)")
    else:
        _set(c.L >= 0, "L"); _set(c.S >= 0, "S")
        nq, nkv = c.nb * c.Hq, c.nb * c.Hkv
        a.cu_q = NULL; a.cu_k = NULL
    a.q = _ptr(c.q); a.qoff = _offs(c.qoff, nq, "qoff"); a.qs = c.qs
    a.k = _ptr(c.k); a.koff = _offs(c.koff, nkv, "koff"); a.ks = c.ks
    a.v = _ptr(c.v); a.voff = _offs(c.voff, nkv, "voff"); a.vs = c.vs
    a.o = _ptr(c.out); a.ooff = _offs(c.ooff, nq, "ooff"); a.os = c.os
    a.L = c.L; a.S = c.S; a.D = c.D; a.Dv = c.Dv; a.nb = c.nb
    a.Hq = c.Hq; a.Hkv = c.Hkv; a.G = c.Hq // c.Hkv
    a.qscale = c.scale * LOG2E
    a.mask_kind = c.mask_kind
    if c.mask_kind == M_NONE:
        a.mask = NULL; a.moff = NULL; a.tab = NULL; a.tidx = NULL
        a.tab_nq = 1; a.tab_nk = 1; a.msq = 0; a.msk = 0
    else:
        _set(c.mask_kind == M_BOOL or c.mask_kind == M_FLOAT, "mask_kind")
        _set(c.mask is not None, "mask")
        if c.mask_kind == M_BOOL:
            _set(cnp.PyArray_ITEMSIZE(c.mask) == 1, "mask (1-byte bool)")
        else:
            _set(_dtype_code(c.mask) == dt[0], "mask (the operands' dtype)")
        _set(c.tab is not None and cnp.PyArray_NDIM(c.tab) == 3
             and cnp.PyArray_TYPE(c.tab) == cnp.NPY_UINT8
             and cnp.PyArray_IS_C_CONTIGUOUS(c.tab), "tab (uint8 [ntab, nq, nk])")
        a.mask = _ptr(c.mask)
        a.moff = _offs(c.moff, nq, "moff")
        a.tidx = _offs(c.tidx, nq, "tidx")
        a.tab = <const uint8_t *>cnp.PyArray_DATA(c.tab)
        a.tab_nq = c.tab.shape[1]
        a.tab_nk = c.tab.shape[2]
        a.msq = c.msq; a.msk = c.msk
    a.has_lo = c.left is not None
    a.left = c.left if a.has_lo else 0
    a.has_hi = c.right is not None
    a.right = c.right if a.has_hi else 0
    a.off = c.off
    a.bottom_right = c.bottom_right
    if c.slopes is not None:
        _set(cnp.PyArray_TYPE(c.slopes) == cnp.NPY_FLOAT64
             and cnp.PyArray_IS_C_CONTIGUOUS(c.slopes)
             and cnp.PyArray_SIZE(c.slopes) >= c.Hq, "slopes (float64, Hq entries)")
        a.slopes = <const double *>cnp.PyArray_DATA(c.slopes)
    else:
        a.slopes = NULL
    a.part = NULL; a.nchunk = 1; a.R = 0
    a.tasks = NULL; a.part_off = NULL
    return 0


def flash(FlashCall call not None):
    """Fused attention over the pre-validated operands of ``call`` (a
    FlashCall); writes and returns ``call.out``."""
    cdef FlashArgs a
    cdef int dt
    cdef bint rows
    _fill_args(call, &a, &dt)
    if a.cu_q != NULL:
        _flash_varlen(call, &a, dt)
        return call.out
    if a.nb * a.Hq * a.L == 0:
        return call.out
    cdef size_t isz = 4 if dt == 0 else 8
    a.R = a.L * a.G
    rows = _layout_rows(call.path, _auto_rows(a.L, a.G, a.D))
    part = None
    if rows:
        a.nchunk = (a.S + FA_SPLIT - 1) // FA_SPLIT
        part = np.empty(a.nb * a.Hkv * a.nchunk * a.R * (a.Dv + 2),
                        dtype=np.float32 if dt == 0 else np.float64)
        a.part = _ptr(part)
        _run_tasks(a.nb * a.Hkv * a.nchunk, _rows_buf(&a, a.R) * isz,
                   _rows_f32 if dt == 0 else _rows_f64, &a, call.nthreads, True)
        _run_tasks(a.nb * a.Hkv, 0, _merge_f32 if dt == 0 else _merge_f64,
                   &a, call.nthreads, False)
    else:
        _run_tasks(a.nb * a.Hkv * ((a.L + FA_BR - 1) // FA_BR), _lanes_buf(&a) * isz,
                   _lanes_f32 if dt == 0 else _lanes_f64, &a, call.nthreads, True)
    return call.out


cdef int _cmp_seq(const void *x, const void *y) noexcept nogil:
    """Order of (S, L, index) records: longest first, then by index."""
    cdef const int64_t *p = <const int64_t *>x
    cdef const int64_t *q = <const int64_t *>y
    if p[0] != q[0]:
        return -1 if p[0] > q[0] else 1
    if p[1] != q[1]:
        return -1 if p[1] > q[1] else 1
    return -1 if p[2] < q[2] else (1 if p[2] > q[2] else 0)


cdef int _flash_varlen(FlashCall call, FlashArgs *a, int dt, task_fn tfn=NULL,
                       task_fn mfn=NULL, size_t lanes_extra=0, size_t rows_extra=0,
                       size_t merge_bytes=0) except -1:
    """Variable-length batch: per-sequence layouts, one task table.  tfn/mfn
    (with their extra scratch, in elements, and merge scratch in bytes)
    replace the task functions: flash_bf16 runs its own on the same table."""
    cdef Py_ssize_t nb = a.nb, i, j, h, blk, L, S, nblk, R
    cdef Py_ssize_t ntask = 0, nmerge = 0, part_total = 0, Rmax = 0   # Rmax: elements
    cdef bint any_lanes = False, rows
    cdef size_t isz = 4 if dt == 0 else 8, nbuf = 0
    cdef const int64_t *cq = a.cu_q
    cdef const int64_t *ck = a.cu_k
    if cq[0] < 0 or ck[0] < 0:
        raise ValueError("fastattn kernel call: cu_q/cu_k must start at >= 0")
    for i in range(nb):
        if cq[i + 1] < cq[i] or ck[i + 1] < ck[i]:
            raise ValueError("fastattn kernel call: cu_q/cu_k must be non-decreasing")
    order_a = np.empty((nb, 3), dtype=np.int64)
    cdef int64_t *order = <int64_t *>cnp.PyArray_DATA(order_a)
    offs_a = np.full(nb, -1, dtype=np.int64)
    cdef int64_t *poff = <int64_t *>cnp.PyArray_DATA(offs_a)
    for i in range(nb):
        L = cq[i + 1] - cq[i]
        S = ck[i + 1] - ck[i]
        order[3 * i] = S; order[3 * i + 1] = L; order[3 * i + 2] = i
        if L == 0:
            continue
        R = L * a.G
        # (flash_bf16, tfn set, has its own rule, as its dense call)
        rows = _layout_rows(call.path, _auto_rows(L, a.G, a.D) if tfn == NULL
                            else _bf16_auto_rows(L, a.G, a.D))
        if rows:
            nblk = (S + FA_SPLIT - 1) // FA_SPLIT
            poff[i] = part_total
            part_total += a.Hkv * nblk * R * (a.Dv + 2)
            nmerge += a.Hkv
            # the largest rows buffer of any sequence (not of the longest R:
            # a 16-64-row sequence adds the narrow tile's scratch)
            if _rows_buf(a, R) > <size_t>Rmax:
                Rmax = <Py_ssize_t>_rows_buf(a, R)
        else:
            nblk = (L + FA_BR - 1) // FA_BR
            any_lanes = True
        ntask += a.Hkv * nblk
    if nb > 1:
        qsort(order, nb, 3 * sizeof(int64_t), _cmp_seq)
    tasks_a = np.empty((ntask, 4), dtype=np.int64)
    merge_a = np.empty((nmerge, 4), dtype=np.int64)
    cdef int64_t *tk = <int64_t *>cnp.PyArray_DATA(tasks_a)
    cdef int64_t *mg = <int64_t *>cnp.PyArray_DATA(merge_a)
    cdef Py_ssize_t nt = 0, nm = 0
    for j in range(nb):
        i = order[3 * j + 2]
        L = cq[i + 1] - cq[i]
        S = ck[i + 1] - ck[i]
        if L == 0:
            continue
        if poff[i] >= 0:
            nblk = (S + FA_SPLIT - 1) // FA_SPLIT
            for h in range(a.Hkv):
                for blk in range(nblk):
                    tk[4 * nt] = i; tk[4 * nt + 1] = h; tk[4 * nt + 2] = blk
                    tk[4 * nt + 3] = P_ROWS
                    nt += 1
                mg[4 * nm] = i; mg[4 * nm + 1] = h; mg[4 * nm + 2] = 0
                mg[4 * nm + 3] = P_ROWS
                nm += 1
        else:
            nblk = (L + FA_BR - 1) // FA_BR
            # largest query blocks (most keys when causal) first
            for h in range(a.Hkv):
                for blk in range(nblk - 1, -1, -1):
                    tk[4 * nt] = i; tk[4 * nt + 1] = h; tk[4 * nt + 2] = blk
                    tk[4 * nt + 3] = P_LANES
                    nt += 1
    if any_lanes:
        nbuf = _lanes_buf(a) + lanes_extra
    if Rmax and <size_t>Rmax + rows_extra > nbuf:
        nbuf = <size_t>Rmax + rows_extra
    part = np.empty(part_total, dtype=np.float32 if dt == 0 else np.float64)
    a.part = _ptr(part)
    a.part_off = poff
    a.tasks = tk
    if tfn == NULL:
        tfn = _varlen_f32 if dt == 0 else _varlen_f64
        mfn = _vmerge_f32 if dt == 0 else _vmerge_f64
    _run_tasks(ntask, nbuf * isz, tfn, a, call.nthreads, True)
    if nmerge:
        a.tasks = mg
        _run_tasks(nmerge, merge_bytes, mfn, a, call.nthreads, False)
    return 0
