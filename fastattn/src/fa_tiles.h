/*
 * fa_tiles.h -- tile arithmetic for fastattn's fused attention kernel.
 *
 * THIS FILE IS THE INTERFACE CONTRACT (signatures, layouts, semantics); the
 * plain scalar specification it implements is kept verbatim, with ref_
 * names, in tests/fa_ref.h, and tests/ checks every function against it.
 *
 * Layout ("queries in lanes", see docs/architecture.md): the kernel keeps a block of FA_BR
 * query rows transposed, so that every per-query quantity is a vector over the
 * FA_BR lanes.  All tile buffers are 64-byte aligned, leading dimension FA_BR.
 *   Qt[d*FA_BR + i]  query i, feature d, pre-multiplied by scale*log2(e);
 *                    lanes i >= valid rows are zero.
 *   St[j*FA_BR + i]  score of query i against key j (log2 units), j < nk.
 *   Ot[d*FA_BR + i]  output accumulator for query i, feature d (unnormalised).
 *   m[i], l[i]       running max (log2 units) and running sum of the softmax.
 * K and V are read in place: row j of the key block starts at K + j*ks, and its
 * D features are contiguous.  Every function computes all FA_BR lanes.
 * Every function exists for float (_f32) and double (_f64) with identical
 * layouts (FA_BR lanes of double for _f64; exp2 flushes below -1022 there).
 *
 * Functions (T = float / double, suffix _f32 / _f64):
 *   fa_qk   St[j][i]  = sum_{d<D} K[j*ks+d] * Qt[d][i]          j < nk <= FA_BC
 *   fa_gemm_nt  Yt[n][i] (+)= sum_{k<kc} W[n*ws+k] * Xt[k][i]   n < nn
 *              (fa_qk's tile as a linear-layer GEMM step; += if accumulate)
 *   fa_pv   Ot[d][i] += sum_{j<nk} V[j*vs+d] * Pt[j][i]          d < Dv
 *   fa_softmax  online-softmax step, lane-wise:
 *              mnew  = max(m, max_j St[j])        (s > mx ? s : mx, in j order)
 *              alpha = exp2(m - mnew)             (0 where mnew == -inf)
 *              St[j] = exp2(St[j] - mnew)         (0 where St[j] == -inf or
 *                                                  mnew == -inf)
 *              l     = l*alpha + sum_j St[j]      (j summed in increasing order)
 *              m     = mnew
 *   fa_rescale  Ot[d][i] *= alpha[i]
 *   fa_rescale_pv  fa_rescale then fa_pv, fused (bit-identical to the pair)
 *   fa_exp2     exp2(x); x < -126 (-1022 for f64) gives exactly 0, NaN stays
 *               NaN, x >= 128 (1024) gives +inf.  ~1 ulp.
 *   row layout (decode):
 *   fa_dot_rows   s[r*lds+j] = sum_d Q[r*D+d] * K[j*ks+d]
 *   fa_axpy_rows  O[r*Dv+d] += sum_{j<nk} P[r*ldp+j] * V[j*vs+d]  (j in order)
 *   fa_exp2_sub_sum  x[j] = exp2(x[j]-mx); returns the sum (fixed order)
 *   fa_max        max over x[0..n), -inf for n == 0
 *
 * NaN: a NaN score/query/value keeps its lane NaN.  (One deliberate difference
 * from the first scalar spec: there, a lane whose only non -inf scores were
 * NaN got mnew == -inf and P = 0, silently dropping the NaN; here such NaN
 * scores give NaN probabilities, so the NaN reaches l and the output.)
 *
 * Determinism: every sum is taken in an order fixed by the arguments (never by
 * threads).  Results of different instruction-set builds may differ in the
 * last bits (FMA, lane partial sums in the row-layout dot products).
 *
 * Implementation: one source, three instruction sets picked by the compiler
 * flags this file is compiled with:
 *   __AVX512F__ (+DQ, BW, VL, FMA) : 512-bit,  32 registers
 *   __AVX2__ && __FMA__            : 256-bit,  16 registers
 *   otherwise (GNU C compilers)    : 128-bit vectors (SSE2 on x86-64,
 *                                    NEON on aarch64, generic elsewhere)
 *   otherwise (e.g. MSVC)          : plain scalar C, same code with 1 lane.
 * The kernels below are written once, against a thin layer of vector
 * operations (fa__ld, fa__fma, ...) whose per-ISA definitions are one-line,
 * one-to-one wrappers of intrinsics or GNU vector extensions; register
 * blocking shapes are chosen by vector width and register count.  The
 * kernel bodies are instantiated twice (float, double) by including this
 * file into itself (FA__TEMPLATE_PASS).  C99, static inline only, no globals.
 *
 * Test-only knobs: FA_FORCE_GENERIC=<bytes> (GNU vector extensions of that
 * width instead of intrinsics), FA_FORCE_SCALAR, FA_FORCE_NREGS=<16|32>.
 */
#if defined(FA__TEMPLATE_PASS)
/* ======================================================================= */
/* Template pass: instantiated for FA__T in {float, double}.               */
/* Uses FA__T, FA__V (vector type), FA__VW (lanes), FA__N(name) (suffix),  */
/* FA__F64 and the fa__* operation macros defined below per pass.          */
/* ======================================================================= */

/* ---- exp2 on a vector ------------------------------------------------ */
/* x = n + f, n = round-to-nearest(x) by the 1.5*2^(mantissa bits) trick,
 * f in [-0.5, 0.5]; 2^f by a minimax polynomial (Horner, FMA); 2^n added to
 * the exponent bits of the polynomial value.  Inputs are clamped above at
 * FA__EXP_HI (2^HI == +inf) and results for x < FA__EXP_LO are set to 0
 * (so no denormal is ever produced or consumed); NaN propagates. */
FA__AI FA__V FA__N(fa__exp2v)(FA__V x)
{
    const FA__V magic = fa__set1((FA__T)FA__EXP_MAGIC);
    FA__V xc = fa__min(fa__set1((FA__T)FA__EXP_HI), x);   /* NaN stays NaN */
    FA__V t = fa__add(xc, magic);
    FA__V n = fa__sub(t, magic);
    FA__V f = fa__sub(xc, n);
    FA__V p;
#if FA__F64
    p = fa__fma(fa__set1(4.455817908336064493e-10), f, fa__set1(7.074194297288521006e-09));
    p = fa__fma(p, f, fa__set1(1.017805708773394110e-07));
    p = fa__fma(p, f, fa__set1(1.321543253591237617e-06));
    p = fa__fma(p, f, fa__set1(1.525273384155677259e-05));
    p = fa__fma(p, f, fa__set1(1.540353046372435421e-04));
    p = fa__fma(p, f, fa__set1(1.333355814640647070e-03));
    p = fa__fma(p, f, fa__set1(9.618129107587256669e-03));
    p = fa__fma(p, f, fa__set1(5.550410866482162704e-02));
    p = fa__fma(p, f, fa__set1(2.402265069591015957e-01));
    p = fa__fma(p, f, fa__set1(6.931471805599453093e-01));
    p = fa__fma(p, f, fa__set1(1.0));
#else
    p = fa__fma(fa__set1(1.5461444698569129e-04f), f, fa__set1(1.3400428177615838e-03f));
    p = fa__fma(p, f, fa__set1(9.6180566785246381e-03f));
    p = fa__fma(p, f, fa__set1(5.5503272266703021e-02f));
    p = fa__fma(p, f, fa__set1(2.4022650922288758e-01f));
    p = fa__fma(p, f, fa__set1(6.9314720670283260e-01f));
    p = fa__fma(p, f, fa__set1(1.0f));
#endif
    FA__V r = fa__scalbits(p, t);             /* p * 2^n via exponent bits */
    r = fa__add(r, fa__sub(xc, xc));          /* +0, or NaN where x is NaN */
    return fa__zero_if_lt(r, x, fa__set1((FA__T)FA__EXP_LO));
}

FA__PUB FA__T FA__N(fa_exp2)(FA__T x)
{
    return fa__lane0(FA__N(fa__exp2v)(fa__set1(x)));
}

/* ---- QK^T: St = K Qt, microtile FA__QK_NK keys x FA__QK_NQ vectors ------ */
FA__AI void FA__N(fa__qk_micro)(const FA__T *K, ptrdiff_t ks, ptrdiff_t D,
                                const FA__T *Qt, FA__T *St,
                                const int NK, const int NQ, const int ACC)
{
    FA__V acc[8][4];
    const FA__T *kr[8];
    int a, b;
    FA__UNROLL for (a = 0; a < NK; a++) {
        kr[a] = K + a * ks;
        FA__UNROLL for (b = 0; b < NQ; b++)
            acc[a][b] = ACC ? fa__ld(St + a * FA_BR + b * FA__VW) : fa__zero();
    }
    for (ptrdiff_t d = 0; d < D; d++) {
        const FA__T *q = Qt + d * FA_BR;
        FA__V qv[4];
        FA__UNROLL for (b = 0; b < NQ; b++) qv[b] = fa__ld(q + b * FA__VW);
        FA__UNROLL for (a = 0; a < NK; a++) {
            FA__V kv = fa__set1(kr[a][d]);
            FA__UNROLL for (b = 0; b < NQ; b++) acc[a][b] = fa__fma(kv, qv[b], acc[a][b]);
        }
    }
    FA__UNROLL for (a = 0; a < NK; a++)
        FA__UNROLL for (b = 0; b < NQ; b++) fa__st(St + a * FA_BR + b * FA__VW, acc[a][b]);
}

/* all lane groups for NK keys starting at K / St */
FA__AI void FA__N(fa__qk_keys)(const FA__T *K, ptrdiff_t ks, ptrdiff_t D,
                               const FA__T *Qt, FA__T *St, const int NK, const int ACC)
{
    for (int g = 0; g < FA_BR; g += FA__QK_NQ * FA__VW)
        FA__N(fa__qk_micro)(K, ks, D, Qt + g, St + g, NK, FA__QK_NQ, ACC);
}

/* St = K Qt (ACC = 0) or St += K Qt (ACC = 1), all nk rows of K */
FA__AI void FA__N(fa__qk_all)(const FA__T *K, ptrdiff_t ks, int nk, int D,
                              const FA__T *Qt, FA__T *St, const int ACC)
{
    int j = 0;
    for (; j + FA__QK_NK <= nk; j += FA__QK_NK)
        FA__N(fa__qk_keys)(K + j * ks, ks, D, Qt, St + (ptrdiff_t)j * FA_BR, FA__QK_NK, ACC);
    const FA__T *Kr = K + j * ks;
    FA__T *Sr = St + (ptrdiff_t)j * FA_BR;
    switch (nk - j) {   /* remainder: 0 .. FA__QK_NK-1 keys */
#define FA__QK_CASE(c) case c: if (c < FA__QK_NK) FA__N(fa__qk_keys)(Kr, ks, D, Qt, Sr, c, ACC); break;
    FA__QK_CASE(1) FA__QK_CASE(2) FA__QK_CASE(3) FA__QK_CASE(4)
    FA__QK_CASE(5) FA__QK_CASE(6) FA__QK_CASE(7)
#undef FA__QK_CASE
    default: break;
    }
}

FA__PUB void FA__N(fa_qk)(const FA__T *K, ptrdiff_t ks, int nk, int D,
                          const FA__T *Qt, FA__T *St)
{
    FA__N(fa__qk_all)(K, ks, nk, D, Qt, St, 0);
}

/* The same tile as a GEMM step for linear layers (Y = X W^T): rows of W play
 * the keys, a packed block of X^T (Qt) the query lanes, and a K dimension
 * longer than one cache block is summed in slices (accumulate != 0 adds the
 * slice to St instead of overwriting it). */
FA__PUB void FA__N(fa_gemm_nt)(const FA__T *W, ptrdiff_t ws, int nn, int kc,
                               const FA__T *Xt, FA__T *Yt, int accumulate)
{
    if (accumulate) FA__N(fa__qk_all)(W, ws, nn, kc, Xt, Yt, 1);
    else FA__N(fa__qk_all)(W, ws, nn, kc, Xt, Yt, 0);
}

/* ---- PV: Ot += V^T Pt, microtile FA__PV_ND rows x FA__PV_NQ vectors ----
 * SC = 1 first multiplies Ot by alpha (per lane) as it is loaded into the
 * accumulators: fa_rescale fused in, the same operations in the same order. */
FA__AI void FA__N(fa__pv_micro)(const FA__T *V, ptrdiff_t vs, int nk,
                                const FA__T *Pt, FA__T *Ot, const FA__T *alpha,
                                const int ND, const int NQ, const int SC)
{
    FA__V acc[8][4];
    int a, b;
    FA__UNROLL for (a = 0; a < ND; a++)
        FA__UNROLL for (b = 0; b < NQ; b++) {
            acc[a][b] = fa__ld(Ot + a * FA_BR + b * FA__VW);
            if (SC) acc[a][b] = fa__mul(acc[a][b], fa__ld(alpha + b * FA__VW));
        }
    for (ptrdiff_t j = 0; j < nk; j++) {
        const FA__T *p = Pt + j * FA_BR;
        const FA__T *v = V + j * vs;
        FA__V pv[4];
        FA__UNROLL for (b = 0; b < NQ; b++) pv[b] = fa__ld(p + b * FA__VW);
        FA__UNROLL for (a = 0; a < ND; a++) {
            FA__V vv = fa__set1(v[a]);
            FA__UNROLL for (b = 0; b < NQ; b++) acc[a][b] = fa__fma(vv, pv[b], acc[a][b]);
        }
    }
    FA__UNROLL for (a = 0; a < ND; a++)
        FA__UNROLL for (b = 0; b < NQ; b++) fa__st(Ot + a * FA_BR + b * FA__VW, acc[a][b]);
}

FA__AI void FA__N(fa__pv_rows)(const FA__T *V, ptrdiff_t vs, int nk,
                               const FA__T *Pt, FA__T *Ot, const FA__T *alpha,
                               const int ND, const int SC)
{
    for (int g = 0; g < FA_BR; g += FA__PV_NQ * FA__VW)
        FA__N(fa__pv_micro)(V, vs, nk, Pt + g, Ot + g, SC ? alpha + g : alpha,
                            ND, FA__PV_NQ, SC);
}

FA__AI void FA__N(fa__pv_all)(const FA__T *V, ptrdiff_t vs, int nk, int Dv,
                              const FA__T *Pt, FA__T *Ot, const FA__T *alpha,
                              const int SC)
{
    int d = 0;
    for (; d + FA__PV_ND <= Dv; d += FA__PV_ND)
        FA__N(fa__pv_rows)(V + d, vs, nk, Pt, Ot + (ptrdiff_t)d * FA_BR, alpha,
                           FA__PV_ND, SC);
    const FA__T *Vr = V + d;
    FA__T *Or = Ot + (ptrdiff_t)d * FA_BR;
    switch (Dv - d) {   /* remainder: 0 .. FA__PV_ND-1 rows */
#define FA__PV_CASE(c) case c: if (c < FA__PV_ND) FA__N(fa__pv_rows)(Vr, vs, nk, Pt, Or, alpha, c, SC); break;
    FA__PV_CASE(1) FA__PV_CASE(2) FA__PV_CASE(3) FA__PV_CASE(4)
    FA__PV_CASE(5) FA__PV_CASE(6) FA__PV_CASE(7)
#undef FA__PV_CASE
    default: break;
    }
}

FA__PUB void FA__N(fa_pv)(const FA__T *V, ptrdiff_t vs, int nk, int Dv,
                          const FA__T *Pt, FA__T *Ot)
{
    FA__N(fa__pv_all)(V, vs, nk, Dv, Pt, Ot, (const FA__T *)0, 0);
}

/* fa_rescale(Ot, Dv, alpha) then fa_pv(...), in one pass over Ot */
FA__PUB void FA__N(fa_rescale_pv)(const FA__T *V, ptrdiff_t vs, int nk, int Dv,
                                  const FA__T *Pt, FA__T *Ot, const FA__T *alpha)
{
    FA__N(fa__pv_all)(V, vs, nk, Dv, Pt, Ot, alpha, 1);
}

/* ---- online softmax step --------------------------------------------- */
FA__PUB void FA__N(fa_softmax)(FA__T *St, int nk, FA__T *m, FA__T *l,
                               FA__T *alpha)
{
    const FA__V ninf = fa__set1(-(FA__T)INFINITY);
    for (int g = 0; g < FA_BR; g += FA__SM_NV * FA__VW) {
        FA__V mo[4], mx[4], me[4], sum[4];
        int v;
        FA__UNROLL for (v = 0; v < FA__SM_NV; v++) {
            mo[v] = fa__ld(m + g + v * FA__VW);
            mx[v] = mo[v];
        }
        for (ptrdiff_t j = 0; j < nk; j++)
            FA__UNROLL for (v = 0; v < FA__SM_NV; v++)   /* s > mx ? s : mx, as the spec */
                mx[v] = fa__max(fa__ld(St + j * FA_BR + g + v * FA__VW), mx[v]);
        FA__UNROLL for (v = 0; v < FA__SM_NV; v++) {
            /* mnew == -inf: every score is -inf (or NaN); subtracting 0
             * instead of -inf gives exp2(-inf) = 0 (and NaN for NaN). */
            me[v] = fa__zero_if_eq(mx[v], ninf);
            sum[v] = fa__zero();
        }
        for (ptrdiff_t j = 0; j < nk; j++)
            FA__UNROLL for (v = 0; v < FA__SM_NV; v++) {
                FA__T *s = St + j * FA_BR + g + v * FA__VW;
                FA__V p = FA__N(fa__exp2v)(fa__sub(fa__ld(s), me[v]));
                fa__st(s, p);
                sum[v] = fa__add(sum[v], p);
            }
        FA__UNROLL for (v = 0; v < FA__SM_NV; v++) {
            FA__V a = FA__N(fa__exp2v)(fa__sub(mo[v], me[v]));
            FA__V lv = fa__ld(l + g + v * FA__VW);
            fa__st(alpha + g + v * FA__VW, a);
            fa__st(l + g + v * FA__VW, fa__add(fa__mul(lv, a), sum[v]));
            fa__st(m + g + v * FA__VW, mx[v]);
        }
    }
}

/* ---- Ot *= alpha -------------------------------------------------------- */
FA__PUB void FA__N(fa_rescale)(FA__T *Ot, int Dv, const FA__T *alpha)
{
    for (int g = 0; g < FA_BR; g += FA__SM_NV * FA__VW) {
        FA__V a[4];
        int v;
        FA__UNROLL for (v = 0; v < FA__SM_NV; v++) a[v] = fa__ld(alpha + g + v * FA__VW);
        for (ptrdiff_t d = 0; d < Dv; d++)
            FA__UNROLL for (v = 0; v < FA__SM_NV; v++) {
                FA__T *o = Ot + d * FA_BR + g + v * FA__VW;
                fa__st(o, fa__mul(fa__ld(o), a[v]));
            }
    }
}

/* ---- row layout (decode) ------------------------------------------------ */

/* RC query rows x KB keys, vectorised over d with one vector accumulator per
 * (row, key); lanes reduced in a fixed tree order, then the d tail added in
 * increasing d.  Each K vector is loaded once for the RC rows. */
FA__AI void FA__N(fa__dotr_micro)(const FA__T *Q, ptrdiff_t D, const FA__T *K,
                                  ptrdiff_t ks, FA__T *s, ptrdiff_t lds,
                                  const int RC, const int KB, ptrdiff_t pfo)
{
    FA__V acc[4][8];
    int r, b;
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (b = 0; b < KB; b++) acc[r][b] = fa__zero();
    const ptrdiff_t Dvec = D - D % FA__VW;
    for (ptrdiff_t d = 0; d < Dvec; d += FA__VW) {
        FA__V kv[8];
        FA__UNROLL for (b = 0; b < KB; b++) kv[b] = fa__ldu(K + b * ks + d);
        FA__UNROLL for (b = 0; b < KB; b++) FA__PREFETCH(K + b * ks + pfo + d);
        FA__UNROLL for (r = 0; r < RC; r++) {
            FA__V qv = fa__ldu(Q + r * D + d);
            FA__UNROLL for (b = 0; b < KB; b++) acc[r][b] = fa__fma(qv, kv[b], acc[r][b]);
        }
    }
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (b = 0; b < KB; b++) {
            FA__T t = FA__N(fa__hsum)(acc[r][b]);
            for (ptrdiff_t dd = Dvec; dd < D; dd++) t += Q[r * D + dd] * K[b * ks + dd];
            s[r * lds + b] = t;
        }
}

/* RC rows against keys [j0, j1) of nk, KB keys at a time, then 4/2/1 for the
 * rest; K rows FA__PF_KEYS keys ahead are prefetched (while they exist). */
FA__AI void FA__N(fa__dotr_rows)(const FA__T *Q, ptrdiff_t D, const FA__T *K,
                                 ptrdiff_t ks, int j0, int j1, int nk, FA__T *s,
                                 ptrdiff_t lds, const int RC, const int KB)
{
    int j = j0;
#define FA__PFO(kb) (j + (kb) + FA__PF_KEYS <= nk ? FA__PF_KEYS * ks : 0)
    for (; j + KB <= j1; j += KB)
        FA__N(fa__dotr_micro)(Q, D, K + j * ks, ks, s + j, lds, RC, KB, FA__PFO(KB));
    if (KB > 4 && j + 4 <= j1) {
        FA__N(fa__dotr_micro)(Q, D, K + j * ks, ks, s + j, lds, RC, 4, FA__PFO(4));
        j += 4;
    }
    if (KB > 2 && j + 2 <= j1) {
        FA__N(fa__dotr_micro)(Q, D, K + j * ks, ks, s + j, lds, RC, 2, FA__PFO(2));
        j += 2;
    }
    for (; j < j1; j++)
        FA__N(fa__dotr_micro)(Q, D, K + j * ks, ks, s + j, lds, RC, 1, FA__PFO(1));
#undef FA__PFO
}

FA__PUB void FA__N(fa_dot_rows)(const FA__T *Q, int R, const FA__T *K,
                                ptrdiff_t ks, int nk, int D, FA__T *s, int lds)
{
    /* key blocks of FA__ROWS_JB keys stay in L1 while all row chunks use them */
    for (int j = 0; j < nk; j += FA__ROWS_JB) {
        int j1 = nk - j < FA__ROWS_JB ? nk : j + FA__ROWS_JB;
        int r = 0;
        for (; r + 4 <= R; r += 4)
            FA__N(fa__dotr_rows)(Q + (ptrdiff_t)r * D, D, K, ks, j, j1, nk, s + (ptrdiff_t)r * lds, lds, 4, 2);
        if (r + 2 <= R) {
            FA__N(fa__dotr_rows)(Q + (ptrdiff_t)r * D, D, K, ks, j, j1, nk, s + (ptrdiff_t)r * lds, lds, 2, 4);
            r += 2;
        }
        if (r < R)
            FA__N(fa__dotr_rows)(Q + (ptrdiff_t)r * D, D, K, ks, j, j1, nk, s + (ptrdiff_t)r * lds, lds, 1, 8);
    }
}

/* RC rows x CW vectors of O, accumulated over nk keys in increasing order;
 * the same columns of the rows pfo elements further are prefetched */
FA__AI void FA__N(fa__axpy_micro)(const FA__T *P, ptrdiff_t ldp, const FA__T *V,
                                  ptrdiff_t vs, int nk, FA__T *O, ptrdiff_t Dv,
                                  const int RC, const int CW, ptrdiff_t pfo)
{
    FA__V acc[4][8];
    int r, c;
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (c = 0; c < CW; c++) acc[r][c] = fa__ldu(O + r * Dv + c * FA__VW);
    for (ptrdiff_t j = 0; j < nk; j++) {
        FA__V vv[8];
        FA__UNROLL for (c = 0; c < CW; c++) vv[c] = fa__ldu(V + j * vs + c * FA__VW);
        FA__UNROLL for (c = 0; c < CW; c += 64 / (int)sizeof(FA__T) / FA__VW + (64 / (int)sizeof(FA__T) < FA__VW))
            FA__PREFETCH(V + j * vs + pfo + c * FA__VW);
        FA__UNROLL for (r = 0; r < RC; r++) {
            FA__V pv = fa__set1(P[r * ldp + j]);
            FA__UNROLL for (c = 0; c < CW; c++) acc[r][c] = fa__fma(pv, vv[c], acc[r][c]);
        }
    }
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (c = 0; c < CW; c++) fa__stu(O + r * Dv + c * FA__VW, acc[r][c]);
}

FA__AI void FA__N(fa__axpy_rowsc)(const FA__T *P, ptrdiff_t ldp, const FA__T *V,
                                  ptrdiff_t vs, int nk, FA__T *O, ptrdiff_t Dv,
                                  const int RC, const int CW, ptrdiff_t pfo)
{
    const ptrdiff_t dblk = Dv - Dv % (CW * FA__VW), dvec = Dv - Dv % FA__VW;
    ptrdiff_t d;
    for (d = 0; d < dblk; d += CW * FA__VW)
        FA__N(fa__axpy_micro)(P, ldp, V + d, vs, nk, O + d, Dv, RC, CW, pfo);
    for (d = dblk; d < dvec; d += FA__VW)
        FA__N(fa__axpy_micro)(P, ldp, V + d, vs, nk, O + d, Dv, RC, 1, pfo);
    for (d = dvec; d < Dv; d++)
        FA__UNROLL for (int r = 0; r < RC; r++) {
            FA__T o = O[r * Dv + d];
            for (ptrdiff_t j = 0; j < nk; j++) o += P[r * ldp + j] * V[j * vs + d];
            O[r * Dv + d] = o;
        }
}

FA__PUB void FA__N(fa_axpy_rows)(const FA__T *P, int R, int ldp,
                                 const FA__T *V, ptrdiff_t vs, int nk,
                                 int Dv, FA__T *O)
{
    for (int j = 0; j < nk; j += FA__ROWS_JB) {
        int jb = nk - j < FA__ROWS_JB ? nk - j : FA__ROWS_JB;
        const FA__T *Vj = V + j * vs;
        /* prefetch the next block's rows while this one is being used */
        ptrdiff_t pfo = (j + jb + FA__ROWS_JB <= nk) ? FA__ROWS_JB * vs : 0;
        int r = 0;
        for (; r + 4 <= R; r += 4)
            FA__N(fa__axpy_rowsc)(P + (ptrdiff_t)r * ldp + j, ldp, Vj, vs, jb, O + (ptrdiff_t)r * Dv, Dv, 4, 2, pfo);
        if (r + 2 <= R) {
            FA__N(fa__axpy_rowsc)(P + (ptrdiff_t)r * ldp + j, ldp, Vj, vs, jb, O + (ptrdiff_t)r * Dv, Dv, 2, 4, pfo);
            r += 2;
        }
        if (r < R)
            FA__N(fa__axpy_rowsc)(P + (ptrdiff_t)r * ldp + j, ldp, Vj, vs, jb, O + (ptrdiff_t)r * Dv, Dv, 1, 8, pfo);
    }
}

FA__PUB FA__T FA__N(fa_exp2_sub_sum)(FA__T *x, int n, FA__T mx)
{
    int j = 0;
    FA__T sum = 0;
    if (mx == -(FA__T)INFINITY) {   /* zeros (NaN inputs stay NaN) */
        for (; j < n; j++) {
            FA__T p = (x[j] != x[j]) ? x[j] : (FA__T)0;
            x[j] = p;
            sum += p;
        }
        return sum;
    }
    const FA__V mv = fa__set1(mx);
    FA__V s0 = fa__zero(), s1 = fa__zero();
    for (; j + 2 * FA__VW <= n; j += 2 * FA__VW) {
        FA__V p0 = FA__N(fa__exp2v)(fa__sub(fa__ldu(x + j), mv));
        FA__V p1 = FA__N(fa__exp2v)(fa__sub(fa__ldu(x + j + FA__VW), mv));
        fa__stu(x + j, p0);
        fa__stu(x + j + FA__VW, p1);
        s0 = fa__add(s0, p0);
        s1 = fa__add(s1, p1);
    }
    for (; j + FA__VW <= n; j += FA__VW) {
        FA__V p0 = FA__N(fa__exp2v)(fa__sub(fa__ldu(x + j), mv));
        fa__stu(x + j, p0);
        s0 = fa__add(s0, p0);
    }
    sum = FA__N(fa__hsum)(fa__add(s0, s1));
    for (; j < n; j++) {
        FA__T p = FA__N(fa_exp2)(x[j] - mx);
        x[j] = p;
        sum += p;
    }
    return sum;
}

FA__PUB FA__T FA__N(fa_max)(const FA__T *x, int n)
{
    FA__T mx = -(FA__T)INFINITY;
    int j = 0;
    if (n >= 2 * FA__VW) {
        FA__V m0 = fa__set1(mx), m1 = m0;
        for (; j + 2 * FA__VW <= n; j += 2 * FA__VW) {
            m0 = fa__max(fa__ldu(x + j), m0);
            m1 = fa__max(fa__ldu(x + j + FA__VW), m1);
        }
        mx = FA__N(fa__hmax)(fa__max(m1, m0));
    }
    for (; j < n; j++) mx = (x[j] > mx) ? x[j] : mx;
    return mx;
}

#else /* !FA__TEMPLATE_PASS */
/* ======================================================================= */
#ifndef FASTATTN_FA_TILES_H
#define FASTATTN_FA_TILES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#define FA_BR 64   /* query rows per tile = lanes */
#define FA_BC 64   /* keys per tile */

/* The microkernels keep arrays of accumulators in registers; that needs their
 * constant-bound loops fully unrolled, which gcc does by itself only at -O3. */
#if defined(__clang__)
#  define FA__UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__) && __GNUC__ >= 8
#  define FA__UNROLL _Pragma("GCC unroll 16")
#else
#  define FA__UNROLL
#endif

#if defined(__GNUC__)
#  define FA__AI static inline __attribute__((always_inline))
#  define FA__PUB static inline
#elif defined(_MSC_VER)
#  define FA__AI static __forceinline
#  define FA__PUB static __inline
#else
#  define FA__AI static inline
#  define FA__PUB static inline
#endif

/* ---- choose the vector layer ------------------------------------------ */
#if defined(FA_FORCE_SCALAR) || !defined(__GNUC__)
#  define FA__ISA_SCALAR 1
#  define FA_ISA_NAME "scalar"
#elif defined(FA_FORCE_GENERIC)
#  define FA__ISA_GENERIC 1
#  define FA__GVB FA_FORCE_GENERIC
#  define FA_ISA_NAME "generic"
#elif defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) \
    && defined(__AVX512VL__) && defined(__FMA__) && defined(__AVX2__)
#  define FA__ISA_AVX512 1
#  define FA_ISA_NAME "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#  define FA__ISA_AVX2 1
#  define FA_ISA_NAME "avx2"
#elif defined(__SSE2__) && (defined(__x86_64__) || defined(__i386__))
#  define FA__ISA_SSE2 1
#  define FA_ISA_NAME "sse2"
#else
#  define FA__ISA_GENERIC 1
#  define FA__GVB 16
#  define FA_ISA_NAME "generic"
#endif

/* register count decides the microtile shapes */
#if defined(FA_FORCE_NREGS)
#  define FA__NREGS FA_FORCE_NREGS
#elif defined(FA__ISA_AVX512) || defined(__aarch64__)
#  define FA__NREGS 32
#else
#  define FA__NREGS 16
#endif

#if defined(FA__ISA_AVX512) || defined(FA__ISA_AVX2) || defined(FA__ISA_SSE2)
#  include <immintrin.h>
#endif

/* Vector layer, one block per ISA.  Per element type (s = float, d = double):
 *   fa__vX           vector type, FA__VWX lanes
 *   ld/ldu/st/stu    aligned / unaligned load and store
 *   set1, zero       broadcast, zero
 *   add, sub, mul    IEEE lane-wise
 *   fma(a,b,c)       a*b + c (fused where the ISA has FMA)
 *   max(a,b)         a > b ? a : b   (x86 maxps semantics: b if NaN)
 *   min(a,b)         a < b ? a : b   (x86 minps semantics: b if NaN)
 *   zero_if_lt(r,x,c) x < c ? 0 : r  (NaN x keeps r)
 *   zero_if_eq(x,c)  x == c ? 0 : x
 *   scalbits(p,t)    bits(p) + (bits(t) << mantissa_bits), integer add
 *   lane0(v)         first lane
 */
#if defined(FA__ISA_AVX512)
typedef __m512  fa__vs;
typedef __m512d fa__vd;
#  define FA__VWS 16
#  define FA__VWD 8
FA__AI fa__vs fa__ld_s(const float *p) { return _mm512_load_ps(p); }
FA__AI fa__vs fa__ldu_s(const float *p) { return _mm512_loadu_ps(p); }
FA__AI void fa__st_s(float *p, fa__vs v) { _mm512_store_ps(p, v); }
FA__AI void fa__stu_s(float *p, fa__vs v) { _mm512_storeu_ps(p, v); }
FA__AI fa__vs fa__set1_s(float x) { return _mm512_set1_ps(x); }
FA__AI fa__vs fa__zero_s(void) { return _mm512_setzero_ps(); }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return _mm512_add_ps(a, b); }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return _mm512_sub_ps(a, b); }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return _mm512_mul_ps(a, b); }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return _mm512_fmadd_ps(a, b, c); }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return _mm512_max_ps(a, b); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return _mm512_min_ps(a, b); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c)
{ return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, c, _CMP_NLT_UQ), r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c)
{ return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, c, _CMP_NEQ_UQ), x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
{ return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p),
                                 _mm512_slli_epi32(_mm512_castps_si512(t), 23))); }
FA__AI float fa__lane0_s(fa__vs v) { return _mm512_cvtss_f32(v); }
FA__AI fa__vd fa__ld_d(const double *p) { return _mm512_load_pd(p); }
FA__AI fa__vd fa__ldu_d(const double *p) { return _mm512_loadu_pd(p); }
FA__AI void fa__st_d(double *p, fa__vd v) { _mm512_store_pd(p, v); }
FA__AI void fa__stu_d(double *p, fa__vd v) { _mm512_storeu_pd(p, v); }
FA__AI fa__vd fa__set1_d(double x) { return _mm512_set1_pd(x); }
FA__AI fa__vd fa__zero_d(void) { return _mm512_setzero_pd(); }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return _mm512_add_pd(a, b); }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return _mm512_sub_pd(a, b); }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return _mm512_mul_pd(a, b); }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return _mm512_fmadd_pd(a, b, c); }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return _mm512_max_pd(a, b); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return _mm512_min_pd(a, b); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c)
{ return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, c, _CMP_NLT_UQ), r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c)
{ return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, c, _CMP_NEQ_UQ), x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
{ return _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(p),
                                 _mm512_slli_epi64(_mm512_castpd_si512(t), 52))); }
FA__AI double fa__lane0_d(fa__vd v) { return _mm512_cvtsd_f64(v); }

#elif defined(FA__ISA_AVX2)
typedef __m256  fa__vs;
typedef __m256d fa__vd;
#  define FA__VWS 8
#  define FA__VWD 4
FA__AI fa__vs fa__ld_s(const float *p) { return _mm256_load_ps(p); }
FA__AI fa__vs fa__ldu_s(const float *p) { return _mm256_loadu_ps(p); }
FA__AI void fa__st_s(float *p, fa__vs v) { _mm256_store_ps(p, v); }
FA__AI void fa__stu_s(float *p, fa__vs v) { _mm256_storeu_ps(p, v); }
FA__AI fa__vs fa__set1_s(float x) { return _mm256_set1_ps(x); }
FA__AI fa__vs fa__zero_s(void) { return _mm256_setzero_ps(); }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return _mm256_add_ps(a, b); }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return _mm256_sub_ps(a, b); }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return _mm256_mul_ps(a, b); }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return _mm256_fmadd_ps(a, b, c); }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return _mm256_max_ps(a, b); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return _mm256_min_ps(a, b); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c)
{ return _mm256_andnot_ps(_mm256_cmp_ps(x, c, _CMP_LT_OQ), r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c)
{ return _mm256_andnot_ps(_mm256_cmp_ps(x, c, _CMP_EQ_OQ), x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
{ return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p),
                                 _mm256_slli_epi32(_mm256_castps_si256(t), 23))); }
FA__AI float fa__lane0_s(fa__vs v) { return _mm256_cvtss_f32(v); }
FA__AI fa__vd fa__ld_d(const double *p) { return _mm256_load_pd(p); }
FA__AI fa__vd fa__ldu_d(const double *p) { return _mm256_loadu_pd(p); }
FA__AI void fa__st_d(double *p, fa__vd v) { _mm256_store_pd(p, v); }
FA__AI void fa__stu_d(double *p, fa__vd v) { _mm256_storeu_pd(p, v); }
FA__AI fa__vd fa__set1_d(double x) { return _mm256_set1_pd(x); }
FA__AI fa__vd fa__zero_d(void) { return _mm256_setzero_pd(); }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return _mm256_add_pd(a, b); }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return _mm256_sub_pd(a, b); }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return _mm256_mul_pd(a, b); }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return _mm256_fmadd_pd(a, b, c); }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return _mm256_max_pd(a, b); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return _mm256_min_pd(a, b); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c)
{ return _mm256_andnot_pd(_mm256_cmp_pd(x, c, _CMP_LT_OQ), r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c)
{ return _mm256_andnot_pd(_mm256_cmp_pd(x, c, _CMP_EQ_OQ), x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
{ return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p),
                                 _mm256_slli_epi64(_mm256_castpd_si256(t), 52))); }
FA__AI double fa__lane0_d(fa__vd v) { return _mm256_cvtsd_f64(v); }

#elif defined(FA__ISA_SSE2)
typedef __m128  fa__vs;
typedef __m128d fa__vd;
#  define FA__VWS 4
#  define FA__VWD 2
FA__AI fa__vs fa__ld_s(const float *p) { return _mm_load_ps(p); }
FA__AI fa__vs fa__ldu_s(const float *p) { return _mm_loadu_ps(p); }
FA__AI void fa__st_s(float *p, fa__vs v) { _mm_store_ps(p, v); }
FA__AI void fa__stu_s(float *p, fa__vs v) { _mm_storeu_ps(p, v); }
FA__AI fa__vs fa__set1_s(float x) { return _mm_set1_ps(x); }
FA__AI fa__vs fa__zero_s(void) { return _mm_setzero_ps(); }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return _mm_add_ps(a, b); }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return _mm_sub_ps(a, b); }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return _mm_mul_ps(a, b); }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return _mm_max_ps(a, b); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return _mm_min_ps(a, b); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c)
{ return _mm_andnot_ps(_mm_cmplt_ps(x, c), r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c)
{ return _mm_andnot_ps(_mm_cmpeq_ps(x, c), x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
{ return _mm_castsi128_ps(_mm_add_epi32(_mm_castps_si128(p),
                              _mm_slli_epi32(_mm_castps_si128(t), 23))); }
FA__AI float fa__lane0_s(fa__vs v) { return _mm_cvtss_f32(v); }
FA__AI fa__vd fa__ld_d(const double *p) { return _mm_load_pd(p); }
FA__AI fa__vd fa__ldu_d(const double *p) { return _mm_loadu_pd(p); }
FA__AI void fa__st_d(double *p, fa__vd v) { _mm_store_pd(p, v); }
FA__AI void fa__stu_d(double *p, fa__vd v) { _mm_storeu_pd(p, v); }
FA__AI fa__vd fa__set1_d(double x) { return _mm_set1_pd(x); }
FA__AI fa__vd fa__zero_d(void) { return _mm_setzero_pd(); }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return _mm_add_pd(a, b); }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return _mm_sub_pd(a, b); }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return _mm_mul_pd(a, b); }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return _mm_add_pd(_mm_mul_pd(a, b), c); }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return _mm_max_pd(a, b); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return _mm_min_pd(a, b); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c)
{ return _mm_andnot_pd(_mm_cmplt_pd(x, c), r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c)
{ return _mm_andnot_pd(_mm_cmpeq_pd(x, c), x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
{ return _mm_castsi128_pd(_mm_add_epi64(_mm_castpd_si128(p),
                              _mm_slli_epi64(_mm_castpd_si128(t), 52))); }
FA__AI double fa__lane0_d(fa__vd v) { return _mm_cvtsd_f64(v); }

#elif defined(FA__ISA_GENERIC)
/* GNU C vector extensions (gcc, clang): NEON on aarch64, anything else
 * elsewhere; the compiler lowers them to whatever the target has. */
#  define FA__VWS (FA__GVB / 4)
#  define FA__VWD (FA__GVB / 8)
typedef float    fa__vs  __attribute__((vector_size(FA__GVB)));
typedef float    fa__vsa __attribute__((vector_size(FA__GVB), may_alias));
typedef float    fa__vsu __attribute__((vector_size(FA__GVB), may_alias, aligned(4)));
typedef uint32_t fa__vsi __attribute__((vector_size(FA__GVB)));
typedef double   fa__vd  __attribute__((vector_size(FA__GVB)));
typedef double   fa__vda __attribute__((vector_size(FA__GVB), may_alias));
typedef double   fa__vdu __attribute__((vector_size(FA__GVB), may_alias, aligned(8)));
typedef uint64_t fa__vdi __attribute__((vector_size(FA__GVB)));
FA__AI fa__vs fa__ld_s(const float *p) { return *(const fa__vsa *)p; }
FA__AI fa__vs fa__ldu_s(const float *p) { return *(const fa__vsu *)p; }
FA__AI void fa__st_s(float *p, fa__vs v) { *(fa__vsa *)p = v; }
FA__AI void fa__stu_s(float *p, fa__vs v) { *(fa__vsu *)p = v; }
FA__AI fa__vs fa__set1_s(float x) { return x - (fa__vs){0}; }
FA__AI fa__vs fa__zero_s(void) { return (fa__vs){0}; }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return a + b; }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return a - b; }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return a * b; }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return a * b + c; }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b)
{ fa__vsi m = (fa__vsi)(a > b); return (fa__vs)((m & (fa__vsi)a) | (~m & (fa__vsi)b)); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b)
{ fa__vsi m = (fa__vsi)(a < b); return (fa__vs)((m & (fa__vsi)a) | (~m & (fa__vsi)b)); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c)
{ return (fa__vs)(~(fa__vsi)(x < c) & (fa__vsi)r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c)
{ return (fa__vs)(~(fa__vsi)(x == c) & (fa__vsi)x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
{ return (fa__vs)((fa__vsi)p + ((fa__vsi)t << 23)); }
FA__AI float fa__lane0_s(fa__vs v) { return v[0]; }
FA__AI fa__vd fa__ld_d(const double *p) { return *(const fa__vda *)p; }
FA__AI fa__vd fa__ldu_d(const double *p) { return *(const fa__vdu *)p; }
FA__AI void fa__st_d(double *p, fa__vd v) { *(fa__vda *)p = v; }
FA__AI void fa__stu_d(double *p, fa__vd v) { *(fa__vdu *)p = v; }
FA__AI fa__vd fa__set1_d(double x) { return x - (fa__vd){0}; }
FA__AI fa__vd fa__zero_d(void) { return (fa__vd){0}; }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return a + b; }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return a - b; }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return a * b; }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return a * b + c; }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b)
{ fa__vdi m = (fa__vdi)(a > b); return (fa__vd)((m & (fa__vdi)a) | (~m & (fa__vdi)b)); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b)
{ fa__vdi m = (fa__vdi)(a < b); return (fa__vd)((m & (fa__vdi)a) | (~m & (fa__vdi)b)); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c)
{ return (fa__vd)(~(fa__vdi)(x < c) & (fa__vdi)r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c)
{ return (fa__vd)(~(fa__vdi)(x == c) & (fa__vdi)x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
{ return (fa__vd)((fa__vdi)p + ((fa__vdi)t << 52)); }
FA__AI double fa__lane0_d(fa__vd v) { return v[0]; }

#else /* FA__ISA_SCALAR: plain C, one lane */
typedef float  fa__vs;
typedef double fa__vd;
#  define FA__VWS 1
#  define FA__VWD 1
FA__AI fa__vs fa__ld_s(const float *p) { return *p; }
FA__AI fa__vs fa__ldu_s(const float *p) { return *p; }
FA__AI void fa__st_s(float *p, fa__vs v) { *p = v; }
FA__AI void fa__stu_s(float *p, fa__vs v) { *p = v; }
FA__AI fa__vs fa__set1_s(float x) { return x; }
FA__AI fa__vs fa__zero_s(void) { return 0.0f; }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return a + b; }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return a - b; }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return a * b; }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return a * b + c; }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return a > b ? a : b; }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return a < b ? a : b; }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c) { return x < c ? 0.0f : r; }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c) { return x == c ? 0.0f : x; }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
{
    uint32_t pb, tb;
    memcpy(&pb, &p, 4); memcpy(&tb, &t, 4);
    pb += tb << 23;
    memcpy(&p, &pb, 4);
    return p;
}
FA__AI float fa__lane0_s(fa__vs v) { return v; }
FA__AI fa__vd fa__ld_d(const double *p) { return *p; }
FA__AI fa__vd fa__ldu_d(const double *p) { return *p; }
FA__AI void fa__st_d(double *p, fa__vd v) { *p = v; }
FA__AI void fa__stu_d(double *p, fa__vd v) { *p = v; }
FA__AI fa__vd fa__set1_d(double x) { return x; }
FA__AI fa__vd fa__zero_d(void) { return 0.0; }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return a + b; }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return a - b; }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return a * b; }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return a * b + c; }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return a > b ? a : b; }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return a < b ? a : b; }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c) { return x < c ? 0.0 : r; }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c) { return x == c ? 0.0 : x; }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
{
    uint64_t pb, tb;
    memcpy(&pb, &p, 8); memcpy(&tb, &t, 8);
    pb += tb << 52;
    memcpy(&p, &pb, 8);
    return p;
}
FA__AI double fa__lane0_d(fa__vd v) { return v; }
#endif

/* Lane reductions in a fixed (tree) order, shared by every ISA. */
FA__AI float fa__hsum_f32(fa__vs v)
{
#if FA__VWS == 1
    return v;
#else
    float a[FA__VWS] __attribute__((aligned(64)));
    fa__st_s(a, v);
    for (int w = FA__VWS / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) a[i] += a[i + w];
    return a[0];
#endif
}
FA__AI double fa__hsum_f64(fa__vd v)
{
#if FA__VWD == 1
    return v;
#else
    double a[FA__VWD] __attribute__((aligned(64)));
    fa__st_d(a, v);
    for (int w = FA__VWD / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) a[i] += a[i + w];
    return a[0];
#endif
}
FA__AI float fa__hmax_f32(fa__vs v)
{
#if FA__VWS == 1
    return v;
#else
    float a[FA__VWS] __attribute__((aligned(64)));
    fa__st_s(a, v);
    float mx = a[0];
    for (int i = 1; i < FA__VWS; i++) mx = a[i] > mx ? a[i] : mx;
    return mx;
#endif
}
FA__AI double fa__hmax_f64(fa__vd v)
{
#if FA__VWD == 1
    return v;
#else
    double a[FA__VWD] __attribute__((aligned(64)));
    fa__st_d(a, v);
    double mx = a[0];
    for (int i = 1; i < FA__VWD; i++) mx = a[i] > mx ? a[i] : mx;
    return mx;
#endif
}

/* Microtile shapes (in vectors of FA__VW lanes; accumulators <= 16).
 * QK: FA__QK_NK keys x FA__QK_NQ query vectors; PV: FA__PV_ND output rows x
 * FA__PV_NQ query vectors; softmax/rescale: FA__SM_NV vectors per pass. */
#if defined(FA__QK_NK_S)
   /* shapes given by the includer (tuning experiments) */
#elif defined(FA__ISA_SCALAR)
#  define FA__QK_NK_S 4
#  define FA__QK_NQ_S 4
#  define FA__PV_ND_S 4
#  define FA__PV_NQ_S 4
#elif FA__NREGS >= 32
#  define FA__QK_NK_S 8
#  define FA__QK_NQ_S 2
#  define FA__PV_ND_S 4
#  define FA__PV_NQ_S 4
#elif defined(FA__ISA_SSE2)
#  define FA__QK_NK_S 4
#  define FA__QK_NQ_S 2
#  define FA__PV_ND_S 4
#  define FA__PV_NQ_S 2
#else
#  define FA__QK_NK_S 6
#  define FA__QK_NQ_S 2
#  define FA__PV_ND_S 6
#  define FA__PV_NQ_S 2
#endif
#ifndef FA__PF_KEYS
#  define FA__PF_KEYS 32   /* row-layout dot products prefetch K this many keys ahead */
#endif
#if defined(__GNUC__)
#  define FA__PREFETCH(p) __builtin_prefetch((const void *)(p), 0, FA__PF_LOC)
#else
#  define FA__PREFETCH(p) ((void)0)
#endif
#ifndef FA__PF_LOC
#  define FA__PF_LOC 3
#endif
#ifndef FA__ROWS_JB
#  define FA__ROWS_JB 32   /* keys per block in the row-layout functions */
#endif

/* ---- instantiate the kernels for float and double ---------------------- */
#define FA__CAT2(a, b) a##b
#define FA__CAT(a, b) FA__CAT2(a, b)
#define FA__N(name) FA__CAT(name, FA__SUF)
#define FA__TEMPLATE_PASS 1

#define FA__T float
#define FA__V fa__vs
#define FA__VW FA__VWS
#define FA__SUF _f32
#define FA__F64 0
#define FA__EXP_HI 128.0f
#define FA__EXP_LO (-126.0f)
#define FA__EXP_MAGIC 12582912.0f          /* 1.5 * 2^23 */
#define FA__QK_NK FA__QK_NK_S
#define FA__QK_NQ FA__QK_NQ_S
#define FA__PV_ND FA__PV_ND_S
#define FA__PV_NQ FA__PV_NQ_S
#define FA__SM_NV (FA__VWS >= 16 ? 1 : FA__VWS >= 4 ? 16 / FA__VWS : 4)
#define fa__ld fa__ld_s
#define fa__ldu fa__ldu_s
#define fa__st fa__st_s
#define fa__stu fa__stu_s
#define fa__set1 fa__set1_s
#define fa__zero fa__zero_s
#define fa__add fa__add_s
#define fa__sub fa__sub_s
#define fa__mul fa__mul_s
#define fa__fma fa__fma_s
#define fa__max fa__max_s
#define fa__min fa__min_s
#define fa__zero_if_lt fa__zero_if_lt_s
#define fa__zero_if_eq fa__zero_if_eq_s
#define fa__scalbits fa__scalbits_s
#define fa__lane0 fa__lane0_s
#include "fa_tiles.h"
#undef FA__T
#undef FA__V
#undef FA__VW
#undef FA__SUF
#undef FA__F64
#undef FA__EXP_HI
#undef FA__EXP_LO
#undef FA__EXP_MAGIC
#undef FA__QK_NK
#undef FA__QK_NQ
#undef FA__PV_ND
#undef FA__PV_NQ
#undef FA__SM_NV
#undef fa__ld
#undef fa__ldu
#undef fa__st
#undef fa__stu
#undef fa__set1
#undef fa__zero
#undef fa__add
#undef fa__sub
#undef fa__mul
#undef fa__fma
#undef fa__max
#undef fa__min
#undef fa__zero_if_lt
#undef fa__zero_if_eq
#undef fa__scalbits
#undef fa__lane0

#define FA__T double
#define FA__V fa__vd
#define FA__VW FA__VWD
#define FA__SUF _f64
#define FA__F64 1
#define FA__EXP_HI 1024.0
#define FA__EXP_LO (-1022.0)
#define FA__EXP_MAGIC 6755399441055744.0   /* 1.5 * 2^52 */
#define FA__QK_NK FA__QK_NK_S
#define FA__QK_NQ FA__QK_NQ_S
#define FA__PV_ND FA__PV_ND_S
#define FA__PV_NQ FA__PV_NQ_S
#define FA__SM_NV (FA__VWD >= 16 ? 1 : FA__VWD >= 4 ? 16 / FA__VWD : 4)
#define fa__ld fa__ld_d
#define fa__ldu fa__ldu_d
#define fa__st fa__st_d
#define fa__stu fa__stu_d
#define fa__set1 fa__set1_d
#define fa__zero fa__zero_d
#define fa__add fa__add_d
#define fa__sub fa__sub_d
#define fa__mul fa__mul_d
#define fa__fma fa__fma_d
#define fa__max fa__max_d
#define fa__min fa__min_d
#define fa__zero_if_lt fa__zero_if_lt_d
#define fa__zero_if_eq fa__zero_if_eq_d
#define fa__scalbits fa__scalbits_d
#define fa__lane0 fa__lane0_d
#include "fa_tiles.h"
#undef FA__T
#undef FA__V
#undef FA__VW
#undef FA__SUF
#undef FA__F64
#undef FA__EXP_HI
#undef FA__EXP_LO
#undef FA__EXP_MAGIC
#undef FA__QK_NK
#undef FA__QK_NQ
#undef FA__PV_ND
#undef FA__PV_NQ
#undef FA__SM_NV
#undef fa__ld
#undef fa__ldu
#undef fa__st
#undef fa__stu
#undef fa__set1
#undef fa__zero
#undef fa__add
#undef fa__sub
#undef fa__mul
#undef fa__fma
#undef fa__max
#undef fa__min
#undef fa__zero_if_lt
#undef fa__zero_if_eq
#undef fa__scalbits
#undef fa__lane0
#undef FA__TEMPLATE_PASS

/* Name of the instruction set this translation unit was compiled for. */
static inline const char *fa_tiles_isa(void) { return FA_ISA_NAME; }

#endif /* FASTATTN_FA_TILES_H */
#endif /* FA__TEMPLATE_PASS */
