/*
 * fa_narrow.h -- the linear layers' GEMM tile for row blocks narrower than
 * FA_BR: Y = X W^T (+ bias) (ReLU) over nr < 64 rows of X, bit-identical, per
 * element, to the 64-lane tile (fa_pack_qt + fa_gemm_nt + fa_store_yt).
 *
 * Why it is bit-identical.  In the 64-lane tile every output element is one
 * lane of one accumulator, and that lane's value is, in every build:
 *     acc = +0                              (fa_gemm_nt, accumulate = 0)
 *     for k = 0 .. K-1 (in order):          (K in LIN_KC slices: the lane is
 *         acc = fa__fma(w[n][k], x[i][k], acc)   stored to Yt and reloaded
 *                                            between slices, exactly)
 *     v = acc + (bias ? bias[n] : +0)       (fa_store_yt)
 *     y = (relu && v < 0) ? 0 : v           (maxps(0, v) in the AVX2 store:
 *                                            the same value, NaN kept)
 * where fa__fma is the ISA's fused multiply-add (AVX2, AVX-512) or a multiply
 * then an add (SSE2, the generic and scalar layers), and x[i][k] is packed as
 * x * 1.0 (the same value; a signalling NaN comes out quiet from the FMA in
 * both).  No lane ever mixes with another one: lanes are rows of X, so how
 * many lanes a vector has, how many rows of W a microtile holds and how the
 * rows are grouped into microtiles change the speed, not the values.
 * This header keeps that per-lane sequence and only changes the shape:
 *   - Xn[k*LD + i]: the nr rows packed transposed with LD = nr rounded up to
 *     whole vectors (not 64), so a block of 12 rows costs one 16-lane vector
 *     (AVX-512) instead of four;
 *   - microtiles of NK1 W rows x 1 vector or NK2 rows x 2 vectors (AVX-512:
 *     12 x 1 / 12 x 2 against the wide tile's 8 x 2; AVX2, SSE2, generic:
 *     12 x 1 / 6 x 2), so few lanes still give enough independent
 *     accumulators; a block of 3 vectors is one 2-vector and one 1-vector
 *     group over the same W rows;
 *   - K slices of FA_NR_XN / LD features (the packed slice stays the size of
 *     the wide tile's): the accumulators are stored to Yn and reloaded
 *     between slices as T, exactly as Yt is, so the slice length does not
 *     change a value.  (Only where floating point keeps excess precision in
 *     registers, FLT_EVAL_METHOD != 0, would it; there the slices are
 *     LIN_KC = 256 features, the wide tile's.)
 * Tested bit for bit against the 64-lane tile in tests/fa_narrow_test.c.
 *
 * Function (T = float / double, suffix _f32 / _f64):
 *   fa_gemm_narrow(x, xs, nr, w, ws, nn, K, bias, relu, y, ys, Xn, Yn)
 *     y[i*ys + n] = relu?(sum_k x[i*xs + k] * w[n*ws + k] + bias[n]),
 *     i < nr (1 <= nr <= FA_BR), n < nn; bias may be NULL.
 *     Xn: FA_NR_XN elements, Yn: nn * FA_BR elements; both 64-byte aligned
 *     (their contents on entry do not matter).  The driver uses it for the
 *     blocks with fa_narrow_lanes(nr) < FA_BR and the wide tile for the rest.
 *   fa_narrow_lanes_f32/_f64(nr)  LD for nr rows (lanes actually computed).
 *
 * Uses fa_tiles.h's vector layer (fa__vs/fa__vd, fa__*_s/_d, FA__VWS/VWD,
 * FA__NREGS); instantiated for float and double by including itself.
 */
#if defined(FA__NR_PASS)
/* ======================================================================= */
/* Template pass: FA__NR_T, FA__NR_V, FA__NR_VW, FA__NR_N(name) and the     */
/* fa__nr_* operation macros.                                               */
/* ======================================================================= */

/* NK rows of W x NQ vectors of lanes, over kc features.  ACC = 1 continues
 * the accumulators stored in Yn (leading dimension ld), ACC = 0 starts at +0. */
FA__AI void FA__NR_N(fa__nr_micro)(const FA__NR_T *W, ptrdiff_t ws, int kc,
                                   const FA__NR_T *Xn, ptrdiff_t ld, FA__NR_T *Yn,
                                   const int NK, const int NQ, const int ACC)
{
    FA__NR_V acc[FA__NR_NKMAX][2];
    int a, b;
    FA__UNROLL for (a = 0; a < NK; a++)
        FA__UNROLL for (b = 0; b < NQ; b++)
            acc[a][b] = ACC ? fa__nr_ld(Yn + a * ld + b * FA__NR_VW) : fa__nr_zero();
    for (ptrdiff_t d = 0; d < kc; d++) {
        const FA__NR_T *xp = Xn + d * ld;
        FA__NR_V xv[2];
        FA__UNROLL for (b = 0; b < NQ; b++) xv[b] = fa__nr_ld(xp + b * FA__NR_VW);
        FA__UNROLL for (a = 0; a < NK; a++) {
            FA__NR_V wv = fa__nr_set1(W[a * ws + d]);
            FA__UNROLL for (b = 0; b < NQ; b++) acc[a][b] = fa__nr_fma(wv, xv[b], acc[a][b]);
        }
    }
    FA__UNROLL for (a = 0; a < NK; a++)
        FA__UNROLL for (b = 0; b < NQ; b++) fa__nr_st(Yn + a * ld + b * FA__NR_VW, acc[a][b]);
}

/* NK rows of W against every lane group of the block: 2-vector groups when
 * NQ == 2 (then a 1-vector group if LD is an odd number of vectors), else
 * 1-vector groups */
FA__AI void FA__NR_N(fa__nr_rows)(const FA__NR_T *W, ptrdiff_t ws, int kc,
                                  const FA__NR_T *Xn, ptrdiff_t ld, FA__NR_T *Yn,
                                  const int NK, const int NQ, const int ACC)
{
    ptrdiff_t g = 0;
    if (NQ == 2)
        for (; g + 2 * FA__NR_VW <= ld; g += 2 * FA__NR_VW)
            FA__NR_N(fa__nr_micro)(W, ws, kc, Xn + g, ld, Yn + g, NK, 2, ACC);
    for (; g < ld; g += FA__NR_VW)
        FA__NR_N(fa__nr_micro)(W, ws, kc, Xn + g, ld, Yn + g, NK, 1, ACC);
}

/* all nn rows of W: full microtiles, then the rest in 8/4/2/1-row pieces */
FA__AI void FA__NR_N(fa__nr_all)(const FA__NR_T *W, ptrdiff_t ws, int nn, int kc,
                                 const FA__NR_T *Xn, ptrdiff_t ld, FA__NR_T *Yn,
                                 const int NK, const int NQ, const int ACC)
{
    int j = 0;
    for (; j + NK <= nn; j += NK)
        FA__NR_N(fa__nr_rows)(W + j * ws, ws, kc, Xn, ld, Yn + j * ld, NK, NQ, ACC);
    if (NK > 8)
        for (; j + 8 <= nn; j += 8)
            FA__NR_N(fa__nr_rows)(W + j * ws, ws, kc, Xn, ld, Yn + j * ld, 8, NQ, ACC);
    if (NK > 4 && j + 4 <= nn) {
        FA__NR_N(fa__nr_rows)(W + j * ws, ws, kc, Xn, ld, Yn + j * ld, 4, NQ, ACC);
        j += 4;
    }
    if (NK > 2 && j + 2 <= nn) {
        FA__NR_N(fa__nr_rows)(W + j * ws, ws, kc, Xn, ld, Yn + j * ld, 2, NQ, ACC);
        j += 2;
    }
    if (j < nn)
        FA__NR_N(fa__nr_rows)(W + j * ws, ws, kc, Xn, ld, Yn + j * ld, 1, NQ, ACC);
}

FA__PUB int FA__NR_N(fa_narrow_lanes)(int nr)
{
    return (nr + FA__NR_VW - 1) / FA__NR_VW * FA__NR_VW;
}

FA__PUB void FA__NR_N(fa_gemm_narrow)(const FA__NR_T *x, ptrdiff_t xs, int nr,
                                      const FA__NR_T *w, ptrdiff_t ws, int nn,
                                      ptrdiff_t K, const FA__NR_T *bias, int relu,
                                      FA__NR_T *y, ptrdiff_t ys,
                                      FA__NR_T *Xn, FA__NR_T *Yn)
{
    const ptrdiff_t ld = FA__NR_N(fa_narrow_lanes)(nr);
    /* two vectors per microtile when there are at least two */
    const int two = ld >= 2 * FA__NR_VW;
#if FA__NR_EXACT_SLICES
    ptrdiff_t kcmax = FA_NR_XN / ld;
#else
    ptrdiff_t kcmax = FA_NR_KC;
#endif
    ptrdiff_t k0 = 0;
    if (K <= 0)
        for (ptrdiff_t i = 0; i < (ptrdiff_t)nn * ld; i++) Yn[i] = 0;
    for (; k0 < K; k0 += kcmax) {
        int kc = (int)(K - k0 < kcmax ? K - k0 : kcmax);
        const FA__NR_T *xk = x + k0;
        /* Xn[d*ld + i] = x[i][k0 + d]; lanes nr..ld-1 zero */
        for (int d0 = 0; d0 < kc; d0 += 16) {   /* 16 features of each row */
            const int d1 = kc - d0 < 16 ? kc : d0 + 16;
            for (int i = 0; i < nr; i++) {
                const FA__NR_T *xr = xk + (ptrdiff_t)i * xs;
                for (int d = d0; d < d1; d++) Xn[(ptrdiff_t)d * ld + i] = xr[d];
            }
            for (int d = d0; d < d1; d++)
                for (ptrdiff_t i = nr; i < ld; i++) Xn[(ptrdiff_t)d * ld + i] = 0;
        }
        const FA__NR_T *wk = w + k0;
        if (two) {
            if (k0 > 0) FA__NR_N(fa__nr_all)(wk, ws, nn, kc, Xn, ld, Yn, FA__NR_NK2, 2, 1);
            else FA__NR_N(fa__nr_all)(wk, ws, nn, kc, Xn, ld, Yn, FA__NR_NK2, 2, 0);
        } else {
            if (k0 > 0) FA__NR_N(fa__nr_all)(wk, ws, nn, kc, Xn, ld, Yn, FA__NR_NK1, 1, 1);
            else FA__NR_N(fa__nr_all)(wk, ws, nn, kc, Xn, ld, Yn, FA__NR_NK1, 1, 0);
        }
    }
    /* y[i][n] = relu?(Yn[n][i] + b[n]); b = +0 without a bias, as fa_store_yt.
     * Blocks of 16 outputs: each row of y is written 16 features at a time
     * (one walk down a column of y per feature was up to a third of the time
     * when y did not fit the cache), from 16 rows of Yn that stay in L1. */
    for (int n0 = 0; n0 < nn; n0 += 16) {
        const int n1 = nn - n0 < 16 ? nn : n0 + 16;
        FA__NR_T b[16];
        for (int n = n0; n < n1; n++) b[n - n0] = bias ? bias[n] : (FA__NR_T)0;
        for (int i = 0; i < nr; i++) {
            FA__NR_T *yr = y + (ptrdiff_t)i * ys;
            for (int n = n0; n < n1; n++) {
                FA__NR_T v = Yn[(ptrdiff_t)n * ld + i] + b[n - n0];
                yr[n] = (relu && v < 0) ? (FA__NR_T)0 : v;
            }
        }
    }
}

#else /* !FA__NR_PASS */
/* ======================================================================= */
#ifndef FASTATTN_FA_NARROW_H
#define FASTATTN_FA_NARROW_H

#include <float.h>
#include "fa_tiles.h"

/* packed X slice of the narrow tile: as many elements as the wide tile's Xt
 * (LIN_KC x FA_BR), so the linear driver's buffers serve both */
#define FA_NR_XN (256 * FA_BR)
#define FA_NR_KC 256   /* K slice when registers may hold excess precision */

#if defined(FLT_EVAL_METHOD) && (FLT_EVAL_METHOD == 0 || FLT_EVAL_METHOD == -1)
#  define FA__NR_EXACT_SLICES 1
#else
#  define FA__NR_EXACT_SLICES 0
#endif

/* Microtile shapes: NK1 W rows x 1 vector, NK2 rows x 2 vectors (accumulators
 * NK1 and 2*NK2, plus the X vectors and a broadcast). */
#if defined(FA__NR_NK1)
   /* given by the includer (tuning experiments) */
#elif defined(FA__ISA_SCALAR)
#  define FA__NR_NK1 8
#  define FA__NR_NK2 4
#elif FA__NREGS >= 32
#  define FA__NR_NK1 12
#  define FA__NR_NK2 12
#else
#  define FA__NR_NK1 12
#  define FA__NR_NK2 6
#endif
#define FA__NR_NKMAX (FA__NR_NK1 > FA__NR_NK2 ? FA__NR_NK1 : FA__NR_NK2)

#define FA__NR_CAT2(a, b) a##b
#define FA__NR_CAT(a, b) FA__NR_CAT2(a, b)
#define FA__NR_N(name) FA__NR_CAT(name, FA__NR_SUF)
#define FA__NR_PASS 1

#define FA__NR_T float
#define FA__NR_V fa__vs
#define FA__NR_VW FA__VWS
#define FA__NR_SUF _f32
#define fa__nr_ld fa__ld_s
#define fa__nr_st fa__st_s
#define fa__nr_set1 fa__set1_s
#define fa__nr_zero fa__zero_s
#define fa__nr_fma fa__fma_s
#include "fa_narrow.h"
#undef FA__NR_T
#undef FA__NR_V
#undef FA__NR_VW
#undef FA__NR_SUF
#undef fa__nr_ld
#undef fa__nr_st
#undef fa__nr_set1
#undef fa__nr_zero
#undef fa__nr_fma

#define FA__NR_T double
#define FA__NR_V fa__vd
#define FA__NR_VW FA__VWD
#define FA__NR_SUF _f64
#define fa__nr_ld fa__ld_d
#define fa__nr_st fa__st_d
#define fa__nr_set1 fa__set1_d
#define fa__nr_zero fa__zero_d
#define fa__nr_fma fa__fma_d
#include "fa_narrow.h"
#undef FA__NR_T
#undef FA__NR_V
#undef FA__NR_VW
#undef FA__NR_SUF
#undef fa__nr_ld
#undef fa__nr_st
#undef fa__nr_set1
#undef fa__nr_zero
#undef fa__nr_fma
#undef FA__NR_PASS

#endif /* FASTATTN_FA_NARROW_H */
#endif /* FA__NR_PASS */
