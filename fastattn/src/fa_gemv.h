/*
 * fa_gemv.h -- rows-layout GEMV / skinny GEMM for decode-sized projections:
 *     Y[m][n] = act(sum_k X[m][k] * W[n][k] + bias[n])      m < M (1..16)
 * with W (N, K) in torch layout, read in place (rows, no packing).
 *
 * Why a separate kernel.  With one or a few rows of X, a GEMM is a stream
 * over W: every W element is used M times, so the work is bounded by how
 * fast W can be read.  The lanes tiles (fa_gemm_nt, fa_narrow.h) put rows of
 * X in the vector lanes, so with M = 1 a vector holds one useful lane; here
 * the vector lanes run over K instead.  A microtile keeps MR rows of X and
 * NW rows of W: per K step it loads NW vectors of W and MR vectors of X and
 * does MR * NW FMAs into MR * NW vector accumulators, so W is read from
 * memory once per call whatever M is (a block of NW W rows serves every row
 * group of X while it is in L1/L2), and batch 8 costs little more than 1.
 *
 * Fixed reduction order.  Every output element is, in every call:
 *     acc = +0 (a vector of VW lanes)
 *     for k0 = 0, VW, 2 VW, ... (in order): acc = fma(x[k0..], w[k0..], acc)
 *       (the last, partial vector zero-padded in both x and w)
 *     s = fa__hsum(acc)                         (fa_simd.h's fixed tree)
 *     v = s + (bias ? bias[n] : +0)             (in T)
 *     y = act(v)
 * No accumulator ever mixes two outputs, so how rows of X and W are grouped
 * into microtiles, how N is split into tasks and how many threads run them
 * change the speed only: results are bit-identical for any thread count and
 * a row's result does not depend on the other rows of the call (M).  They do
 * depend on the vector width (one build against another), like every
 * row-layout reduction in fa_tiles.h.
 *
 * Activations (act): FA_GV_NONE, FA_GV_RELU (v < 0 ? 0 : v, NaN kept),
 * FA_GV_GELU (0.5 v (1 + erf(v / sqrt 2))), FA_GV_GELU_TANH
 * (0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))), FA_GV_SILU
 * (v / (1 + exp(-v))); the three smooth ones are evaluated in double and
 * rounded once.  GLU (Wu != NULL): Y[m][n] = silu(g + bias[n]) * (u + bu[n])
 * with g from W row n and u from Wu row n (SwiGLU with gate and up fused in
 * one weight matrix: Wu = W + F rows), bias/bu may be NULL.
 *
 * Function (T = float / double, suffix _f32 / _f64):
 *   fa_gemv(X, xs, M, W, ws, Wu, nn, K, bias, bu, act, Y, ys)
 *     the nn rows of W starting at W (and Wu) against the M rows of X;
 *     Y[m*ys + n], n < nn.  No alignment requirement; K may be 0.
 *
 * Uses fa_tiles.h's vector layer; instantiated for float and double by
 * including itself (FA__GV_PASS).
 */
#if defined(FA__GV_PASS)
/* ======================================================================= */
/* Template pass: FA__GV_T, FA__GV_V, FA__GV_VW, FA__GV_N(name), fa__gv_*  */
/* ======================================================================= */

/* MR rows of X x NW rows of W over all K; s[r * 8 + b] = the raw sums */
FA__AI void FA__GV_N(fa__gv_micro)(const FA__GV_T *X, ptrdiff_t xs,
                                   const FA__GV_T *W, ptrdiff_t ws, ptrdiff_t K,
                                   FA__GV_T *s, const int MR, const int NW)
{
    FA__GV_V acc[FA__GV_MRMAX][8];
    int r, b;
    FA__UNROLL for (r = 0; r < MR; r++)
        FA__UNROLL for (b = 0; b < NW; b++) acc[r][b] = fa__gv_zero();
    const ptrdiff_t Kv = K - K % FA__GV_VW;
    for (ptrdiff_t k = 0; k < Kv; k += FA__GV_VW) {
        FA__GV_V wv[8];
        FA__UNROLL for (b = 0; b < NW; b++) wv[b] = fa__gv_ldu(W + b * ws + k);
#if FA__GV_PF > 0
        if (k + FA__GV_PF < K)
            FA__UNROLL for (b = 0; b < NW; b++) FA__PREFETCH(W + b * ws + k + FA__GV_PF);
#endif
        FA__UNROLL for (r = 0; r < MR; r++) {
            FA__GV_V xv = fa__gv_ldu(X + r * xs + k);
            FA__UNROLL for (b = 0; b < NW; b++) acc[r][b] = fa__gv_fma(xv, wv[b], acc[r][b]);
        }
    }
    if (Kv < K) {   /* the partial last vector, zero-padded in x and w */
        FA__GV_T xt[FA__GV_VW] FA__GV_ALIGN, wt[FA__GV_VW] FA__GV_ALIGN;
        int l, nt = (int)(K - Kv);
        FA__UNROLL for (b = 0; b < NW; b++) {
            for (l = 0; l < FA__GV_VW; l++) wt[l] = l < nt ? W[b * ws + Kv + l] : (FA__GV_T)0;
            FA__GV_V wv = fa__gv_ldu(wt);
            FA__UNROLL for (r = 0; r < MR; r++) {
                for (l = 0; l < FA__GV_VW; l++) xt[l] = l < nt ? X[r * xs + Kv + l] : (FA__GV_T)0;
                acc[r][b] = fa__gv_fma(fa__gv_ldu(xt), wv, acc[r][b]);
            }
        }
    }
    FA__UNROLL for (r = 0; r < MR; r++)
        FA__UNROLL for (b = 0; b < NW; b++) s[r * 8 + b] = fa__gv_hsum(acc[r][b]);
}

/* the raw sums of MR rows x nb (<= 8) W rows: one NW-wide microtile when
 * nb == NW, else nb one-row microtiles (task tails only) */
FA__AI void FA__GV_N(fa__gv_group)(const FA__GV_T *X, ptrdiff_t xs,
                                   const FA__GV_T *W, ptrdiff_t ws, ptrdiff_t K,
                                   FA__GV_T *s, int nb, const int MR, const int NW)
{
    if (nb == NW) {
        FA__GV_N(fa__gv_micro)(X, xs, W, ws, K, s, MR, NW);
        return;
    }
    for (int b = 0; b < nb; b++) {
        FA__GV_T t[FA__GV_MRMAX * 8];
        FA__GV_N(fa__gv_micro)(X, xs, W + b * ws, ws, K, t, MR, 1);
        for (int r = 0; r < MR; r++) s[r * 8 + b] = t[r * 8];
    }
}

FA__AI void FA__GV_N(fa__gv_sums)(const FA__GV_T *X, ptrdiff_t xs, int mr,
                                  const FA__GV_T *W, ptrdiff_t ws, ptrdiff_t K,
                                  FA__GV_T *s, int nb, int nw)
{
    /* (mr, nw) pairs the driver below produces */
    if (mr == 1 && nw == 8) FA__GV_N(fa__gv_group)(X, xs, W, ws, K, s, nb, 1, 8);
    else if (mr == 1) FA__GV_N(fa__gv_group)(X, xs, W, ws, K, s, nb, 1, 4);
    else if (mr == 2) FA__GV_N(fa__gv_group)(X, xs, W, ws, K, s, nb, 2, 4);
#if FA__GV_MRMAX >= 4
    else FA__GV_N(fa__gv_group)(X, xs, W, ws, K, s, nb, 4, 4);
#endif
}

FA__AI FA__GV_T FA__GV_N(fa__gv_act)(FA__GV_T v, int act)
{
    double x = (double)v;
    switch (act) {
    case FA_GV_RELU: return v < 0 ? (FA__GV_T)0 : v;
    case FA_GV_GELU: return (FA__GV_T)(0.5 * x * (1.0 + erf(x * 0.70710678118654752440)));
    case FA_GV_GELU_TANH:
        return (FA__GV_T)(0.5 * x * (1.0 + tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x))));
    case FA_GV_SILU: return (FA__GV_T)(x / (1.0 + exp(-x)));
    default: return v;
    }
}

FA__PUB void FA__GV_N(fa_gemv)(const FA__GV_T *X, ptrdiff_t xs, int M,
                               const FA__GV_T *W, ptrdiff_t ws, const FA__GV_T *Wu,
                               int nn, ptrdiff_t K, const FA__GV_T *bias,
                               const FA__GV_T *bu, int act, FA__GV_T *Y, ptrdiff_t ys)
{
    FA__GV_T g[FA__GV_MRMAX * 8], u[FA__GV_MRMAX * 8];
    const int nw = M == 1 ? 8 : 4;
    for (int n = 0; n < nn; n += nw) {
        int nb = nn - n < nw ? nn - n : nw;
        for (int m = 0; m < M;) {
            int mr = M - m >= FA__GV_MRMAX ? FA__GV_MRMAX : (M - m >= 2 ? 2 : 1);
            const FA__GV_T *Xm = X + (ptrdiff_t)m * xs;
            FA__GV_N(fa__gv_sums)(Xm, xs, mr, W + (ptrdiff_t)n * ws, ws, K, g, nb, nw);
            if (Wu)
                FA__GV_N(fa__gv_sums)(Xm, xs, mr, Wu + (ptrdiff_t)n * ws, ws, K, u, nb, nw);
            for (int r = 0; r < mr; r++) {
                FA__GV_T *y = Y + (ptrdiff_t)(m + r) * ys + n;
                for (int b = 0; b < nb; b++) {
                    FA__GV_T v = g[r * 8 + b] + (bias ? bias[n + b] : (FA__GV_T)0);
                    if (Wu) {
                        FA__GV_T w = u[r * 8 + b] + (bu ? bu[n + b] : (FA__GV_T)0);
                        double x = (double)v;
                        y[b] = (FA__GV_T)(x / (1.0 + exp(-x)) * (double)w);
                    } else {
                        y[b] = FA__GV_N(fa__gv_act)(v, act);
                    }
                }
            }
            m += mr;
        }
    }
}

#else /* !FA__GV_PASS */
/* ======================================================================= */
#ifndef FASTATTN_FA_GEMV_H
#define FASTATTN_FA_GEMV_H

#include <math.h>
#include "fa_tiles.h"

enum { FA_GV_NONE = 0, FA_GV_RELU = 1, FA_GV_GELU = 2, FA_GV_GELU_TANH = 3, FA_GV_SILU = 4 };

/* rows of X per microtile: 4 (x 4 W rows = 16 accumulators) with 32 vector
 * registers, 2 (x 4 = 8) with 16; one row of X takes 8 W rows */
#if defined(FA__GV_MRMAX)
   /* given by the includer */
#elif FA__NREGS >= 32
#  define FA__GV_MRMAX 4
#else
#  define FA__GV_MRMAX 2
#endif
#ifndef FA__GV_PF
#  define FA__GV_PF 0   /* elements ahead in each W row (0: none; 256 measured no faster) */
#endif
#if defined(__GNUC__)
#  define FA__GV_ALIGN __attribute__((aligned(64)))
#else
#  define FA__GV_ALIGN
#endif

FA__PUB void fa_gemv_f32(const float *X, ptrdiff_t xs, int M, const float *W, ptrdiff_t ws,
                         const float *Wu, int nn, ptrdiff_t K, const float *bias,
                         const float *bu, int act, float *Y, ptrdiff_t ys);
FA__PUB void fa_gemv_f64(const double *X, ptrdiff_t xs, int M, const double *W, ptrdiff_t ws,
                         const double *Wu, int nn, ptrdiff_t K, const double *bias,
                         const double *bu, int act, double *Y, ptrdiff_t ys);

#define FA__GV_CAT2(a, b) a##b
#define FA__GV_CAT(a, b) FA__GV_CAT2(a, b)
#define FA__GV_N(name) FA__GV_CAT(name, FA__GV_SUF)
#define FA__GV_PASS 1

#define FA__GV_T float
#define FA__GV_V fa__vs
#define FA__GV_VW FA__VWS
#define FA__GV_SUF _f32
#define fa__gv_ldu fa__ldu_s
#define fa__gv_zero fa__zero_s
#define fa__gv_fma fa__fma_s
#define fa__gv_hsum fa__hsum_f32
#include "fa_gemv.h"
#undef FA__GV_T
#undef FA__GV_V
#undef FA__GV_VW
#undef FA__GV_SUF
#undef fa__gv_ldu
#undef fa__gv_zero
#undef fa__gv_fma
#undef fa__gv_hsum

#define FA__GV_T double
#define FA__GV_V fa__vd
#define FA__GV_VW FA__VWD
#define FA__GV_SUF _f64
#define fa__gv_ldu fa__ldu_d
#define fa__gv_zero fa__zero_d
#define fa__gv_fma fa__fma_d
#define fa__gv_hsum fa__hsum_f64
#include "fa_gemv.h"
#undef FA__GV_T
#undef FA__GV_V
#undef FA__GV_VW
#undef FA__GV_SUF
#undef fa__gv_ldu
#undef fa__gv_zero
#undef fa__gv_fma
#undef fa__gv_hsum
#undef FA__GV_PASS

#endif /* FASTATTN_FA_GEMV_H */
#endif /* FA__GV_PASS */
