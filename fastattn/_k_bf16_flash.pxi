# bfloat16 operands for the fused attention kernel (flash_bf16).  Included by
# _kernels.pxi after _k_flash.pxi, whose FlashArgs, FlashCall, tile
# classification and mask/bound/ALiBi helpers it reuses.
#
# q, k and v are bf16 bit patterns (uint16 views, made in functional.py);
# the output is float32 or bf16 (uint16).  Every build runs the portable path
# (fa_bf16_attn.h): the query block is widened once per task into the fp32
# Qt (lanes) or Qr (rows).  Lanes (prefill, compute-bound): each block of
# keys and values is widened into a per-thread fp32 scratch just before the
# fp32 tiles read it -- once per block for all the query heads of a GQA
# group.  Rows (decode, bandwidth-bound): the row tiles read bf16 K and V in
# place through a widening vector load (fa_dot_rows_bf16k,
# fa_axpy_rows_bf16v), no scratch round trip.  The softmax statistics, the
# accumulators and the merge of split-K partials are float32, the same
# operations in the same order as the fp32 kernel, so a float32 result equals
# the fp32 kernel's on the widened inputs bit for bit (D, Dv multiples of 16;
# see fa_bf16_attn.h for the scalar tails), and a bf16 result is
# that value rounded once (nearest even).  Task tables, chunk sizes and
# layouts are the fp32 kernel's: bit-identical for any thread count, and a
# varlen sequence's bits do not depend on the rest of the batch.

from libc.stdint cimport uint16_t, uint32_t

cdef extern from "fa_bf16_attn.h" nogil:
    void fa_bf16_widen_rows(const uint16_t *src, Py_ssize_t ss, int nr, int nc, float *dst)
    void fa_bf16_round_row(const float *src, int n, uint16_t *dst)
    float fa_bf16_widen1(uint16_t h)
    void fa_pack_qt_bf16(const uint16_t *q, Py_ssize_t qs, int nr, int D, float scale, float *Qt,
                         float *tmp)
    void fa_store_ot_bf16(const float *Ot, const float *l, int nr, int Dv, uint16_t *o,
                          Py_ssize_t os, float *tmp)
    void fa_dot_rows_bf16k(const float *Q, int R, const uint16_t *K, Py_ssize_t ks, int nk,
                           int D, float *s, int lds)
    void fa_axpy_rows_bf16v(const float *P, int R, int ldp, const uint16_t *V, Py_ssize_t vs,
                            int nk, int Dv, float *O)
    # the lanes layout on bf16 products: AMX tiles (amx build) or vdpbf16ps
    # (avx512bf16 build); stubs elsewhere, never called there
    int FA_BF16_ATTN_AMX
    int FA_BF16_ATTN_DP
    int FA_BF16_ATTN_TILES
    int fa_bt_k_in_place(int D, int nk, Py_ssize_t ks)
    enum: FA_BT_SB
    size_t fa_bt_head_floats(int D, int Dv)
    size_t fa_bt_shared_floats(int D, int Dv)
    size_t fa_bt_st_floats()
    size_t fa_bt_kp_floats(int D)
    size_t fa_bt_vt_floats(int Dv)
    void fa_bt_begin()
    void fa_bt_end()
    void fa_bt_pack_q(const uint16_t *q, Py_ssize_t qs, int nr, int D, uint32_t *Qp)
    void fa_bt_pack_k(const uint16_t *K, Py_ssize_t ks, int nk, int D, uint16_t *Kp)
    void fa_bt_pack_vt(const uint16_t *V, Py_ssize_t vs, int nk, int Dv, uint16_t *Vt)
    void fa_bt_qk(const uint16_t *Kb, Py_ssize_t kstride, int nk, int D, const uint32_t *Qp,
                  int nr, float *St)
    void fa_bt_scale(float *St, int nk, float scale, int nr)
    void fa_bt_softmax_p(const float *St, const int *nks, float scale, float *m, float *l,
                         float *Ot, int Dv, int nr, uint32_t *Pv)
    void fa_bt_pvt(const uint16_t *const *vts, const int *nks, const uint32_t *Pv, int Dv,
                   int nr, float *Ot)

cdef inline bint _bf16_auto_rows(Py_ssize_t L, Py_ssize_t G, Py_ssize_t D) noexcept nogil:
    """flash_bf16's layout choice for L query rows per head (dense and
    varlen calls alike; from L, G, D only, so a sequence's bits never depend
    on its batch).  The amx build's lanes tiles always compute all 64 query
    lanes, so rows take up to ROWS_MAX rows per kv head there (chosen on
    Sapphire Rapids).  The vdpbf16ps tiles run only the 16-lane groups that
    hold rows and the widening path runs the fp32 tiles, so both take the
    fp32 kernel's rule: measured on Zen 4 (D 32 / 64 / 128, 2 threads) the
    bf16 rows path was 1.3-4.8x slower than the vdpbf16ps lanes from 8-12
    rows per head, and it had kept every sequence up to 32 tokens, most of
    a sentence corpus, on it."""
    if FA_BF16_ATTN_AMX:
        return L * G <= ROWS_MAX
    return _auto_rows(L, G, D)


cdef inline size_t _bf16_lanes_buf(const FlashArgs *a) noexcept:
    if FA_BF16_ATTN_TILES:
        return (a.G * fa_bt_head_floats(<int>a.D, <int>a.Dv)
                + fa_bt_shared_floats(<int>a.D, <int>a.Dv))
    return _lanes_buf(a) + FA_BC * a.D + 16 + FA_BC * a.Dv + 16


cdef inline size_t _bf16_rows_buf(const FlashArgs *a, Py_ssize_t R) noexcept:
    return _rows_buf(a, R)


cdef inline float *_align16(float *p) noexcept nogil:
    return <float *>((<size_t>p + 63) & ~(<size_t>63))


cdef void _bf16_lanes_block(const FlashArgs *a, Py_ssize_t bn, Py_ssize_t hkv,
                            Py_ssize_t qb, float *buf, bint o16) noexcept nogil:
    """_flash_lanes_block on bf16 operands (the same order of operations)."""
    cdef Py_ssize_t q0 = qb * FA_BR
    cdef Py_ssize_t nr = a.L - q0
    if nr > FA_BR:
        nr = FA_BR
    cdef Py_ssize_t q1 = q0 + nr - 1
    cdef Py_ssize_t D = a.D, Dv = a.Dv, G = a.G
    cdef Py_ssize_t qt_sz = D * FA_BR, ot_sz = Dv * FA_BR
    cdef float *St = buf
    cdef float *alpha = St + FA_BC * FA_BR
    cdef float *hbase = alpha + FA_BR
    cdef Py_ssize_t hstride = qt_sz + ot_sz + 2 * FA_BR
    cdef float *Kw = _align16(hbase + G * hstride)
    cdef float *Vw = _align16(Kw + FA_BC * D)
    cdef float *Qt
    cdef float *Ot
    cdef float *m
    cdef float *l
    cdef const uint16_t *kp
    cdef const uint16_t *vp
    cdef Py_ssize_t g, n, i, kb, k0, k1, nk, kb_lo, kb_hi, lo, hi
    cdef int geo, mcls
    cdef bint widened
    cdef float qscale = <float>a.qscale

    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qt = hbase + g * hstride
        Ot = Qt + qt_sz
        m = Ot + ot_sz
        l = m + FA_BR
        fa_pack_qt_bf16((<const uint16_t *>a.q) + a.qoff[n] + q0 * a.qs, a.qs,
                        <int>nr, <int>D, qscale, Qt, Kw)
        for i in range(ot_sz):
            Ot[i] = 0
        for i in range(FA_BR):
            m[i] = -INFINITY
            l[i] = 0

    lo = _row_lo(a, q0)
    hi = _row_hi(a, q1)
    if lo < 0:
        lo = 0
    if hi > a.S - 1:
        hi = a.S - 1
    kb_lo = lo // FA_BC
    kb_hi = hi // FA_BC + 1 if hi >= lo else kb_lo

    kp = (<const uint16_t *>a.k) + a.koff[bn * a.Hkv + hkv]
    vp = (<const uint16_t *>a.v) + a.voff[bn * a.Hkv + hkv]
    for kb in range(kb_lo, kb_hi):
        k0 = kb * FA_BC
        nk = a.S - k0
        if nk > FA_BC:
            nk = FA_BC
        k1 = k0 + nk - 1
        geo = _geo_class(a, q0, q1, k0, k1)
        if geo == T_HIDDEN:
            continue
        widened = False
        for g in range(G):
            n = bn * a.Hq + hkv * G + g
            mcls = _mask_class(a, n, qb, kb)
            if mcls == T_HIDDEN:
                continue
            if not widened:   # once per key block for the whole GQA group
                fa_bf16_widen_rows(kp + k0 * a.ks, a.ks, <int>nk, <int>D, Kw)
                fa_bf16_widen_rows(vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, Vw)
                widened = True
            Qt = hbase + g * hstride
            Ot = Qt + qt_sz
            m = Ot + ot_sz
            l = m + FA_BR
            fa_qk_f32(Kw, D, <int>nk, <int>D, Qt, St)
            if geo == T_PARTIAL or mcls == T_PARTIAL or a.slopes != NULL:
                _bias_tile(a, St, n, hkv * G + g, q0, nr, k0, nk, geo, mcls)
            fa_softmax_f32(St, <int>nk, m, l, alpha)
            fa_rescale_pv_f32(Vw, Dv, <int>nk, <int>Dv, St, Ot, alpha)

    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qt = hbase + g * hstride
        Ot = Qt + qt_sz
        m = Ot + ot_sz
        l = m + FA_BR
        if o16:
            fa_store_ot_bf16(Ot, l, <int>nr, <int>Dv,
                             (<uint16_t *>a.o) + a.ooff[n] + q0 * a.os, a.os, Vw)
        else:
            fa_store_ot_f32(Ot, l, <int>nr, <int>Dv,
                            (<float *>a.o) + a.ooff[n] + q0 * a.os, a.os)


cdef void _bt_lanes_block(const FlashArgs *a, Py_ssize_t bn, Py_ssize_t hkv,
                           Py_ssize_t qb, float *buf, bint o16,
                           const uint16_t *vth) noexcept nogil:
    """The amx and avx512bf16 builds' lanes block (fa_bf16_attn.h): super
    blocks of up to FA_BT_SB visible 64-key tiles; S^T and P.V on AMX tiles
    or vdpbf16ps (only the 16-query vectors holding rows of the block), bounds/masks/
    ALiBi on the fp32 lanes tile exactly as the widening path, the online
    softmax (lazy running max) in fp32, P rounded to bf16 for the product.
    vth: this kv head's V^T, every key tile packed once per call by
    _bt_vt_task (dense calls), or NULL: each task packs the tiles it uses
    (varlen); the packed bits are the same either way."""
    cdef Py_ssize_t q0 = qb * FA_BR
    cdef Py_ssize_t nr = a.L - q0
    if nr > FA_BR:
        nr = FA_BR
    cdef Py_ssize_t q1 = q0 + nr - 1
    cdef Py_ssize_t D = a.D, Dv = a.Dv, G = a.G
    cdef Py_ssize_t Dp = (D + 31) // 32 * 32, Dvp = (Dv + 15) // 16 * 16
    cdef Py_ssize_t qp_sz = Dp // 2 * FA_BR, o_sz = FA_BR * Dvp
    cdef Py_ssize_t hstride = fa_bt_head_floats(<int>D, <int>Dv)
    cdef float *hbase = buf
    cdef float *St = hbase + G * hstride
    cdef uint16_t *Kp = <uint16_t *>(St + fa_bt_st_floats())
    cdef uint16_t *Vt = <uint16_t *>((<float *>Kp) + fa_bt_kp_floats(<int>D))
    cdef uint32_t *Pv = <uint32_t *>((<float *>Vt) + fa_bt_vt_floats(<int>Dv))
    cdef uint32_t *Qp
    cdef float *O
    cdef float *m
    cdef float *l
    cdef const uint16_t *kp
    cdef const uint16_t *vp
    cdef const uint16_t *Kb
    cdef Py_ssize_t kstr
    cdef Py_ssize_t g, n, i, s, kb, k0, nk, kb_lo, kb_hi, lo, hi, nsb
    cdef int geo, mcls, anyk
    cdef int nks[FA_BT_SB]
    cdef Py_ssize_t sbk[FA_BT_SB]
    cdef int sbgeo[FA_BT_SB]
    cdef bint vpacked[FA_BT_SB]
    cdef const uint16_t *vts[FA_BT_SB]
    cdef bint kpacked[FA_BT_SB]
    cdef bint bias
    cdef float qscale = <float>a.qscale
    cdef float sscale

    fa_bt_begin()
    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qp = <uint32_t *>(hbase + g * hstride)
        O = (<float *>Qp) + qp_sz
        m = O + o_sz
        l = m + FA_BR
        fa_bt_pack_q((<const uint16_t *>a.q) + a.qoff[n] + q0 * a.qs, a.qs,
                      <int>nr, <int>D, Qp)
        for i in range(o_sz):
            O[i] = 0
        for i in range(FA_BR):
            m[i] = -INFINITY
            l[i] = 0

    lo = _row_lo(a, q0)
    hi = _row_hi(a, q1)
    if lo < 0:
        lo = 0
    if hi > a.S - 1:
        hi = a.S - 1
    kb_lo = lo // FA_BC
    kb_hi = hi // FA_BC + 1 if hi >= lo else kb_lo

    kp = (<const uint16_t *>a.k) + a.koff[bn * a.Hkv + hkv]
    vp = (<const uint16_t *>a.v) + a.voff[bn * a.Hkv + hkv]
    kb = kb_lo
    while kb < kb_hi:
        # the next super block: up to FA_BT_SB key tiles the bounds do not hide
        nsb = 0
        while kb < kb_hi and nsb < FA_BT_SB:
            geo = _geo_class(a, q0, q1, kb * FA_BC, min(kb * FA_BC + FA_BC, a.S) - 1)
            if geo != T_HIDDEN:
                sbk[nsb] = kb
                sbgeo[nsb] = geo
                vpacked[nsb] = False
                kpacked[nsb] = False
                nsb += 1
            kb += 1
        if nsb == 0:
            break
        for g in range(G):
            n = bn * a.Hq + hkv * G + g
            Qp = <uint32_t *>(hbase + g * hstride)
            O = (<float *>Qp) + qp_sz
            m = O + o_sz
            l = m + FA_BR
            anyk = 0
            bias = False
            for s in range(FA_BT_SB):
                nks[s] = 0
            for s in range(nsb):
                mcls = _mask_class(a, n, qb, sbk[s])
                if mcls == T_HIDDEN:
                    continue
                k0 = sbk[s] * FA_BC
                nk = a.S - k0
                if nk > FA_BC:
                    nk = FA_BC
                nks[s] = <int>nk
                anyk = 1
                if vth != NULL:
                    vts[s] = vth + sbk[s] * FA_BC * Dvp
                elif not vpacked[s]:    # once per key tile for the whole GQA group
                    fa_bt_pack_vt(vp + k0 * a.vs, a.vs, <int>nk, <int>Dv,
                                   Vt + s * FA_BC * Dvp)
                    vts[s] = Vt + s * FA_BC * Dvp
                    vpacked[s] = True
                if fa_bt_k_in_place(<int>D, <int>nk, a.ks):
                    Kb = kp + k0 * a.ks
                    kstr = a.ks
                else:
                    if not kpacked[s]:
                        fa_bt_pack_k(kp + k0 * a.ks, a.ks, <int>nk, <int>D, Kp + s * FA_BC * Dp)
                        kpacked[s] = True
                    Kb = Kp + s * FA_BC * Dp
                    kstr = Dp
                fa_bt_qk(Kb, kstr, <int>nk, <int>D, Qp, <int>nr, St + s * FA_BC * FA_BR)
                if sbgeo[s] == T_PARTIAL or mcls == T_PARTIAL or a.slopes != NULL:
                    bias = True
            if not anyk:
                continue
            if bias or qscale <= 0:
                # scaled scores (log2 units) for the fp32 bias code, every tile
                sscale = 1
                for s in range(nsb):
                    if nks[s] == 0:
                        continue
                    k0 = sbk[s] * FA_BC
                    fa_bt_scale(St + s * FA_BC * FA_BR, nks[s], qscale, <int>nr)
                    mcls = _mask_class(a, n, qb, sbk[s])
                    if sbgeo[s] == T_PARTIAL or mcls == T_PARTIAL or a.slopes != NULL:
                        _bias_tile(a, St + s * FA_BC * FA_BR, n, hkv * G + g, q0, nr, k0,
                                   nks[s], sbgeo[s], mcls)
            else:
                sscale = qscale
            fa_bt_softmax_p(St, nks, sscale, m, l, O, <int>Dv, <int>nr, Pv)
            fa_bt_pvt(vts, nks, Pv, <int>Dv, <int>nr, O)
    fa_bt_end()

    for g in range(G):
        n = bn * a.Hq + hkv * G + g
        Qp = <uint32_t *>(hbase + g * hstride)
        O = (<float *>Qp) + qp_sz
        m = O + o_sz
        l = m + FA_BR
        if o16:
            fa_store_ot_bf16(O, l, <int>nr, <int>Dv,
                             (<uint16_t *>a.o) + a.ooff[n] + q0 * a.os, a.os, St)
        else:
            fa_store_ot_f32(O, l, <int>nr, <int>Dv,
                            (<float *>a.o) + a.ooff[n] + q0 * a.os, a.os)


cdef void _bf16_rows_chunk(const FlashArgs *a, Py_ssize_t bn, Py_ssize_t hkv,
                           Py_ssize_t c, float *P, float *buf) noexcept nogil:
    """_flash_rows_chunk on bf16 operands: partial (O, m, l) to P ([R, Dv+2])."""
    cdef Py_ssize_t R = a.R, D = a.D, Dv = a.Dv, L = a.L
    cdef float *Qr = buf
    cdef float *s = Qr + R * D
    cdef float *Ob = s + R * ROWS_BC
    cdef float *mb = Ob + R * Dv
    cdef float *lb = mb + R
    cdef const uint16_t *qrow
    cdef const uint16_t *kp
    cdef const uint16_t *vp
    cdef Py_ssize_t r, g, i, n, d, j, kb, k0, k1, nk, c0, c1, t0, t1, tt
    cdef int geo, mcls, any_vis
    cdef float qscale = <float>a.qscale
    cdef float mx, al, sm

    for r in range(R):
        g = r // L
        i = r % L
        n = bn * a.Hq + hkv * a.G + g
        qrow = (<const uint16_t *>a.q) + a.qoff[n] + i * a.qs
        for d in range(D):
            Qr[r * D + d] = fa_bf16_widen1(qrow[d]) * qscale
        for d in range(Dv):
            Ob[r * Dv + d] = 0
        mb[r] = -INFINITY
        lb[r] = 0

    kp = (<const uint16_t *>a.k) + a.koff[bn * a.Hkv + hkv]
    vp = (<const uint16_t *>a.v) + a.voff[bn * a.Hkv + hkv]
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
        fa_dot_rows_bf16k(Qr, <int>R, kp + k0 * a.ks, a.ks, <int>nk, <int>D, s, ROWS_BC)
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
            mx = fa_max_f32(&s[r * ROWS_BC], <int>nk)
            if mb[r] > mx:
                mx = mb[r]
            if mx == -INFINITY:
                al = 0
            else:
                al = fa_exp2_f32(mb[r] - mx)
            sm = fa_exp2_sub_sum_f32(&s[r * ROWS_BC], <int>nk, mx)
            lb[r] = lb[r] * al + sm
            mb[r] = mx
            if lb[r] != lb[r]:
                mb[r] = lb[r]
            if al != 1:
                for d in range(Dv):
                    Ob[r * Dv + d] = Ob[r * Dv + d] * al
        fa_axpy_rows_bf16v(s, <int>R, ROWS_BC, vp + k0 * a.vs, a.vs, <int>nk, <int>Dv, Ob)

    for r in range(R):
        for d in range(Dv):
            P[r * (Dv + 2) + d] = Ob[r * Dv + d]
        P[r * (Dv + 2) + Dv] = mb[r]
        P[r * (Dv + 2) + Dv + 1] = lb[r]


cdef void _bf16_rows_merge(const FlashArgs *a, Py_ssize_t bn, Py_ssize_t hkv,
                           const float *base, bint o16, float *tmp) noexcept nogil:
    """_flash_rows_merge into a float32 output, or into tmp and then rounded
    once into a bf16 output."""
    cdef Py_ssize_t R = a.R, Dv = a.Dv, L = a.L, rs = a.R * (a.Dv + 2)
    cdef const float *Pc
    cdef float *orow
    cdef Py_ssize_t r, c, d, n
    cdef float M, lsum, w
    for r in range(R):
        n = bn * a.Hq + hkv * a.G + r // L
        if o16:
            orow = tmp
        else:
            orow = (<float *>a.o) + a.ooff[n] + (r % L) * a.os
        M = -INFINITY
        for c in range(a.nchunk):
            Pc = base + c * rs + r * (Dv + 2)
            if Pc[Dv] != Pc[Dv] or Pc[Dv] > M:
                M = Pc[Dv]
                if M != M:
                    break
        for d in range(Dv):
            orow[d] = 0
        if M != -INFINITY:
            lsum = 0
            for c in range(a.nchunk):
                Pc = base + c * rs + r * (Dv + 2)
                if Pc[Dv] == -INFINITY:
                    continue
                w = fa_exp2_f32(Pc[Dv] - M)
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
        if o16:
            fa_bf16_round_row(tmp, <int>Dv,
                              (<uint16_t *>a.o) + a.ooff[n] + (r % L) * a.os)


# -- dense batches ------------------------------------------------------------

cdef inline void _bf16_lanes_task(const FlashArgs *a, Py_ssize_t t, float *buf,
                                  bint o16) noexcept nogil:
    cdef Py_ssize_t nqb = (a.L + FA_BR - 1) // FA_BR
    cdef Py_ssize_t qb = nqb - 1 - (t % nqb)
    cdef Py_ssize_t bh = t // nqb
    _bf16_lanes_block(a, bh // a.Hkv, bh % a.Hkv, qb, buf, o16)


cdef void _bl_o32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_lanes_task(<const FlashArgs *>c, t, <float *>b, False)
cdef void _bl_o16(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_lanes_task(<const FlashArgs *>c, t, <float *>b, True)


# the amx and avx512bf16 builds' dense lanes calls: V^T of every (batch, kv head, key tile)
# packed once by a parallel pass, then read by all the query blocks' tasks
# (instead of each task packing the tiles again)
cdef struct BtCall:
    FlashArgs a
    uint16_t *vt        # nb * Hkv * nkb tiles of FA_BC * Dvp bf16
    Py_ssize_t nkb      # key tiles per kv head


cdef void _bt_vt_task(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    cdef const BtCall *x = <const BtCall *>c
    cdef const FlashArgs *a = &x.a
    cdef Py_ssize_t Dvp = (a.Dv + 15) // 16 * 16
    cdef Py_ssize_t bh = t // x.nkb, kb = t % x.nkb
    cdef Py_ssize_t k0 = kb * FA_BC
    cdef Py_ssize_t nk = a.S - k0
    if nk > FA_BC:
        nk = FA_BC
    fa_bt_pack_vt((<const uint16_t *>a.v) + a.voff[bh] + k0 * a.vs, a.vs, <int>nk,
                   <int>a.Dv, x.vt + t * FA_BC * Dvp)


cdef inline void _bt_lanes_task(const BtCall *x, Py_ssize_t t, float *buf,
                                 bint o16) noexcept nogil:
    cdef const FlashArgs *a = &x.a
    cdef Py_ssize_t nqb = (a.L + FA_BR - 1) // FA_BR
    cdef Py_ssize_t qb = nqb - 1 - (t % nqb)
    cdef Py_ssize_t bh = t // nqb
    cdef Py_ssize_t Dvp = (a.Dv + 15) // 16 * 16
    _bt_lanes_block(a, bh // a.Hkv, bh % a.Hkv, qb, buf, o16,
                     x.vt + bh * x.nkb * FA_BC * Dvp)


cdef void _al_o32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bt_lanes_task(<const BtCall *>c, t, <float *>b, False)
cdef void _al_o16(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bt_lanes_task(<const BtCall *>c, t, <float *>b, True)


cdef void _br_task(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    cdef const FlashArgs *a = <const FlashArgs *>c
    cdef Py_ssize_t bh = t // a.nchunk
    _bf16_rows_chunk(a, bh // a.Hkv, bh % a.Hkv, t % a.nchunk,
                     (<float *>a.part) + t * a.R * (a.Dv + 2), <float *>b)


cdef inline void _bf16_merge_task(const FlashArgs *a, Py_ssize_t bh, float *tmp,
                                  bint o16) noexcept nogil:
    _bf16_rows_merge(a, bh // a.Hkv, bh % a.Hkv,
                     (<const float *>a.part) + bh * a.nchunk * a.R * (a.Dv + 2), o16, tmp)


cdef void _bm_o32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_merge_task(<const FlashArgs *>c, t, <float *>b, False)
cdef void _bm_o16(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_merge_task(<const FlashArgs *>c, t, <float *>b, True)


# -- variable-length batches --------------------------------------------------

cdef inline void _bf16_seq_view(const FlashArgs *a, Py_ssize_t sq, FlashArgs *s,
                                bint o16) noexcept nogil:
    """_seq_view for bf16 operands (uint16 q/k/v; float32 or uint16 out)."""
    s[0] = a[0]
    s.q = <const char *>((<const uint16_t *>a.q) + a.cu_q[sq] * a.qs)
    if o16:
        s.o = <char *>((<uint16_t *>a.o) + a.cu_q[sq] * a.os)
    else:
        s.o = <char *>((<float *>a.o) + a.cu_q[sq] * a.os)
    s.k = <const char *>((<const uint16_t *>a.k) + a.cu_k[sq] * a.ks)
    s.v = <const char *>((<const uint16_t *>a.v) + a.cu_k[sq] * a.vs)
    s.nb = 1
    s.L = a.cu_q[sq + 1] - a.cu_q[sq]
    s.S = a.cu_k[sq + 1] - a.cu_k[sq]
    s.off = s.S - s.L if a.bottom_right else 0
    s.R = s.L * a.G
    s.nchunk = (s.S + FA_SPLIT - 1) // FA_SPLIT


cdef inline void _bf16_varlen_task(const FlashArgs *a, Py_ssize_t t, float *buf,
                                   bint o16) noexcept nogil:
    cdef const int64_t *e = a.tasks + 4 * t
    cdef FlashArgs s
    _bf16_seq_view(a, e[0], &s, o16)
    if e[3] == P_LANES:
        if FA_BF16_ATTN_TILES:
            _bt_lanes_block(&s, 0, e[1], e[2], buf, o16, NULL)
        else:
            _bf16_lanes_block(&s, 0, e[1], e[2], buf, o16)
    else:
        _bf16_rows_chunk(&s, 0, e[1], e[2],
                         (<float *>a.part) + a.part_off[e[0]]
                         + (e[1] * s.nchunk + e[2]) * s.R * (a.Dv + 2), buf)


cdef inline void _bf16_varlen_merge(const FlashArgs *a, Py_ssize_t t, float *tmp,
                                    bint o16) noexcept nogil:
    cdef const int64_t *e = a.tasks + 4 * t
    cdef FlashArgs s
    _bf16_seq_view(a, e[0], &s, o16)
    _bf16_rows_merge(&s, 0, e[1], (<const float *>a.part) + a.part_off[e[0]]
                     + e[1] * s.nchunk * s.R * (a.Dv + 2), o16, tmp)


cdef void _bv_o32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_varlen_task(<const FlashArgs *>c, t, <float *>b, False)
cdef void _bv_o16(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_varlen_task(<const FlashArgs *>c, t, <float *>b, True)
cdef void _bvm_o32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_varlen_merge(<const FlashArgs *>c, t, <float *>b, False)
cdef void _bvm_o16(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _bf16_varlen_merge(<const FlashArgs *>c, t, <float *>b, True)


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------

# how this build computes bf16 attention: "amx" (prefill on AMX tiles),
# "dp" (prefill on vdpbf16ps), decode widening in both; or "widen" (both
# layouts widening to the fp32 tiles)
ATTN_BF16_PATH = "amx" if FA_BF16_ATTN_AMX else ("dp" if FA_BF16_ATTN_DP else "widen")


def flash_bf16(FlashCall call not None):
    """Fused attention on bf16 operands: ``call.q``/``k``/``v`` are uint16
    views of bfloat16 arrays, ``call.out`` float32 or uint16 (a bfloat16
    view: the result rounded once); float masks are float32.  Same fields
    and semantics as :func:`flash`.  Writes and returns ``call.out``."""
    cdef FlashArgs a
    cdef BtCall bt
    cdef int dt
    cdef bint rows, o16
    for name, arr in (("q", call.q), ("k", call.k), ("v", call.v), ("out", call.out)):
        _set(arr is not None, name)
    if (cnp.PyArray_TYPE(call.q) != cnp.NPY_UINT16 or cnp.PyArray_TYPE(call.k) != cnp.NPY_UINT16
            or cnp.PyArray_TYPE(call.v) != cnp.NPY_UINT16):
        raise TypeError("fastattn kernel call: flash_bf16 needs q, k and v as uint16 "
                        "views of bfloat16 arrays")
    if cnp.PyArray_TYPE(call.out) == cnp.NPY_UINT16:
        o16 = True
    elif cnp.PyArray_TYPE(call.out) == cnp.NPY_FLOAT32:
        o16 = False
    else:
        raise TypeError("fastattn kernel call: flash_bf16 writes a float32 or "
                        "uint16 (bfloat16) out")
    _fill_args(call, &a, &dt, True)
    if a.cu_q != NULL:
        _flash_varlen(call, &a, 0, _bv_o16 if o16 else _bv_o32,
                      _bvm_o16 if o16 else _bvm_o32,
                      _bf16_lanes_buf(&a) - _lanes_buf(&a),
                      _bf16_rows_buf(&a, 0) - _rows_buf(&a, 0), (a.Dv + 16) * 4)
        return call.out
    if a.nb * a.Hq * a.L == 0:
        return call.out
    a.R = a.L * a.G
    rows = _layout_rows(call.path, _bf16_auto_rows(a.L, a.G, a.D))
    part = None
    if rows:
        a.nchunk = (a.S + FA_SPLIT - 1) // FA_SPLIT
        part = np.empty(a.nb * a.Hkv * a.nchunk * a.R * (a.Dv + 2), dtype=np.float32)
        a.part = _ptr(part)
        _run_tasks(a.nb * a.Hkv * a.nchunk, _bf16_rows_buf(&a, a.R) * 4, _br_task,
                   &a, call.nthreads, True)
        _run_tasks(a.nb * a.Hkv, (a.Dv + 16) * 4, _bm_o16 if o16 else _bm_o32,
                   &a, call.nthreads, False)
    elif FA_BF16_ATTN_TILES:
        bt.a = a
        bt.nkb = (a.S + FA_BC - 1) // FA_BC
        vt = np.empty(max(a.nb * a.Hkv * bt.nkb * FA_BC * ((a.Dv + 15) // 16 * 16), 1),
                      dtype=np.uint16)
        bt.vt = <uint16_t *>cnp.PyArray_DATA(vt)
        _run_tasks(a.nb * a.Hkv * bt.nkb, 0, _bt_vt_task, &bt, call.nthreads, False)
        _run_tasks(a.nb * a.Hkv * ((a.L + FA_BR - 1) // FA_BR), _bf16_lanes_buf(&a) * 4,
                   _al_o16 if o16 else _al_o32, &bt, call.nthreads, True)
    else:
        _run_tasks(a.nb * a.Hkv * ((a.L + FA_BR - 1) // FA_BR), _bf16_lanes_buf(&a) * 4,
                   _bl_o16 if o16 else _bl_o32, &a, call.nthreads, True)
    return call.out
