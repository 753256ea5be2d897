/*
 * fa_gemm.h -- the linear layers' GEMM on packed weight panels:
 *     Y = X W^T (+ bias) (ReLU),  X (M, K) rows, W (N, K) in torch layout,
 * bit-identical, element for element, to the lanes-layout tiles (fa_pack_qt +
 * fa_gemm_nt + fa_store_yt, and fa_narrow.h) for any M.
 *
 * Layout.  W is packed once (fa_gemm_pack_w, at model load or per call) into
 * panels of FA_GM_PW consecutive output features (W rows): panel p holds
 *     Wp[p*K*PW + k*PW + j] = W[p*PW + j][k]     (0 for p*PW + j >= N)
 * so the micro-kernel streams one contiguous panel, PW lanes per feature k.
 * The output features are the vector lanes: a micro-tile is R rows of X
 * (broadcast, up to FA_GM_MR) x P panels x FA_GM_NV vectors (PW = NV * lanes),
 * and its accumulators are rows of Y, stored straight into Y (no transposing
 * store); the bias is a vector along the lanes.  X is packed per task, MR rows
 * interleaved (Xp[k*MR + i]), KC = FA_GM_KC features at a time, so the
 * broadcasts come from one pointer at fixed offsets.  Blocking (BLIS-like):
 * for each K slice, the packed X block (up to FA_GM_MB rows x KC) stays in
 * L2 while each panel's KC x PW slice (32 KiB for AVX-512 float) stays in L1
 * across all MR-row groups of the block.
 *
 * Why it is bit-identical to the lanes-layout tiles.  There, every output
 * element is one lane of one accumulator:
 *     acc = +0;  for k = 0 .. K-1 in order: acc = fma(w[n][k], x[i][k], acc)
 *     (stored as T and reloaded every 256 features)
 *     v = acc + (bias ? bias[n] : +0);  y = (relu && v < 0) ? 0 : v
 * Here too: an element is one lane of one accumulator, the same fma with the
 * same two factors (the product is commutative and rounded once), k in the
 * same order, the same 256-feature slices (stored to Y as T and reloaded:
 * exact), then the same bias add (+0 without a bias: -0 becomes +0, as there)
 * and max(0, v) (= v < 0 ? 0 : v, NaN and -0 kept).  No lane ever mixes with
 * another, so R, P, the row blocks, the panel ranges and the thread count
 * change the speed, never a bit.  Tested against the lanes-layout tiles in
 * src/tests/fa_gemm_test.c and tests/test_gemm_packed.py.
 *
 * Functions (T = float / double, suffix _f32 / _f64):
 *   fa_gemm_panel_width_f32/_f64()       PW (output features per panel)
 *   fa_gemm_packed_size_f32/_f64(N, K)   elements of the packed W
 *   fa_gemm_pack_w(w, ws, N, K, n0, n1, Wp)  pack panels [n0, n1) of W (so
 *                                        threads can pack disjoint panels)
 *   fa_gemm_scratch_f32/_f64(rows)       elements of the scratch buffer of a
 *                                        task of at most rows rows (1 <= rows
 *                                        <= FA_GM_MB; 64-byte aligned,
 *                                        contents ignored)
 *   fa_gemm_packed(x, xs, mr, Wp, K, np, nlast, bias, act, y, ys, buf)
 *       y[i*ys + n] = act(sum_k x[i*xs + k] * W[n][k] + bias[n]) for
 *       i < mr (1 <= mr <= FA_GM_MB), the np panels starting at Wp (a panel
 *       boundary of the packed W), n < (np-1)*PW + nlast (1 <= nlast <= PW),
 *       bias (at the first panel's column) may be NULL.  act: FA_GM_NONE (0),
 *       FA_GM_RELU (1, in the registers, as above) or, float only, FA_GM_GELU
 *       / FA_GM_GELU_TANH / FA_GM_SILU (2-4: fa_gemm_act_f32 over each
 *       micro-tile's rows right after their last store, still in L1; the
 *       double instantiation ignores codes >= 2 and its callers reject them).
 *   fa_gemm_act_f32(o, n, act)           that activation over n floats in place
 *       (also what the Cython driver applies after the lanes-layout tiles, so
 *       both tile families keep giving the same bits)
 *
 * Uses fa_tiles.h's vector layer; instantiated for float and double by
 * including itself.  C99, static inline only, no globals.
 */
#if defined(FA__GM_PASS)
/* ======================================================================= */
/* Template pass: FA__GM_T, FA__GM_V, FA__GM_VW, FA__GM_N(name), fa__gm_*   */
/* ======================================================================= */
#define FA__GM_PWT (FA__GM_NV * FA__GM_VW)   /* panel width of this dtype */

/* R rows x P panels x NV vectors over kc features.  first: start at +0 (else
 * continue the values stored in Y); last: add the bias (+0 if NULL), ReLU. */
FA__AI void FA__GM_N(fa__gm_micro)(const FA__GM_T *Xp, const FA__GM_T *Wp, ptrdiff_t pst,
                                   ptrdiff_t kc, FA__GM_T *Y, ptrdiff_t ys,
                                   const FA__GM_T *bias, int first, int last, int relu,
                                   const int R, const int P)
{
    FA__GM_V acc[FA__GM_MR][FA__GM_PMAX * FA__GM_NV];
    const int J = P * FA__GM_NV;
    int r, j;
    if (first) {
        FA__UNROLL for (r = 0; r < R; r++)
            FA__UNROLL for (j = 0; j < J; j++) acc[r][j] = fa__gm_zero();
    } else {
        FA__UNROLL for (r = 0; r < R; r++)
            FA__UNROLL for (j = 0; j < J; j++)
                acc[r][j] = fa__gm_ldu(Y + r * ys + j * FA__GM_VW);
    }
    for (ptrdiff_t k = 0; k < kc; k++) {
        const FA__GM_T *xk = Xp + k * FA__GM_MR;
        const FA__GM_T *wk = Wp + k * FA__GM_PWT;
        FA__GM_V wv[FA__GM_PMAX * FA__GM_NV];
#if FA__GM_PFD > 0
        FA__UNROLL for (j = 0; j < P; j++) {
            const char *pf = (const char *)(wk + j * pst + FA__GM_PFD * FA__GM_PWT);
            FA__UNROLL for (int c = 0; c < FA__GM_PWT * (int)sizeof(FA__GM_T); c += 64)
                __builtin_prefetch(pf + c, 0, 3);
        }
#endif
        FA__UNROLL for (j = 0; j < J; j++)
            wv[j] = fa__gm_ld(wk + (j / FA__GM_NV) * pst + (j % FA__GM_NV) * FA__GM_VW);
        FA__UNROLL for (r = 0; r < R; r++) {
            FA__GM_V xb = fa__gm_set1(xk[r]);
            FA__UNROLL for (j = 0; j < J; j++) acc[r][j] = fa__gm_fma(wv[j], xb, acc[r][j]);
        }
    }
    if (last) {
        const FA__GM_V z = fa__gm_zero();
        FA__UNROLL for (j = 0; j < J; j++) {
            /* panels are PW apart in Y and in the bias, as in W's columns */
            FA__GM_V b = bias ? fa__gm_ldu(bias + j * FA__GM_VW) : z;
            FA__UNROLL for (r = 0; r < R; r++) {
                FA__GM_V v = fa__gm_add(acc[r][j], b);
                acc[r][j] = relu ? fa__gm_max(z, v) : v;
            }
        }
    }
    FA__UNROLL for (r = 0; r < R; r++)
        FA__UNROLL for (j = 0; j < J; j++) fa__gm_stu(Y + r * ys + j * FA__GM_VW, acc[r][j]);
}

/* the micro-kernel for a run-time row count 1..MR and a constant P */
FA__AI void FA__GM_N(fa__gm_rows)(const FA__GM_T *Xp, const FA__GM_T *Wp, ptrdiff_t pst,
                                  ptrdiff_t kc, FA__GM_T *Y, ptrdiff_t ys,
                                  const FA__GM_T *bias, int first, int last, int relu,
                                  int R, const int P)
{
    switch (R) {
#define FA__GM_CASE(c) case c: if (c <= FA__GM_MR) FA__GM_N(fa__gm_micro)(Xp, Wp, pst, kc, Y, ys, bias, first, last, relu, c <= FA__GM_MR ? c : 1, P); break;
    FA__GM_CASE(1) FA__GM_CASE(2) FA__GM_CASE(3) FA__GM_CASE(4) FA__GM_CASE(5)
    FA__GM_CASE(6) FA__GM_CASE(7) FA__GM_CASE(8) FA__GM_CASE(9) FA__GM_CASE(10)
    FA__GM_CASE(11) FA__GM_CASE(12) FA__GM_CASE(13) FA__GM_CASE(14)
#undef FA__GM_CASE
    default: break;
    }
}

/* the activation after the last store: R rows of n features, still in L1 */
FA__AI void FA__GM_N(fa__gm_post)(FA__GM_T *Y, ptrdiff_t ys, int R, int n, int on, int act)
{
    if (!on) return;
    for (int r = 0; r < R; r++) FA__GM_ACT(Y + (ptrdiff_t)r * ys, n, act);
}

FA__PUB int FA__GM_N(fa_gemm_panel_width)(void) { return FA__GM_PWT; }

FA__PUB ptrdiff_t FA__GM_N(fa_gemm_packed_size)(ptrdiff_t N, ptrdiff_t K)
{
    ptrdiff_t np = (N + FA__GM_PWT - 1) / FA__GM_PWT;
    return np * (K > 0 ? K : 1) * FA__GM_PWT;
}

/* panels p in [p0, p1) of the packed W (zeros past row N) */
FA__PUB void FA__GM_N(fa_gemm_pack_w)(const FA__GM_T *w, ptrdiff_t ws, ptrdiff_t N, ptrdiff_t K,
                                      ptrdiff_t p0, ptrdiff_t p1, FA__GM_T *Wp)
{
    const ptrdiff_t pst = (K > 0 ? K : 1) * FA__GM_PWT;
    for (ptrdiff_t p = p0; p < p1; p++) {
        FA__GM_T *dst = Wp + p * pst;
        for (int j = 0; j < FA__GM_PWT; j++) {
            ptrdiff_t n = p * FA__GM_PWT + j;
            if (n < N) {
                const FA__GM_T *src = w + n * ws;
                for (ptrdiff_t k = 0; k < K; k++) dst[k * FA__GM_PWT + j] = src[k];
            } else {
                for (ptrdiff_t k = 0; k < K; k++) dst[k * FA__GM_PWT + j] = 0;
            }
        }
    }
}

/* scratch of a task of up to `rows` rows, R = rows rounded up to whole
 * MR-row groups: packed X (R x KC), the last panel's Y (R x PW), its bias
 * (PW).  Sized by the rows, not by MB: the driver clears it per call, and a
 * short input's call would clear 4x more than it uses. */
FA__AI ptrdiff_t FA__GM_N(fa__gm_scratch_rows)(ptrdiff_t rows)
{
    ptrdiff_t R = (rows + FA__GM_MR - 1) / FA__GM_MR * FA__GM_MR;
    if (R < FA__GM_MR) R = FA__GM_MR;
    if (R > FA_GM_MB) R = FA_GM_MB;
    return R;
}
FA__PUB ptrdiff_t FA__GM_N(fa_gemm_scratch)(ptrdiff_t rows)
{
    const ptrdiff_t R = FA__GM_N(fa__gm_scratch_rows)(rows);
    return R * FA_GM_KC + R * FA__GM_PWT + FA__GM_PWT;
}

FA__PUB void FA__GM_N(fa_gemm_packed)(const FA__GM_T *x, ptrdiff_t xs, int mr,
                                      const FA__GM_T *Wp, ptrdiff_t K, int np, int nlast,
                                      const FA__GM_T *bias, int act,
                                      FA__GM_T *y, ptrdiff_t ys, FA__GM_T *buf)
{
    const int relu = act == FA_GM_RELU;
    const int post = act >= FA_GM_GELU;   /* an activation after the store */
    const ptrdiff_t pst = (K > 0 ? K : 1) * FA__GM_PWT;
    const int ng = (mr + FA__GM_MR - 1) / FA__GM_MR;         /* MR-row groups */
    const int rlast = mr - (ng - 1) * FA__GM_MR;             /* rows in the last */
    const int edge = nlast < FA__GM_PWT;                     /* last panel partial */
    /* buf: fa_gemm_scratch(mr) elements or more */
    const ptrdiff_t Rs = FA__GM_N(fa__gm_scratch_rows)(mr);
    FA__GM_T *Xp = buf;
    FA__GM_T *Ye = buf + Rs * FA_GM_KC;                      /* edge panel's Y */
    FA__GM_T *Be = Ye + Rs * FA__GM_PWT;                     /* edge panel's bias */
    const int nfull = edge ? np - 1 : np;
    /* one group of few rows: several panels per micro-tile */
    const int P = ng > 1 ? 1 : FA__GM_PFOR(rlast);
    if (edge && bias) {
        for (int j = 0; j < FA__GM_PWT; j++)
            Be[j] = j < nlast ? bias[(ptrdiff_t)(np - 1) * FA__GM_PWT + j] : (FA__GM_T)0;
    }
    ptrdiff_t k0 = 0;
    for (;;) {
        const ptrdiff_t kc = K - k0 < FA_GM_KC ? K - k0 : FA_GM_KC;
        const int first = k0 == 0, last = k0 + kc >= K;
        /* Xp[g*KC*MR + k*MR + i] = x[g*MR + i][k0 + k] */
        for (int g = 0; g < ng; g++) {
            const int R = g == ng - 1 ? rlast : FA__GM_MR;
            FA__GM_T *xg = Xp + (ptrdiff_t)g * FA_GM_KC * FA__GM_MR;
            for (int i = 0; i < R; i++) {
                const FA__GM_T *xr = x + ((ptrdiff_t)g * FA__GM_MR + i) * xs + k0;
                for (ptrdiff_t k = 0; k < kc; k++) xg[k * FA__GM_MR + i] = xr[k];
            }
        }
        const FA__GM_T *Wk = Wp + k0 * FA__GM_PWT;
        int p = 0;
        if (P == 4)
            for (; p + 4 <= nfull; p += 4) {
                FA__GM_N(fa__gm_rows)(Xp, Wk + p * pst, pst, kc, y + (ptrdiff_t)p * FA__GM_PWT, ys,
                                      bias ? bias + (ptrdiff_t)p * FA__GM_PWT : bias,
                                      first, last, relu, rlast, 4 <= FA__GM_PMAX ? 4 : 1);
                FA__GM_N(fa__gm_post)(y + (ptrdiff_t)p * FA__GM_PWT, ys, rlast, 4 * FA__GM_PWT,
                                      last && post, act);
            }
        if (P == 3)
            for (; p + 3 <= nfull; p += 3) {
                FA__GM_N(fa__gm_rows)(Xp, Wk + p * pst, pst, kc, y + (ptrdiff_t)p * FA__GM_PWT, ys,
                                      bias ? bias + (ptrdiff_t)p * FA__GM_PWT : bias,
                                      first, last, relu, rlast, 3 <= FA__GM_PMAX ? 3 : 1);
                FA__GM_N(fa__gm_post)(y + (ptrdiff_t)p * FA__GM_PWT, ys, rlast, 3 * FA__GM_PWT,
                                      last && post, act);
            }
        if (P >= 2)
            for (; p + 2 <= nfull; p += 2) {
                FA__GM_N(fa__gm_rows)(Xp, Wk + p * pst, pst, kc, y + (ptrdiff_t)p * FA__GM_PWT, ys,
                                      bias ? bias + (ptrdiff_t)p * FA__GM_PWT : bias,
                                      first, last, relu, rlast, 2 <= FA__GM_PMAX ? 2 : 1);
                FA__GM_N(fa__gm_post)(y + (ptrdiff_t)p * FA__GM_PWT, ys, rlast, 2 * FA__GM_PWT,
                                      last && post, act);
            }
#if FA__GM_GOUTER
        /* row group outer: its packed X stays in L1, the panels stream from L2 */
        for (int g = 0; g < ng; g++)
            for (int pp = p; pp < np; pp++) {
                const int e = edge && pp == np - 1;
                FA__GM_T *Yp = e ? Ye : y + (ptrdiff_t)pp * FA__GM_PWT;
                const ptrdiff_t ly = e ? FA__GM_PWT : ys;
                const FA__GM_T *bp = bias ? (e ? Be : bias + (ptrdiff_t)pp * FA__GM_PWT) : bias;
                FA__GM_N(fa__gm_rows)(Xp + (ptrdiff_t)g * FA_GM_KC * FA__GM_MR, Wk + pp * pst, pst,
                                      kc, Yp + (ptrdiff_t)g * FA__GM_MR * ly, ly, bp, first, last,
                                      relu, g == ng - 1 ? rlast : FA__GM_MR, 1);
                FA__GM_N(fa__gm_post)(Yp + (ptrdiff_t)g * FA__GM_MR * ly, ly,
                                      g == ng - 1 ? rlast : FA__GM_MR, FA__GM_PWT, last && post, act);
            }
#else
        /* panel outer: its KC x PW slice stays in L1 across the row groups */
        for (; p < np; p++) {
            const int e = edge && p == np - 1;
            FA__GM_T *Yp = e ? Ye : y + (ptrdiff_t)p * FA__GM_PWT;
            const ptrdiff_t ly = e ? FA__GM_PWT : ys;
            const FA__GM_T *bp = bias ? (e ? Be : bias + (ptrdiff_t)p * FA__GM_PWT) : bias;
            for (int g = 0; g < ng; g++) {
                FA__GM_N(fa__gm_rows)(Xp + (ptrdiff_t)g * FA_GM_KC * FA__GM_MR, Wk + p * pst, pst,
                                      kc, Yp + (ptrdiff_t)g * FA__GM_MR * ly, ly, bp, first, last,
                                      relu, g == ng - 1 ? rlast : FA__GM_MR, 1);
                FA__GM_N(fa__gm_post)(Yp + (ptrdiff_t)g * FA__GM_MR * ly, ly,
                                      g == ng - 1 ? rlast : FA__GM_MR, FA__GM_PWT, last && post, act);
            }
        }
#endif
        if (last) break;
        k0 += kc;
    }
    if (edge) {
        FA__GM_T *yo = y + (ptrdiff_t)(np - 1) * FA__GM_PWT;
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nlast; j++) yo[(ptrdiff_t)i * ys + j] = Ye[(ptrdiff_t)i * FA__GM_PWT + j];
    }
}
#undef FA__GM_PWT

#else /* !FA__GM_PASS */
/* ======================================================================= */
#ifndef FASTATTN_FA_GEMM_H
#define FASTATTN_FA_GEMM_H

#include <stdint.h>
#include <string.h>
#include "fa_tiles.h"
#include "fa_act.h"

/* K slice: the lanes-layout tile's LIN_KC (the slice boundaries are where the
 * accumulators are stored as T and reloaded; exact, but kept the same so no
 * build with excess register precision could ever differ) */
#ifndef FA_GM_KC
#  define FA_GM_KC 256
#endif

/* Register blocking: MR rows x NV vectors (accumulators MR*NV, plus NV
 * panel vectors and a broadcast).  FA__GM_PFOR(R): panels per micro-tile
 * when a task has a single group of R < MR rows (short inputs). */
#if defined(FA__GM_MR)
   /* given by the includer (tuning experiments) */
#elif defined(FA__ISA_SCALAR)
#  define FA__GM_MR 4
#  define FA__GM_NV 4
#elif FA__NREGS >= 32
#  define FA__GM_MR 14
#  define FA__GM_NV 2
#else
#  define FA__GM_MR 6
#  define FA__GM_NV 2
#endif
#if FA__GM_MR > 14
#  error "FA__GM_MR is at most 14"
#endif
#define FA_GM_MR FA__GM_MR   /* rows per micro-tile (the driver's row groups) */
#ifndef FA__GM_PFOR
#  if FA__NREGS >= 32
#    define FA__GM_PFOR(R) ((R) <= 2 ? 4 : (R) <= 4 ? 3 : (R) <= 6 ? 2 : 1)
#  else
#    define FA__GM_PFOR(R) ((R) <= 1 ? 4 : (R) <= 3 ? 2 : 1)
#  endif
#endif
#define FA__GM_PMAX 4
#ifndef FA__GM_PFD
#  define FA__GM_PFD 32
#endif
#ifndef FA__GM_GOUTER
#  define FA__GM_GOUTER 0
#endif
/* rows per task block: a multiple of MR, the packed X block MB x KC in L2 */
#ifndef FA_GM_MB
#  define FA_GM_MB (FA__GM_MR * (FA__GM_MR >= 12 ? 8 : 16))
#endif

/* activation codes of fa_gemm_packed: fa_act.h's FA_ACT_* (the bf16 GEMM
 * takes the same codes, so the Cython layer passes one code to either) */
#define FA_GM_NONE FA_ACT_NONE
#define FA_GM_RELU FA_ACT_RELU
#define FA_GM_GELU FA_ACT_GELU
#define FA_GM_GELU_TANH FA_ACT_GELU_TANH
#define FA_GM_SILU FA_ACT_SILU

/* The float32 activations applied after the last store (fa_act.h; ReLU runs
 * in the registers instead, so only GELU / tanh-GELU / SiLU get here). */
FA__PUB void fa_gemm_act_f32(float *o, ptrdiff_t n, int act)
{
    if (act == FA_GM_GELU || act == FA_GM_GELU_TANH || act == FA_GM_SILU)
        fa_act_f32(o, n, act);
}
/* double: no fused activation (the callers run it as a row pass) */
FA__AI void fa__gm_act_none(double *o, ptrdiff_t n, int act) { (void)o; (void)n; (void)act; }

#define FA__GM_CAT2(a, b) a##b
#define FA__GM_CAT(a, b) FA__GM_CAT2(a, b)
#define FA__GM_N(name) FA__GM_CAT(name, FA__GM_SUF)
#define FA__GM_PASS 1

#define FA__GM_T float
#define FA__GM_V fa__vs
#define FA__GM_VW FA__VWS
#define FA__GM_SUF _f32
#define fa__gm_ld fa__ld_s
#define fa__gm_ldu fa__ldu_s
#define fa__gm_stu fa__stu_s
#define fa__gm_set1 fa__set1_s
#define fa__gm_zero fa__zero_s
#define fa__gm_fma fa__fma_s
#define fa__gm_add fa__add_s
#define fa__gm_max fa__max_s
#define FA__GM_ACT fa_gemm_act_f32
#include "fa_gemm.h"
#undef FA__GM_T
#undef FA__GM_V
#undef FA__GM_VW
#undef FA__GM_SUF
#undef fa__gm_ld
#undef fa__gm_ldu
#undef fa__gm_stu
#undef fa__gm_set1
#undef fa__gm_zero
#undef fa__gm_fma
#undef fa__gm_add
#undef fa__gm_max
#undef FA__GM_ACT

#define FA__GM_T double
#define FA__GM_V fa__vd
#define FA__GM_VW FA__VWD
#define FA__GM_SUF _f64
#define fa__gm_ld fa__ld_d
#define fa__gm_ldu fa__ldu_d
#define fa__gm_stu fa__stu_d
#define fa__gm_set1 fa__set1_d
#define fa__gm_zero fa__zero_d
#define fa__gm_fma fa__fma_d
#define fa__gm_add fa__add_d
#define fa__gm_max fa__max_d
#define FA__GM_ACT fa__gm_act_none
#include "fa_gemm.h"
#undef FA__GM_T
#undef FA__GM_V
#undef FA__GM_VW
#undef FA__GM_SUF
#undef fa__gm_ld
#undef fa__gm_ldu
#undef fa__gm_stu
#undef fa__gm_set1
#undef fa__gm_zero
#undef fa__gm_fma
#undef fa__gm_add
#undef fa__gm_max
#undef FA__GM_ACT
#undef FA__GM_PASS

#endif /* FASTATTN_FA_GEMM_H */
#endif /* FA__GM_PASS */
