/*
 * fa_tiles.h -- tile arithmetic for fastattn's fused attention kernel and
 * tiled GEMM: the tile template, written once against the vector layer of
 * fa_simd.h and instantiated for float (_f32) and double (_f64).
 *
 * THIS FILE IS THE INTERFACE CONTRACT (signatures, layouts, semantics); the
 * plain scalar specification it implements is kept verbatim, with ref_
 * names, in tests/fa_ref.h, and tests/ checks every function against it.
 *
 * Layout ("queries in lanes", see docs/architecture.md): the kernel keeps a block of FA_BR query rows
 * transposed, so that every per-query quantity is a vector over the FA_BR
 * lanes.  All tile buffers are 64-byte aligned, leading dimension FA_BR
 * (FA_BR, FA_BC: fa_simd.h).
 *   Qt[d*FA_BR + i]  query i, feature d, pre-multiplied by scale*log2(e);
 *                    lanes i >= valid rows are zero.
 *   St[j*FA_BR + i]  score of query i against key j (log2 units), j < nk.
 *   Ot[d*FA_BR + i]  output accumulator for query i, feature d (unnormalised).
 *   m[i], l[i]       running max (log2 units) and running sum of the softmax.
 * K and V are read in place: row j of the key block starts at K + j*ks, and its
 * D features are contiguous.  Every function computes all FA_BR lanes.
 * Every function exists for float (_f32) and double (_f64) with identical
 * layouts (FA_BR lanes of double for _f64; exp2 flushes below -1022 there).
 * Packing rows into this layout and back (fa_pack_qt, fa_store_ot,
 * fa_store_yt) is fa_util.h's tile I/O.
 *
 * Functions (T = float / double, suffix _f32 / _f64; prototypes below):
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
 *   narrow lanes (few query rows in a lanes tile): fa_qk_n, fa_softmax_n,
 *   fa_rescale_pv_n are fa_qk, fa_softmax, fa_rescale_pv on the first
 *   fa_lanes_used(nq) lanes only (nq rounded up to whole lane groups of
 *   FA__SM_NV vectors, 16 lanes on the vector ISAs); the other lanes of St,
 *   Ot, m, l, alpha are neither read nor written.  Every lane's operations
 *   are the full tile's, in the same order, so a lane's bits do not depend
 *   on how many lanes run.
 *   fa_exp2     exp2(x); x < -126 (-1022 for f64) gives exactly 0, NaN stays
 *               NaN, x >= 128 (1024) gives +inf.  ~1 ulp.
 *   row layout (decode):
 *   fa_dot_rows   s[r*lds+j] = sum_d Q[r*D+d] * K[j*ks+d]
 *   fa_axpy_rows  O[r*Dv+d] += sum_{j<nk} P[r*ldp+j] * V[j*vs+d]  (j in order)
 *   fa_exp2_sub_sum  x[j] = exp2(x[j]-mx); returns the sum (fixed order)
 *   fa_max        max over x[0..n), -inf for n == 0
 *   fa_tiles_isa  the vector layer's name: avx512, avx2, sse2, generic, scalar
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
 * Implementation: the instruction set (avx512, avx2, sse2, generic, scalar;
 * see fa_simd.h) is picked by the compiler flags this file is compiled with.
 * The kernels below are written once, against fa_simd.h's vector operations
 * (fa__ld, fa__fma, ..., the per-dtype aliases of fa__ld_s / fa__ld_d, ...);
 * register blocking shapes are chosen by vector width and register count.
 * The template (the FA__TEMPLATE_PASS half of this file, at the end) is
 * instantiated twice, float then double, by including this file into itself;
 * FA__N(fa_qk) there is fa_qk_f32 / fa_qk_f64.  C99, static inline only, no
 * globals.
 */
#if !defined(FA__TEMPLATE_PASS)
/* ======================================================================= */
#ifndef FASTATTN_FA_TILES_H
#define FASTATTN_FA_TILES_H

#include "fa_simd.h"

/* ---- the public tile functions ------------------------------------------
 * Defined by the template below (FA__N(fa_qk) -> fa_qk_f32, fa_qk_f64, ...);
 * the compiler checks these prototypes against the definitions. */
FA__PUB float fa_exp2_f32(float x);
FA__PUB void fa_qk_f32(const float *K, ptrdiff_t ks, int nk, int D, const float *Qt, float *St);
FA__PUB void fa_gemm_nt_f32(const float *W, ptrdiff_t ws, int nn, int kc, const float *Xt, float *Yt,
                            int accumulate);
FA__PUB void fa_pv_f32(const float *V, ptrdiff_t vs, int nk, int Dv, const float *Pt, float *Ot);
FA__PUB void fa_rescale_pv_f32(const float *V, ptrdiff_t vs, int nk, int Dv, const float *Pt, float *Ot,
                               const float *alpha);
FA__PUB void fa_softmax_f32(float *St, int nk, float *m, float *l, float *alpha);
FA__PUB void fa_rescale_f32(float *Ot, int Dv, const float *alpha);
FA__PUB void fa_dot_rows_f32(const float *Q, int R, const float *K, ptrdiff_t ks, int nk, int D,
                             float *s, int lds);
FA__PUB void fa_axpy_rows_f32(const float *P, int R, int ldp, const float *V, ptrdiff_t vs, int nk,
                              int Dv, float *O);
FA__PUB float fa_exp2_sub_sum_f32(float *x, int n, float mx);
FA__PUB int fa_lanes_used_f32(int nq);
FA__PUB void fa_qk_n_f32(const float *K, ptrdiff_t ks, int nk, int D, const float *Qt, float *St, int nq);
FA__PUB void fa_softmax_n_f32(float *St, int nk, float *m, float *l, float *alpha, int nq);
FA__PUB void fa_rescale_pv_n_f32(const float *V, ptrdiff_t vs, int nk, int Dv, const float *Pt, float *Ot,
                                 const float *alpha, int nq);
FA__PUB float fa_max_f32(const float *x, int n);

FA__PUB double fa_exp2_f64(double x);
FA__PUB void fa_qk_f64(const double *K, ptrdiff_t ks, int nk, int D, const double *Qt, double *St);
FA__PUB void fa_gemm_nt_f64(const double *W, ptrdiff_t ws, int nn, int kc, const double *Xt, double *Yt,
                            int accumulate);
FA__PUB void fa_pv_f64(const double *V, ptrdiff_t vs, int nk, int Dv, const double *Pt, double *Ot);
FA__PUB void fa_rescale_pv_f64(const double *V, ptrdiff_t vs, int nk, int Dv, const double *Pt,
                               double *Ot, const double *alpha);
FA__PUB void fa_softmax_f64(double *St, int nk, double *m, double *l, double *alpha);
FA__PUB void fa_rescale_f64(double *Ot, int Dv, const double *alpha);
FA__PUB void fa_dot_rows_f64(const double *Q, int R, const double *K, ptrdiff_t ks, int nk, int D,
                             double *s, int lds);
FA__PUB void fa_axpy_rows_f64(const double *P, int R, int ldp, const double *V, ptrdiff_t vs, int nk,
                              int Dv, double *O);
FA__PUB double fa_exp2_sub_sum_f64(double *x, int n, double mx);
FA__PUB int fa_lanes_used_f64(int nq);
FA__PUB void fa_qk_n_f64(const double *K, ptrdiff_t ks, int nk, int D, const double *Qt, double *St, int nq);
FA__PUB void fa_softmax_n_f64(double *St, int nk, double *m, double *l, double *alpha, int nq);
FA__PUB void fa_rescale_pv_n_f64(const double *V, ptrdiff_t vs, int nk, int Dv, const double *Pt,
                                 double *Ot, const double *alpha, int nq);
FA__PUB double fa_max_f64(const double *x, int n);

static inline const char *fa_tiles_isa(void);

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
#if FA_BR % (FA__QK_NQ_S * FA__VWS) != 0 || FA_BR % (FA__PV_NQ_S * FA__VWS) != 0 || FA_BR % 16 != 0
#  error "FA_BR must be a multiple of every microtile's lane group"
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
#ifndef FA__QKN_K1
#  define FA__QKN_K1 (FA__NREGS >= 32 ? 12 : 8)   /* keys per narrow QK microtile, one vector */
#endif
#ifndef FA__AXPY_CW4
#  define FA__AXPY_CW4 (FA__NREGS >= 32 ? 4 : 2)   /* vectors of O per 4-row P.V microtile */
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

#else /* FA__TEMPLATE_PASS */
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
    FA__V acc[16][4];
    const FA__T *kr[16];
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
    FA__V acc[16][4];
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

/* ---- narrow lanes: the first fa_lanes_used(nq) lanes only --------------
 * Lane groups of FA__SM_NV vectors (the softmax pass); the products run
 * their full microtiles on as many groups as fit and one narrower microtile
 * (more keys / V columns per pass) on the rest. */
FA__PUB int FA__N(fa_lanes_used)(int nq)
{
    const int u = FA__SM_NV * FA__VW;
    int n = (nq + u - 1) / u * u;
    return n < u ? u : (n > FA_BR ? FA_BR : n);
}

FA__PUB void FA__N(fa_qk_n)(const FA__T *K, ptrdiff_t ks, int nk, int D,
                            const FA__T *Qt, FA__T *St, int nq)
{
    const int nv = FA__N(fa_lanes_used)(nq) / FA__VW;
    if (nv * FA__VW == FA_BR) {
        FA__N(fa__qk_all)(K, ks, nk, D, Qt, St, 0);
        return;
    }
    int gfull = nv / FA__QK_NQ * FA__QK_NQ;   /* vectors in full groups */
    int j = 0;
    if (nv == 3 && FA__NREGS >= 32 && FA__QK_NQ == 2) {   /* 48 lanes: 5 keys x 3 vectors */
        for (; j + 5 <= nk; j += 5)
            FA__N(fa__qk_micro)(K + j * ks, ks, D, Qt, St + (ptrdiff_t)j * FA_BR, 5, 3, 0);
        for (; j < nk; j++)
            FA__N(fa__qk_micro)(K + j * ks, ks, D, Qt, St + (ptrdiff_t)j * FA_BR, 1, 3, 0);
        return;
    }
    for (; j + FA__QK_NK <= nk; j += FA__QK_NK) {
        for (int v = 0; v < gfull; v += FA__QK_NQ)
            FA__N(fa__qk_micro)(K + j * ks, ks, D, Qt + v * FA__VW,
                                St + (ptrdiff_t)j * FA_BR + v * FA__VW, FA__QK_NK, FA__QK_NQ, 0);
    }
    for (; j < nk; j++)
        for (int v = 0; v < gfull; v += FA__QK_NQ)
            FA__N(fa__qk_micro)(K + j * ks, ks, D, Qt + v * FA__VW,
                                St + (ptrdiff_t)j * FA_BR + v * FA__VW, 1, FA__QK_NQ, 0);
    if (gfull < nv) {   /* nv - gfull < FA__QK_NQ vectors left: 8 keys at a time */
        const FA__T *Qr = Qt + gfull * FA__VW;
        FA__T *Sr = St + gfull * FA__VW;
        const int rv = nv - gfull;
        j = 0;
        if (rv == 1)
            for (; j + FA__QKN_K1 <= nk; j += FA__QKN_K1)
                FA__N(fa__qk_micro)(K + j * ks, ks, D, Qr, Sr + (ptrdiff_t)j * FA_BR, FA__QKN_K1, 1, 0);
        for (; j + 8 <= nk; j += 8) {
            if (rv == 1) FA__N(fa__qk_micro)(K + j * ks, ks, D, Qr, Sr + (ptrdiff_t)j * FA_BR, 8, 1, 0);
            else if (rv == 2) FA__N(fa__qk_micro)(K + j * ks, ks, D, Qr, Sr + (ptrdiff_t)j * FA_BR, 8, 2, 0);
            else FA__N(fa__qk_micro)(K + j * ks, ks, D, Qr, Sr + (ptrdiff_t)j * FA_BR, 4, 3, 0);
        }
        for (; j < nk; j++) {
            if (rv == 1) FA__N(fa__qk_micro)(K + j * ks, ks, D, Qr, Sr + (ptrdiff_t)j * FA_BR, 1, 1, 0);
            else if (rv == 2) FA__N(fa__qk_micro)(K + j * ks, ks, D, Qr, Sr + (ptrdiff_t)j * FA_BR, 1, 2, 0);
            else FA__N(fa__qk_micro)(K + j * ks, ks, D, Qr, Sr + (ptrdiff_t)j * FA_BR, 1, 3, 0);
        }
    }
}

/* ND rows of V at a time (remainder 1..ND-1 in one pass) for NQ vectors */
FA__AI void FA__N(fa__pv_alln)(const FA__T *V, ptrdiff_t vs, int nk, int Dv,
                               const FA__T *Pt, FA__T *Ot, const FA__T *alpha,
                               const int ND, const int NQ)
{
    int d = 0;
    for (; d + ND <= Dv; d += ND)
        FA__N(fa__pv_micro)(V + d, vs, nk, Pt, Ot + (ptrdiff_t)d * FA_BR, alpha, ND, NQ, 1);
    const FA__T *Vr = V + d;
    FA__T *Or = Ot + (ptrdiff_t)d * FA_BR;
    switch (Dv - d) {
#define FA__PVN_CASE(c) case c: if (c < ND) FA__N(fa__pv_micro)(Vr, vs, nk, Pt, Or, alpha, c, NQ, 1); break;
    FA__PVN_CASE(1) FA__PVN_CASE(2) FA__PVN_CASE(3) FA__PVN_CASE(4)
    FA__PVN_CASE(5) FA__PVN_CASE(6) FA__PVN_CASE(7) FA__PVN_CASE(8)
    FA__PVN_CASE(9) FA__PVN_CASE(10) FA__PVN_CASE(11)
#undef FA__PVN_CASE
    default: break;
    }
}

FA__PUB void FA__N(fa_rescale_pv_n)(const FA__T *V, ptrdiff_t vs, int nk, int Dv,
                                    const FA__T *Pt, FA__T *Ot, const FA__T *alpha, int nq)
{
    const int nv = FA__N(fa_lanes_used)(nq) / FA__VW;
    if (nv * FA__VW == FA_BR) {
        FA__N(fa__pv_all)(V, vs, nk, Dv, Pt, Ot, alpha, 1);
        return;
    }
    int v = 0;
    for (; v + FA__PV_NQ <= nv; v += FA__PV_NQ)
        FA__N(fa__pv_alln)(V, vs, nk, Dv, Pt + v * FA__VW, Ot + v * FA__VW, alpha + v * FA__VW,
                           FA__PV_ND, FA__PV_NQ);
    switch (nv - v) {   /* 0 .. FA__PV_NQ-1 vectors left: more V rows per pass */
    case 1: FA__N(fa__pv_alln)(V, vs, nk, Dv, Pt + v * FA__VW, Ot + v * FA__VW, alpha + v * FA__VW,
                               FA__NREGS >= 32 ? 12 : 8, 1); break;
    case 2: FA__N(fa__pv_alln)(V, vs, nk, Dv, Pt + v * FA__VW, Ot + v * FA__VW, alpha + v * FA__VW,
                               FA__NREGS >= 32 ? 8 : 6, 2); break;
    case 3: FA__N(fa__pv_alln)(V, vs, nk, Dv, Pt + v * FA__VW, Ot + v * FA__VW, alpha + v * FA__VW,
                               FA__NREGS >= 32 ? 5 : 4, 3); break;
    default: break;
    }
}

/* ---- online softmax step --------------------------------------------- */
FA__AI void FA__N(fa__softmax_lanes)(FA__T *St, int nk, FA__T *m, FA__T *l,
                                     FA__T *alpha, const int nl)
{
    const FA__V ninf = fa__set1(-(FA__T)INFINITY);
    for (int g = 0; g < nl; g += FA__SM_NV * FA__VW) {
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

FA__PUB void FA__N(fa_softmax)(FA__T *St, int nk, FA__T *m, FA__T *l,
                               FA__T *alpha)
{
    FA__N(fa__softmax_lanes)(St, nk, m, l, alpha, FA_BR);
}

FA__PUB void FA__N(fa_softmax_n)(FA__T *St, int nk, FA__T *m, FA__T *l,
                                 FA__T *alpha, int nq)
{
    FA__N(fa__softmax_lanes)(St, nk, m, l, alpha, FA__N(fa_lanes_used)(nq));
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

#if !FA__F64 && defined(FA__HAS_HSUMV_S)
/* The same RC x KB dot products as fa__dotr_micro with RC * KB = VW, and the
 * same bits: the VW accumulators are reduced together by fa__hsumv (lane
 * r * KB + b = the fixed-tree sum of accumulator (r, b)), and each row's KB
 * sums are stored as one piece of the vector; the d tail is then added in
 * increasing d, as there.  At head_dim 32 the per-(row, key) reductions were
 * the rows path's cost (two FMAs per accumulator against ~8 shuffle/adds). */
FA__AI void FA__N(fa__dotr_microv)(const FA__T *Q, ptrdiff_t D, const FA__T *K,
                                   ptrdiff_t ks, FA__T *s, ptrdiff_t lds,
                                   const int RC, ptrdiff_t pfo)
{
    const int KB = FA__VW / RC;
    FA__V acc[FA__VW];
    int r, b;
    FA__UNROLL for (r = 0; r < FA__VW; r++) acc[r] = fa__zero();
    const ptrdiff_t Dvec = D - D % FA__VW;
    for (ptrdiff_t d = 0; d < Dvec; d += FA__VW) {
        FA__UNROLL for (b = 0; b < KB; b++) FA__PREFETCH(K + b * ks + pfo + d);
        FA__UNROLL for (b = 0; b < KB; b++) {
            FA__V kv = fa__ldu(K + b * ks + d);
            FA__UNROLL for (r = 0; r < RC; r++)
                acc[r * KB + b] = fa__fma(fa__ldu(Q + r * D + d), kv, acc[r * KB + b]);
        }
    }
    FA__V t = fa__hsumv_f32(acc);
    FA__T tv[FA__VW] __attribute__((aligned(64)));
    fa__st(tv, t);
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (b = 0; b < KB; b++) {
            FA__T x = tv[r * KB + b];
            for (ptrdiff_t dd = Dvec; dd < D; dd++) x += Q[r * D + dd] * K[b * ks + dd];
            s[r * lds + b] = x;
        }
}
#endif

/* RC rows against keys [j0, j1) of nk, KB keys at a time, then 4/2/1 for the
 * rest; K rows FA__PF_KEYS keys ahead are prefetched (while they exist).
 * Where fa__hsumv exists, VW / RC keys at a time first (the same bits). */
FA__AI void FA__N(fa__dotr_rows)(const FA__T *Q, ptrdiff_t D, const FA__T *K,
                                 ptrdiff_t ks, int j0, int j1, int nk, FA__T *s,
                                 ptrdiff_t lds, const int RC, const int KB)
{
    int j = j0;
#define FA__PFO(kb) (j + (kb) + FA__PF_KEYS <= nk ? FA__PF_KEYS * ks : 0)
#if !FA__F64 && defined(FA__HAS_HSUMV_S)
    if (D >= FA__VW)
        for (; j + FA__VW / RC <= j1; j += FA__VW / RC)
            FA__N(fa__dotr_microv)(Q, D, K + j * ks, ks, s + j, lds, RC, FA__PFO(FA__VW / RC));
#endif
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
    /* the remaining whole vectors in one pass (head_dim 64 with one row: 4
     * accumulator chains instead of 4 passes of one latency-bound chain;
     * every element's sum over j is the same, so are the bits) */
    d = dblk;
    switch ((int)((dvec - dblk) / FA__VW)) {
#define FA__AXPY_CASE(c) case c: if (c < CW) FA__N(fa__axpy_micro)(P, ldp, V + d, vs, nk, O + d, Dv, RC, c, pfo); break;
    FA__AXPY_CASE(1) FA__AXPY_CASE(2) FA__AXPY_CASE(3) FA__AXPY_CASE(4)
    FA__AXPY_CASE(5) FA__AXPY_CASE(6) FA__AXPY_CASE(7)
#undef FA__AXPY_CASE
    default: break;
    }
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
            FA__N(fa__axpy_rowsc)(P + (ptrdiff_t)r * ldp + j, ldp, Vj, vs, jb, O + (ptrdiff_t)r * Dv, Dv, 4, FA__AXPY_CW4, pfo);
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

#endif /* FA__TEMPLATE_PASS */
