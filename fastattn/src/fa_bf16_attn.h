/*
 * fa_bf16_attn.h -- bfloat16 operands for the fused attention kernel.
 *
 * The portable path (every build): bf16 Q, K and V are widened to float32
 * inside the kernel -- the query block once per task straight into the
 * transposed, pre-scaled Qt of the lanes layout (or the R x D rows of the
 * rows layout), each block of keys and values into a small per-thread fp32
 * scratch right before the fp32 tiles of fa_tiles.h use it -- so DRAM and
 * cache traffic is that of bf16 (half of fp32) while the arithmetic, the
 * online softmax and the accumulators are exactly the fp32 kernel's.  The
 * float32 result is therefore bit-identical to the fp32 kernel run on the
 * widened inputs (same build) when D and Dv are whole vectors (multiples of
 * 16: every model head size); otherwise the row tiles' scalar tails may
 * differ by the compiler's choice to contract a multiply-add.  The bf16
 * output is the float32 result rounded once, to nearest even.
 *
 * bf16 is handled as its bit pattern (uint16_t): widening is a 16-bit shift,
 * rounding is round-to-nearest-even on the bits, NaN becomes the quiet NaN
 * sign|0x7FC0 and +-inf stays +-inf (the same bits as ml_dtypes' astype).
 *
 * Functions (C99, static inline, no globals):
 *   fa_bf16_widen1(x)               one value
 *   fa_bf16_round1(x)               one value, round to nearest even
 *   fa_bf16_widen_rows(src, ss, nr, nc, dst)
 *                                   dst[r*nc + c] = widen(src[r*ss + c])
 *   fa_bf16_round_row(src, n, dst)  dst[c] = round(src[c])
 *   fa_pack_qt_bf16(q, qs, nr, D, scale, Qt, tmp)
 *                                   fa_pack_qt_f32 on widened q (identical bits)
 *   fa_store_ot_bf16(Ot, l, nr, Dv, o, os, tmp)
 *                                   round(fa_store_ot_f32's value) into bf16 o
 *                                   (tmp: nr x D / nr x Dv floats of scratch)
 *   fa_dot_rows_bf16k(Q, R, K, ks, nk, D, s, lds)
 *   fa_axpy_rows_bf16v(P, R, ldp, V, vs, nk, Dv, O)
 *                                   fa_dot_rows_f32 / fa_axpy_rows_f32 (the
 *                                   rows layout, decode) reading bf16 K / V
 *                                   straight from memory: a widening vector
 *                                   load instead of a float load, every other
 *                                   operation and its order unchanged, so the
 *                                   same bits as the f32 tiles on widened K/V
 *                                   and no scratch round trip on the
 *                                   bandwidth-bound decode path
 */
#ifndef FASTATTN_FA_BF16_ATTN_H
#define FASTATTN_FA_BF16_ATTN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fa_tiles.h"
#include "fa_util.h"

static inline float fa_bf16_widen1(uint16_t h);
static inline uint16_t fa_bf16_round1(float x);
static inline void fa_bf16_widen_rows(const uint16_t *src, ptrdiff_t ss, int nr, int nc,
                                      float *dst);
static inline void fa_bf16_round_row(const float *src, int n, uint16_t *dst);
static inline void fa_pack_qt_bf16(const uint16_t *q, ptrdiff_t qs, int nr, int D, float scale,
                                   float *Qt, float *tmp);
static inline void fa_store_ot_bf16(const float *Ot, const float *l, int nr, int Dv, uint16_t *o,
                                    ptrdiff_t os, float *tmp);

static inline float fa_bf16_widen1(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* branch-free, so that the row loops below vectorise */
static inline uint16_t fa_bf16_round1(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;    /* nearest, ties to even */
    uint32_t qnan = ((u >> 16) & 0x8000u) | 0x7FC0u;        /* NaN: quiet, sign kept */
    return (uint16_t)(((u & 0x7FFFFFFFu) > 0x7F800000u) ? qnan : r);
}

/* plain loops: the compiler vectorises them for each build's -m flags */
static inline void fa_bf16_widen_rows(const uint16_t *src, ptrdiff_t ss, int nr, int nc,
                                      float *dst)
{
    for (int r = 0; r < nr; r++) {
        const uint16_t *s = src + (ptrdiff_t)r * ss;
        uint32_t *d = (uint32_t *)(void *)(dst + (ptrdiff_t)r * nc);
        for (int c = 0; c < nc; c++) d[c] = (uint32_t)s[c] << 16;
    }
}

static inline void fa_bf16_round_row(const float *src, int n, uint16_t *dst)
{
    for (int c = 0; c < n; c++) dst[c] = fa_bf16_round1(src[c]);
}

/* Qt[d*FA_BR + i] = widen(q[i*qs + d]) * scale, lanes i >= nr zero: the rows
 * widened into tmp (nr x D floats) and fa_pack_qt_f32's transposing pack,
 * the same single multiply, so the same bits as the fp32 kernel */
static inline void fa_pack_qt_bf16(const uint16_t *q, ptrdiff_t qs, int nr, int D, float scale,
                                   float *Qt, float *tmp)
{
    fa_bf16_widen_rows(q, qs, nr, D, tmp);
    fa_pack_qt_f32(tmp, D, nr, D, scale, Qt);
}

/* o[i*os + d] = round(Ot[d*FA_BR + i] * (1 / l[i])), 0 where l[i] == 0: the
 * value fa_store_ot_f32 stores (into tmp, nr x Dv floats), rounded once */
static inline void fa_store_ot_bf16(const float *Ot, const float *l, int nr, int Dv, uint16_t *o,
                                    ptrdiff_t os, float *tmp)
{
    fa_store_ot_f32(Ot, l, nr, Dv, tmp, Dv);
    for (int i = 0; i < nr; i++)
        fa_bf16_round_row(tmp + (size_t)i * Dv, Dv, o + (ptrdiff_t)i * os);
}

/* ---- the rows layout reading bf16 K/V in place ---------------------------
 * fa__ldu_bf16: FA__VWS bf16 values widened into one float vector. */
#if defined(FA__ISA_AVX512)
FA__AI fa__vs fa__ldu_bf16(const uint16_t *p)
{
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
#elif defined(FA__ISA_AVX2)
FA__AI fa__vs fa__ldu_bf16(const uint16_t *p)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#elif defined(FA__ISA_SSE2)
FA__AI fa__vs fa__ldu_bf16(const uint16_t *p)
{
    __m128i h = _mm_loadl_epi64((const __m128i *)(const void *)p);
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
}
#else
FA__AI fa__vs fa__ldu_bf16(const uint16_t *p)
{
    float t[FA__VWS];
    for (int i = 0; i < FA__VWS; i++) t[i] = fa_bf16_widen1(p[i]);
    return fa__ldu_s(t);
}
#endif

/* fa__dotr_micro_f32 with bf16 K */
FA__AI void fa__dotr_micro_bf16k(const float *Q, ptrdiff_t D, const uint16_t *K,
                                 ptrdiff_t ks, float *s, ptrdiff_t lds,
                                 const int RC, const int KB, ptrdiff_t pfo)
{
    fa__vs acc[4][8];
    int r, b;
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (b = 0; b < KB; b++) acc[r][b] = fa__zero_s();
    const ptrdiff_t Dvec = D - D % FA__VWS;
    for (ptrdiff_t d = 0; d < Dvec; d += FA__VWS) {
        fa__vs kv[8];
        FA__UNROLL for (b = 0; b < KB; b++) kv[b] = fa__ldu_bf16(K + b * ks + d);
        FA__UNROLL for (b = 0; b < KB; b++) FA__PREFETCH(K + b * ks + pfo + d);
        FA__UNROLL for (r = 0; r < RC; r++) {
            fa__vs qv = fa__ldu_s(Q + r * D + d);
            FA__UNROLL for (b = 0; b < KB; b++) acc[r][b] = fa__fma_s(qv, kv[b], acc[r][b]);
        }
    }
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (b = 0; b < KB; b++) {
            float t = fa__hsum_f32(acc[r][b]);
            for (ptrdiff_t dd = Dvec; dd < D; dd++)
                t += Q[r * D + dd] * fa_bf16_widen1(K[b * ks + dd]);
            s[r * lds + b] = t;
        }
}

FA__AI void fa__dotr_rows_bf16k(const float *Q, ptrdiff_t D, const uint16_t *K,
                                ptrdiff_t ks, int j0, int j1, int nk, float *s,
                                ptrdiff_t lds, const int RC, const int KB)
{
    int j = j0;
#define FA__PFO(kb) (j + (kb) + FA__PF_KEYS <= nk ? FA__PF_KEYS * ks : 0)
    for (; j + KB <= j1; j += KB)
        fa__dotr_micro_bf16k(Q, D, K + j * ks, ks, s + j, lds, RC, KB, FA__PFO(KB));
    if (KB > 4 && j + 4 <= j1) {
        fa__dotr_micro_bf16k(Q, D, K + j * ks, ks, s + j, lds, RC, 4, FA__PFO(4));
        j += 4;
    }
    if (KB > 2 && j + 2 <= j1) {
        fa__dotr_micro_bf16k(Q, D, K + j * ks, ks, s + j, lds, RC, 2, FA__PFO(2));
        j += 2;
    }
    for (; j < j1; j++)
        fa__dotr_micro_bf16k(Q, D, K + j * ks, ks, s + j, lds, RC, 1, FA__PFO(1));
#undef FA__PFO
}

static inline void fa_dot_rows_bf16k(const float *Q, int R, const uint16_t *K, ptrdiff_t ks,
                                     int nk, int D, float *s, int lds)
{
    for (int j = 0; j < nk; j += FA__ROWS_JB) {
        int j1 = nk - j < FA__ROWS_JB ? nk : j + FA__ROWS_JB;
        int r = 0;
        for (; r + 4 <= R; r += 4)
            fa__dotr_rows_bf16k(Q + (ptrdiff_t)r * D, D, K, ks, j, j1, nk, s + (ptrdiff_t)r * lds, lds, 4, 2);
        if (r + 2 <= R) {
            fa__dotr_rows_bf16k(Q + (ptrdiff_t)r * D, D, K, ks, j, j1, nk, s + (ptrdiff_t)r * lds, lds, 2, 4);
            r += 2;
        }
        if (r < R)
            fa__dotr_rows_bf16k(Q + (ptrdiff_t)r * D, D, K, ks, j, j1, nk, s + (ptrdiff_t)r * lds, lds, 1, 8);
    }
}

/* fa__axpy_micro_f32 with bf16 V */
FA__AI void fa__axpy_micro_bf16v(const float *P, ptrdiff_t ldp, const uint16_t *V,
                                 ptrdiff_t vs, int nk, float *O, ptrdiff_t Dv,
                                 const int RC, const int CW, ptrdiff_t pfo)
{
    fa__vs acc[4][8];
    int r, c;
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (c = 0; c < CW; c++) acc[r][c] = fa__ldu_s(O + r * Dv + c * FA__VWS);
    for (ptrdiff_t j = 0; j < nk; j++) {
        fa__vs vv[8];
        FA__UNROLL for (c = 0; c < CW; c++) vv[c] = fa__ldu_bf16(V + j * vs + c * FA__VWS);
        FA__UNROLL for (c = 0; c < CW; c += 32 / FA__VWS + (32 < FA__VWS))
            FA__PREFETCH(V + j * vs + pfo + c * FA__VWS);
        FA__UNROLL for (r = 0; r < RC; r++) {
            fa__vs pv = fa__set1_s(P[r * ldp + j]);
            FA__UNROLL for (c = 0; c < CW; c++) acc[r][c] = fa__fma_s(pv, vv[c], acc[r][c]);
        }
    }
    FA__UNROLL for (r = 0; r < RC; r++)
        FA__UNROLL for (c = 0; c < CW; c++) fa__stu_s(O + r * Dv + c * FA__VWS, acc[r][c]);
}

FA__AI void fa__axpy_rowsc_bf16v(const float *P, ptrdiff_t ldp, const uint16_t *V,
                                 ptrdiff_t vs, int nk, float *O, ptrdiff_t Dv,
                                 const int RC, const int CW, ptrdiff_t pfo)
{
    const ptrdiff_t dblk = Dv - Dv % (CW * FA__VWS), dvec = Dv - Dv % FA__VWS;
    ptrdiff_t d;
    for (d = 0; d < dblk; d += CW * FA__VWS)
        fa__axpy_micro_bf16v(P, ldp, V + d, vs, nk, O + d, Dv, RC, CW, pfo);
    for (d = dblk; d < dvec; d += FA__VWS)
        fa__axpy_micro_bf16v(P, ldp, V + d, vs, nk, O + d, Dv, RC, 1, pfo);
    for (d = dvec; d < Dv; d++)
        FA__UNROLL for (int r = 0; r < RC; r++) {
            float o = O[r * Dv + d];
            for (ptrdiff_t j = 0; j < nk; j++) o += P[r * ldp + j] * fa_bf16_widen1(V[j * vs + d]);
            O[r * Dv + d] = o;
        }
}

static inline void fa_axpy_rows_bf16v(const float *P, int R, int ldp, const uint16_t *V,
                                      ptrdiff_t vs, int nk, int Dv, float *O)
{
    for (int j = 0; j < nk; j += FA__ROWS_JB) {
        int jb = nk - j < FA__ROWS_JB ? nk - j : FA__ROWS_JB;
        const uint16_t *Vj = V + j * vs;
        ptrdiff_t pfo = (j + jb + FA__ROWS_JB <= nk) ? FA__ROWS_JB * vs : 0;
        int r = 0;
        for (; r + 4 <= R; r += 4)
            fa__axpy_rowsc_bf16v(P + (ptrdiff_t)r * ldp + j, ldp, Vj, vs, jb, O + (ptrdiff_t)r * Dv, Dv, 4, 2, pfo);
        if (r + 2 <= R) {
            fa__axpy_rowsc_bf16v(P + (ptrdiff_t)r * ldp + j, ldp, Vj, vs, jb, O + (ptrdiff_t)r * Dv, Dv, 2, 4, pfo);
            r += 2;
        }
        if (r < R)
            fa__axpy_rowsc_bf16v(P + (ptrdiff_t)r * ldp + j, ldp, Vj, vs, jb, O + (ptrdiff_t)r * Dv, Dv, 1, 8, pfo);
    }
}

/* ==========================================================================
 * amx build: the lanes layout (prefill) on AMX tiles (tdpbf16ps).
 *
 * A task is 64 query rows of one kv head and its G query heads.  Keys are
 * taken in super blocks of up to FA_BT_SB = 2 visible 64-key blocks (the
 * tiles the bounds and mask classification are made for; hidden ones are
 * skipped, a block hidden for one head only is left out of that head's
 * products).  Per super block:
 *   Vt = V^T             the blocks' values transposed (value rows x keys,
 *                        chunks of 32 keys, fa_bt_pack_vt): in dense calls
 *                        every key tile once per call by a parallel pass
 *                        before the tasks, in varlen calls once per task
 *                        for the whole GQA group (the same bits)
 *   St = K . Qp          S^T (keys x queries, the lanes layout) on tiles per
 *                        block: A = 16 keys x 32 features of K (in place
 *                        when D is a multiple of 32 and the block whole,
 *                        else a zero-padded copy Kp), B = Qp, the query
 *                        block's feature pairs transposed (VNNI), packed
 *                        once per task and head; fp32 accumulation.
 *   bounds, masks, ALiBi the fp32 lanes code (_bias_tile) on St scaled by
 *                        scale*log2(e), only on blocks that need them;
 *                        otherwise the scaling is fused into the softmax
 *   softmax              fa_bt_softmax_p, lane-wise over the queries: the
 *                        block max, a LAZY running max m (it moves only
 *                        when the new max exceeds it by more than
 *                        FA_BT_TAU = 8, log2 units; then l and that lane
 *                        group of O are rescaled), P = exp2(s - m) <= 2^8 in
 *                        fp32, l += P (fp32), and P rounded to bf16 (nearest
 *                        even) straight into the VNNI layout the product
 *                        reads (Pv: key pairs x queries), zeros past a
 *                        block's last key.  In real arithmetic the result
 *                        is the exact softmax whatever m is; m only keeps
 *                        exp2 in range.
 *   Ot += Vt . Pv        O^T (value rows x queries, fp32, the lanes layout
 *                        of the fp32 kernel) on tiles: C = 16 value rows x
 *                        16 queries, accumulated over all the super block's
 *                        32-key chunks before it goes back to memory.
 * At the end Ot / l is stored through fa_store_ot_f32 / _bf16 (the fp32
 * kernel's transposing store).  Tile registers: tmm0-3 the 2 x 2
 * accumulators, tmm4-5 A, tmm6-7 B; one configuration (every tile 16 rows x
 * 64 bytes) loaded at the start of each task and released at its end, so
 * every OpenMP thread configures its own.  Padding (features to 32 for QK,
 * values to 16, keys to 32 for PV) is zeros in both operands, so it adds
 * exact zeros.  Every query lane is computed independently of the others: a
 * query's bits depend only on its own row, the keys, and the fixed order of
 * the blocks and chunks, so results do not depend on the batch, the varlen
 * neighbours or the thread count.
 * ========================================================================== */
#if !defined(FA_BF16_ATTN_FORCE_WIDEN) && defined(FA__ISA_AVX512) && defined(__AVX512BF16__) \
    && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#  define FA_BF16_ATTN_AMX 1
#else
#  define FA_BF16_ATTN_AMX 0
#endif
/* the avx512bf16 build: the same layouts with the two products on vdpbf16ps */
#if !defined(FA_BF16_ATTN_FORCE_WIDEN) && !FA_BF16_ATTN_AMX && defined(FA__ISA_AVX512) \
    && defined(__AVX512BF16__)
#  define FA_BF16_ATTN_DP 1
#else
#  define FA_BF16_ATTN_DP 0
#endif
#define FA_BF16_ATTN_TILES (FA_BF16_ATTN_AMX || FA_BF16_ATTN_DP)

#define FA_BT_DP(D) (((D) + 31) / 32 * 32)     /* features padded for QK */
#define FA_BT_DVP(Dv) (((Dv) + 15) / 16 * 16)  /* values padded for PV */
#define FA_BT_SB 2                             /* 64-key blocks per super block */
#define FA_BT_TAU 8.0f                         /* lazy max threshold (log2) */

/* floats of per-thread scratch per head: Qp, Ot, m, l */
static inline size_t fa_bt_head_floats(int D, int Dv)
{
    return (size_t)FA_BT_DP(D) / 2 * FA_BR + (size_t)FA_BR * FA_BT_DVP(Dv) + 2 * FA_BR;
}
/* and shared by the group: St, Kp, Vt, Pv (each a multiple of 16 floats) */
static inline size_t fa_bt_st_floats(void) { return (size_t)FA_BT_SB * FA_BC * FA_BR; }
static inline size_t fa_bt_kp_floats(int D) { return (size_t)FA_BT_SB * FA_BC * FA_BT_DP(D) / 2; }
static inline size_t fa_bt_vt_floats(int Dv) { return (size_t)FA_BT_SB * FA_BC * FA_BT_DVP(Dv) / 2; }
static inline size_t fa_bt_pv_floats(void) { return (size_t)FA_BT_SB * FA_BC / 2 * FA_BR; }
static inline size_t fa_bt_shared_floats(int D, int Dv)
{
    return fa_bt_st_floats() + fa_bt_kp_floats(D) + fa_bt_vt_floats(Dv) + fa_bt_pv_floats();
}

/* query lanes a task computes: AMX tiles always take all 64 (16-query tiles
 * in pairs); vdpbf16ps only the 16-lane vectors holding one of the nr rows */
#if FA_BF16_ATTN_AMX
#  define FA_BT_NQ(nr) ((void)(nr), FA_BR)
#else
#  define FA_BT_NQ(nr) (((nr) + 15) / 16 * 16)
#endif

/* whether fa_bt_qk can read a block's K rows in place (else fa_bt_pack_k's
 * zero-padded copy): AMX tiles need whole 32-feature chunks of a whole block
 * with a positive stride; vdpbf16ps reads feature pairs of the nk rows it
 * uses, any stride, so only an odd D needs the copy */
static inline int fa_bt_k_in_place(int D, int nk, ptrdiff_t ks)
{
#if FA_BF16_ATTN_AMX
    return D % 32 == 0 && nk == FA_BC && ks > 0;
#else
    (void)nk; (void)ks;
    return D % 2 == 0;
#endif
}

#if FA_BF16_ATTN_TILES
#include <immintrin.h>

#if FA_BF16_ATTN_AMX
typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} fa__attn_tilecfg;

static inline void fa_bt_begin(void)
{
    fa__attn_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
}

static inline void fa_bt_end(void) { _tile_release(); }
#else
static inline void fa_bt_begin(void) {}
static inline void fa_bt_end(void) {}
#endif

static inline void fa__tr16x16_ps(__m512 r[16]);

/* Qp[p*FA_BR + i] = (q[i][2p], q[i][2p+1]) as a 32-bit pair; 0 past nr / D:
 * 16 x 16 transposes of the rows read as 32-bit pairs */
static inline void fa_bt_pack_q(const uint16_t *q, ptrdiff_t qs, int nr, int D, uint32_t *Qp)
{
    const int np = FA_BT_DP(D) / 2;
    for (int i0 = 0; i0 < FA_BR; i0 += 16)
        for (int p0 = 0; p0 < np; p0 += 16) {
            __m512 r[16];
            int d0 = 2 * p0, n = D - d0 < 32 ? D - d0 : 32;
            __mmask32 mk = (__mmask32)(n >= 32 ? 0xFFFFFFFFu : (n <= 0 ? 0u : ((1u << n) - 1u)));
            for (int k = 0; k < 16; k++)
                r[k] = (i0 + k < nr)
                    ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mk, q + (ptrdiff_t)(i0 + k) * qs + d0))
                    : _mm512_setzero_ps();
            fa__tr16x16_ps(r);
            for (int k = 0; k < 16; k++)
                _mm512_storeu_ps((float *)(void *)(Qp + (size_t)(p0 + k) * FA_BR + i0), r[k]);
        }
}

/* Kp[j*Dp + d] = K[j*ks + d], zeros past nk keys (up to FA_BC) and D */
static inline void fa_bt_pack_k(const uint16_t *K, ptrdiff_t ks, int nk, int D, uint16_t *Kp)
{
    const int Dp = FA_BT_DP(D);
    for (int j = 0; j < FA_BC; j++) {
        uint16_t *dst = Kp + (size_t)j * Dp;
        for (int d0 = 0; d0 < Dp; d0 += 32) {
            __m512i x = _mm512_setzero_si512();
            if (j < nk && d0 < D) {
                int n = D - d0 < 32 ? D - d0 : 32;
                __mmask32 mk = (__mmask32)(n == 32 ? 0xFFFFFFFFu : ((1u << n) - 1u));
                x = _mm512_maskz_loadu_epi16(mk, K + (ptrdiff_t)j * ks + d0);
            }
            _mm512_storeu_si512((void *)(dst + d0), x);
        }
    }
}

static inline void fa__tr16x16_ps(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);
        __m512 v1 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
        __m512 v3 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[k + 8] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        r[k + 4] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[k + 12] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}

/* One 64-key block of values transposed into its two chunks of 32 keys:
 * Vt[c*Dvp*32 + d*32 + jj] = V[(32c + jj)*vs + d] (bf16), zeros for keys
 * >= nk and Dv <= d < Dvp.  Key pairs interleaved (unpack), then 16 x 16
 * transposes of the 32-bit pairs. */
static inline void fa_bt_pack_vt(const uint16_t *V, ptrdiff_t vs, int nk, int Dv, uint16_t *Vt)
{
    const int Dvp = FA_BT_DVP(Dv);
    for (int c = 0; c < FA_BC / 32; c++) {
        uint16_t *dst = Vt + (size_t)c * Dvp * 32;
        const int j0 = 32 * c;
        for (int d0 = 0; d0 < Dvp; d0 += 32) {
            int n = Dv - d0 < 32 ? Dv - d0 : 32;
            __mmask32 mk = (__mmask32)(n >= 32 ? 0xFFFFFFFFu : (n <= 0 ? 0u : ((1u << n) - 1u)));
            __m512 lo[16], hi[16];
            for (int jp = 0; jp < 16; jp++) {
                int ja = j0 + 2 * jp, jb = ja + 1;
                __m512i a = ja < nk ? _mm512_maskz_loadu_epi16(mk, V + (ptrdiff_t)ja * vs + d0)
                                    : _mm512_setzero_si512();
                __m512i b = jb < nk ? _mm512_maskz_loadu_epi16(mk, V + (ptrdiff_t)jb * vs + d0)
                                    : _mm512_setzero_si512();
                lo[jp] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(a, b));
                hi[jp] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(a, b));
            }
            fa__tr16x16_ps(lo);
            fa__tr16x16_ps(hi);
            /* element e of an unpacked row: 128-bit lane e/4, slot e%4 */
            for (int e = 0; e < 16; e++) {
                int dl = d0 + 8 * (e >> 2) + (e & 3), dh = dl + 4;
                if (dl < Dvp) _mm512_storeu_ps((float *)(void *)(dst + (size_t)dl * 32), lo[e]);
                if (dh < Dvp) _mm512_storeu_ps((float *)(void *)(dst + (size_t)dh * 32), hi[e]);
            }
        }
    }
}

#if FA_BF16_ATTN_AMX
/* St[j*FA_BR + i] = sum_d K[j][d] q[i][d] for the nkt key tiles of 16 (all
 * 64 query lanes).  Kb: A rows (bf16) with row stride kstride elements. */
static inline void fa__amx_qk(const uint16_t *Kb, ptrdiff_t kstride, int nkt, int D,
                              const uint32_t *Qp, float *St)
{
    const int nc = FA_BT_DP(D) / 32;
    const size_t kbytes = (size_t)kstride * 2;
    for (int kt = 0; kt < nkt; kt += 2) {
        const int two = kt + 1 < nkt;
        for (int qt = 0; qt < FA_BR / 16; qt += 2) {
            _tile_zero(0);
            _tile_zero(1);
            if (two) {
                _tile_zero(2);
                _tile_zero(3);
            }
            for (int c = 0; c < nc; c++) {
                const uint32_t *qp = Qp + (size_t)c * 16 * FA_BR + qt * 16;
                _tile_loadd(4, Kb + (ptrdiff_t)kt * 16 * kstride + c * 32, kbytes);
                _tile_loadd(6, qp, FA_BR * 4);
                _tile_loadd(7, qp + 16, FA_BR * 4);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                if (two) {
                    _tile_loadd(5, Kb + (ptrdiff_t)(kt + 1) * 16 * kstride + c * 32, kbytes);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            float *s0 = St + (size_t)kt * 16 * FA_BR + qt * 16;
            _tile_stored(0, s0, FA_BR * 4);
            _tile_stored(1, s0 + 16, FA_BR * 4);
            if (two) {
                _tile_stored(2, s0 + 16 * FA_BR, FA_BR * 4);
                _tile_stored(3, s0 + 16 * FA_BR + 16, FA_BR * 4);
            }
        }
    }
}

#endif /* FA_BF16_ATTN_AMX */

#if FA_BF16_ATTN_DP
/* ---- the same products on vdpbf16ps (avx512bf16 build) ------------------
 * Lane i of a 16-float vector is query i (the lanes layout); a 32-bit element
 * is a bf16 pair, the even feature (or key) in its low half, which is how
 * fa_bt_pack_q, fa_bt_pack_vt and fa_bt_softmax_p lay them out, and how a
 * row of K read as 32-bit words already is.  vdpbf16ps adds both products of
 * a pair to the fp32 accumulator of its lane; every lane's chain runs over the
 * pairs in a fixed order, so a query's bits depend on its own row only. */
FA__AI __m512 fa__bt_dp(__m512 acc, __m512i a, __m512i b)
{
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

/* the pair at p (two bf16) in every lane */
FA__AI __m512i fa__bt_pair(const uint16_t *p)
{
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return _mm512_set1_epi32((int)u);
}

/* St[(j)*FA_BR + 16v + lane] = sum over np pairs, keys j < KB, vectors v < QV */
FA__AI void fa__dp_qk_micro(const uint16_t *K, ptrdiff_t ks, int np, const uint32_t *Qp,
                            float *St, const int QV, const int KB)
{
    __m512 acc[16][4];
    int b, v;
    FA__UNROLL for (b = 0; b < KB; b++)
        FA__UNROLL for (v = 0; v < QV; v++) acc[b][v] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        __m512i qv[4];
        FA__UNROLL for (v = 0; v < QV; v++)
            qv[v] = _mm512_loadu_si512((const void *)(Qp + (size_t)p * FA_BR + 16 * v));
        FA__UNROLL for (b = 0; b < KB; b++) {
            __m512i kp = fa__bt_pair(K + b * ks + 2 * p);
            FA__UNROLL for (v = 0; v < QV; v++) acc[b][v] = fa__bt_dp(acc[b][v], qv[v], kp);
        }
    }
    FA__UNROLL for (b = 0; b < KB; b++)
        FA__UNROLL for (v = 0; v < QV; v++) _mm512_storeu_ps(St + (size_t)b * FA_BR + 16 * v, acc[b][v]);
}

/* keys 0..nk-1 in groups of KB (24 accumulators), the tail by 4, 2, 1 */
FA__AI void fa__dp_qk_keys(const uint16_t *K, ptrdiff_t ks, int nk, int np, const uint32_t *Qp,
                           float *St, const int QV, const int KB)
{
    int j = 0;
    for (; j + KB <= nk; j += KB)
        fa__dp_qk_micro(K + j * ks, ks, np, Qp, St + (size_t)j * FA_BR, QV, KB);
    if (KB > 4 && j + 4 <= nk) {
        fa__dp_qk_micro(K + j * ks, ks, np, Qp, St + (size_t)j * FA_BR, QV, 4);
        j += 4;
    }
    if (KB > 2 && j + 2 <= nk) {
        fa__dp_qk_micro(K + j * ks, ks, np, Qp, St + (size_t)j * FA_BR, QV, 2);
        j += 2;
    }
    for (; j < nk; j++) fa__dp_qk_micro(K + j * ks, ks, np, Qp, St + (size_t)j * FA_BR, QV, 1);
}

/* Ot[(d0+b)*FA_BR + 16v] += the chunks' key pairs, value rows b < DB: the
 * accumulators loaded once and stored once per super block */
FA__AI void fa__dp_pv_micro(const uint16_t *const *va, const uint32_t *const *pb, const int *npr,
                            int nch, float *Ot, const int QV, const int DB)
{
    __m512 acc[16][4];
    int b, v;
    FA__UNROLL for (b = 0; b < DB; b++)
        FA__UNROLL for (v = 0; v < QV; v++) acc[b][v] = _mm512_loadu_ps(Ot + (size_t)b * FA_BR + 16 * v);
    for (int t = 0; t < nch; t++) {
        const uint16_t *vt = va[t];
        const uint32_t *pp = pb[t];
        for (int jp = 0; jp < npr[t]; jp++) {
            __m512i pv[4];
            FA__UNROLL for (v = 0; v < QV; v++)
                pv[v] = _mm512_loadu_si512((const void *)(pp + (size_t)jp * FA_BR + 16 * v));
            FA__UNROLL for (b = 0; b < DB; b++) {
                __m512i x = fa__bt_pair(vt + b * 32 + 2 * jp);
                FA__UNROLL for (v = 0; v < QV; v++) acc[b][v] = fa__bt_dp(acc[b][v], pv[v], x);
            }
        }
    }
    FA__UNROLL for (b = 0; b < DB; b++)
        FA__UNROLL for (v = 0; v < QV; v++) _mm512_storeu_ps(Ot + (size_t)b * FA_BR + 16 * v, acc[b][v]);
}

FA__AI void fa__dp_pv_rows(const uint16_t *const *va, const uint32_t *const *pb, const int *npr,
                           int nch, int Dvp, float *Ot, const int QV, const int DB)
{
    const uint16_t *vd[FA_BT_SB * FA_BC / 32];
    int d = 0, t;
#define FA__PVD(db)                                                                    \
    do {                                                                               \
        for (t = 0; t < nch; t++) vd[t] = va[t] + (size_t)d * 32;                      \
        fa__dp_pv_micro(vd, pb, npr, nch, Ot + (size_t)d * FA_BR, QV, db);             \
    } while (0)
    for (; d + DB <= Dvp; d += DB) FA__PVD(DB);
    if (DB > 8 && d + 8 <= Dvp) { FA__PVD(8); d += 8; }
    if (DB > 4 && d + 4 <= Dvp) { FA__PVD(4); d += 4; }
    if (DB > 2 && d + 2 <= Dvp) { FA__PVD(2); d += 2; }
    for (; d < Dvp; d++) FA__PVD(1);
#undef FA__PVD
}
#endif /* FA_BF16_ATTN_DP */

/* St[j*FA_BR + i] = sum_d K[j][d] q[i][d] for keys j < nk (AMX: every
 * 16-key tile up to nk, Kb zero-padded there) and the query lanes
 * i < FA_BT_NQ(nr).  Kb: the rows (bf16) with row stride kstride, in place
 * when fa_bt_k_in_place, else fa_bt_pack_k's copy (kstride FA_BT_DP(D)). */
static inline void fa_bt_qk(const uint16_t *Kb, ptrdiff_t kstride, int nk, int D,
                            const uint32_t *Qp, int nr, float *St)
{
#if FA_BF16_ATTN_AMX
    (void)nr;
    fa__amx_qk(Kb, kstride, (nk + 15) / 16, D, Qp, St);
#else
    const int np = (D + 1) / 2;    /* an odd D: the copy's zero makes the last pair */
    switch (FA_BT_NQ(nr) / 16) {
    case 1: fa__dp_qk_keys(Kb, kstride, nk, np, Qp, St, 1, 16); break;
    case 2: fa__dp_qk_keys(Kb, kstride, nk, np, Qp, St, 2, 12); break;
    case 3: fa__dp_qk_keys(Kb, kstride, nk, np, Qp, St, 3, 8); break;
    default: fa__dp_qk_keys(Kb, kstride, nk, np, Qp, St, 4, 6); break;
    }
#endif
}

/* St[j][i] *= scale, j < nk, i < FA_BT_NQ(nr) */
static inline void fa_bt_scale(float *St, int nk, float scale, int nr)
{
    const __m512 s = _mm512_set1_ps(scale);
    const int nq = FA_BT_NQ(nr);
    for (int j = 0; j < nk; j++)
        for (int i = 0; i < nq; i += 16) {
            float *p = St + (size_t)j * FA_BR + i;
            _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), s));
        }
}

/* exp2(x) for x <= 2^7 as 2^round(x) * p(x - round(x)) (vscalefps); p a
 * degree-5 fit of 2^f on [-1/2, 1/2], relative error 2.4e-7 evaluated in
 * fp32 (fa_tiles.h's degree 6: 1.1e-7), one FMA less per vector on the
 * kernel's vector-bound phase; 0 below -125 (no denormals), NaN stays NaN */
static inline __m512 fa__bt_exp2(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-125.0f);
    __mmask16 ok = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);
    __m512 xc = _mm512_max_ps(lo, x);                       /* NaN stays NaN */
    __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(xc, n);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.327816629782319e-03f), f,
                               _mm512_set1_ps(9.675555862486362e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5507078766822815e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022118747234344e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931469440460205e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001192092896f));
    return _mm512_maskz_scalef_ps(ok, p, n);
}

/* The online softmax step of one super block.  nks[s]: keys of block s
 * (rows s*FA_BC.. of St, pairs s*FA_BC/2.. of Pv), 0 = not in this head's
 * products.  St holds raw scores times `scale` (scale > 0; or 1 after
 * fa_bt_scale and the bias).  Per group of 16 query lanes: mx = the block
 * max, m moves to mx where mx > m + TAU (l and Ot's lanes times
 * exp2(m_old - m)), P = exp2(scale*s - m) (the masked -inf -> 0; an all
 * -inf lane subtracts 0), l += sum P in fp32, and
 * Pv[jp*FA_BR + i] = (bf16 P[2jp][i], bf16 P[2jp+1][i]), zeros past nk up to
 * the block's last 32-key chunk. */
static inline void fa_bt_softmax_p(const float *St, const int *nks, float scale, float *m,
                                   float *l, float *Ot, int Dv, int nr, uint32_t *Pv)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY), vsc = _mm512_set1_ps(scale);
    const __m512i perm = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                          24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                          16, 0);
    const int Dvp = FA_BT_DVP(Dv), nq = FA_BT_NQ(nr);
    for (int g = 0; g < nq; g += 16) {
        __m512 x0 = ninf, x1 = ninf, x2 = ninf, x3 = ninf;
        for (int s = 0; s < FA_BT_SB; s++) {
            const float *Sb = St + (size_t)s * FA_BC * FA_BR + g;
            const int nk = nks[s];
            int j = 0;
            for (; j + 4 <= nk; j += 4) {   /* s > x ? s : x: a NaN score is not a max */
                x0 = _mm512_max_ps(_mm512_loadu_ps(Sb + (size_t)j * FA_BR), x0);
                x1 = _mm512_max_ps(_mm512_loadu_ps(Sb + (size_t)(j + 1) * FA_BR), x1);
                x2 = _mm512_max_ps(_mm512_loadu_ps(Sb + (size_t)(j + 2) * FA_BR), x2);
                x3 = _mm512_max_ps(_mm512_loadu_ps(Sb + (size_t)(j + 3) * FA_BR), x3);
            }
            for (; j < nk; j++) x0 = _mm512_max_ps(_mm512_loadu_ps(Sb + (size_t)j * FA_BR), x0);
        }
        /* scale > 0: max(scale * s) == scale * max(s), rounding is monotone */
        __m512 mx = _mm512_mul_ps(_mm512_max_ps(_mm512_max_ps(x0, x1), _mm512_max_ps(x2, x3)), vsc);
        __m512 mo = _mm512_loadu_ps(m + g);
        __mmask16 up = _mm512_cmp_ps_mask(mx, _mm512_add_ps(mo, _mm512_set1_ps(FA_BT_TAU)),
                                          _CMP_GT_OQ);
        __m512 mn = _mm512_mask_blend_ps(up, mo, mx);
        __m512 lv = _mm512_loadu_ps(l + g);
        if (up) {
            _mm512_storeu_ps(m + g, mn);
            __m512 a = _mm512_mask_blend_ps(up, _mm512_set1_ps(1.0f),
                                            fa__bt_exp2(_mm512_sub_ps(mo, mn)));
            lv = _mm512_mul_ps(lv, a);
            for (int d = 0; d < Dvp; d++) {
                float *o = Ot + (size_t)d * FA_BR + g;
                _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_loadu_ps(o), a));
            }
        }
        /* m == -inf (every score so far -inf): subtract 0, exp2(-inf) = 0 */
        __m512 nme = _mm512_sub_ps(_mm512_setzero_ps(),
                                   _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(mn, ninf, _CMP_NEQ_UQ), mn));
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        for (int s = 0; s < FA_BT_SB; s++) {
            const float *Sb = St + (size_t)s * FA_BC * FA_BR + g;
            uint32_t *Pb = Pv + (size_t)s * FA_BC / 2 * FA_BR + g;
            const int nk = nks[s], np = (nk + 31) / 32 * 16;
            for (int jp = 0; jp < np; jp++) {
                const int ja = 2 * jp;
                __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
                if (ja + 1 < nk) {
                    p0 = fa__bt_exp2(_mm512_fmadd_ps(_mm512_loadu_ps(Sb + (size_t)ja * FA_BR), vsc, nme));
                    p1 = fa__bt_exp2(_mm512_fmadd_ps(_mm512_loadu_ps(Sb + (size_t)(ja + 1) * FA_BR), vsc, nme));
                } else if (ja < nk) {
                    p0 = fa__bt_exp2(_mm512_fmadd_ps(_mm512_loadu_ps(Sb + (size_t)ja * FA_BR), vsc, nme));
                }
                s0 = _mm512_add_ps(s0, p0);
                s1 = _mm512_add_ps(s1, p1);
                __m512i h = (__m512i)_mm512_cvtne2ps_pbh(p1, p0);   /* p0 low half, p1 high */
                _mm512_storeu_si512((void *)(Pb + (size_t)jp * FA_BR), _mm512_permutexvar_epi16(perm, h));
            }
        }
        _mm512_storeu_ps(l + g, _mm512_add_ps(lv, _mm512_add_ps(s0, s1)));
    }
}

#if FA_BF16_ATTN_AMX
/* Ot (Dvp x FA_BR, fp32) += Vt . Pv over the chunks of 32 keys of the blocks
 * with nks[s] > 0, in order: A = block s's V^T (vts[s], as fa_bt_pack_vt
 * writes it: 16 value rows x 32 keys), B = Pv (16 key pairs x 16 queries);
 * each 2 x 2 group of C tiles is loaded once and stored once per super
 * block. */
static inline void fa__amx_pvt(const uint16_t *const *vts, const int *nks, const uint32_t *Pv,
                               int Dv, float *Ot)
{
    const int Dvp = FA_BT_DVP(Dv), ndt = Dvp / 16;
    int nch = 0, ch[FA_BT_SB * FA_BC / 32];
    const uint16_t *va0[FA_BT_SB * FA_BC / 32];
    for (int s = 0; s < FA_BT_SB; s++)
        for (int c = 0; c < (nks[s] + 31) / 32; c++) {
            va0[nch] = vts[s] + (size_t)c * Dvp * 32;
            ch[nch++] = s * (FA_BC / 32) + c;
        }
    for (int dt = 0; dt < ndt; dt += 2) {
        const int two = dt + 1 < ndt;
        for (int qt = 0; qt < FA_BR / 16; qt += 2) {
            float *o0 = Ot + (size_t)dt * 16 * FA_BR + qt * 16;
            _tile_loadd(0, o0, FA_BR * 4);
            _tile_loadd(1, o0 + 16, FA_BR * 4);
            if (two) {
                _tile_loadd(2, o0 + 16 * FA_BR, FA_BR * 4);
                _tile_loadd(3, o0 + 16 * FA_BR + 16, FA_BR * 4);
            }
            for (int t = 0; t < nch; t++) {
                const int c = ch[t];
                const uint32_t *pb = Pv + (size_t)c * 16 * FA_BR + qt * 16;
                const uint16_t *va = va0[t] + (size_t)dt * 16 * 32;
                _tile_loadd(4, va, 64);
                _tile_loadd(6, pb, FA_BR * 4);
                _tile_loadd(7, pb + 16, FA_BR * 4);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                if (two) {
                    _tile_loadd(5, va + 16 * 32, 64);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            _tile_stored(0, o0, FA_BR * 4);
            _tile_stored(1, o0 + 16, FA_BR * 4);
            if (two) {
                _tile_stored(2, o0 + 16 * FA_BR, FA_BR * 4);
                _tile_stored(3, o0 + 16 * FA_BR + 16, FA_BR * 4);
            }
        }
    }
}

#endif /* FA_BF16_ATTN_AMX */

/* Ot (Dvp x FA_BR, fp32) += Vt . Pv over the 32-key chunks of the super
 * block's blocks with nks[s] > 0, in order, for the query lanes
 * i < FA_BT_NQ(nr): AMX tiles, or vdpbf16ps over the chunks' key pairs up to
 * the last key (the zero pairs past it would add nothing) */
static inline void fa_bt_pvt(const uint16_t *const *vts, const int *nks, const uint32_t *Pv,
                             int Dv, int nr, float *Ot)
{
#if FA_BF16_ATTN_AMX
    (void)nr;
    fa__amx_pvt(vts, nks, Pv, Dv, Ot);
#else
    const int Dvp = FA_BT_DVP(Dv);
    int nch = 0, npr[FA_BT_SB * FA_BC / 32];
    const uint16_t *va[FA_BT_SB * FA_BC / 32];
    const uint32_t *pb[FA_BT_SB * FA_BC / 32];
    for (int s = 0; s < FA_BT_SB; s++)
        for (int c = 0; c < (nks[s] + 31) / 32; c++) {
            int left = nks[s] - 32 * c;
            va[nch] = vts[s] + (size_t)c * Dvp * 32;
            pb[nch] = Pv + (size_t)(s * (FA_BC / 32) + c) * 16 * FA_BR;
            npr[nch++] = left >= 32 ? 16 : (left + 1) / 2;
        }
    switch (FA_BT_NQ(nr) / 16) {
    case 1: fa__dp_pv_rows(va, pb, npr, nch, Dvp, Ot, 1, 16); break;
    case 2: fa__dp_pv_rows(va, pb, npr, nch, Dvp, Ot, 2, 12); break;
    case 3: fa__dp_pv_rows(va, pb, npr, nch, Dvp, Ot, 3, 8); break;
    default: fa__dp_pv_rows(va, pb, npr, nch, Dvp, Ot, 4, 6); break;
    }
#endif
}

#else  /* the widening builds: never called (the kernels test FA_BF16_ATTN_TILES) */
static inline void fa_bt_begin(void) {}
static inline void fa_bt_end(void) {}
static inline void fa_bt_pack_q(const uint16_t *q, ptrdiff_t qs, int nr, int D, uint32_t *Qp)
{ (void)q; (void)qs; (void)nr; (void)D; (void)Qp; }
static inline void fa_bt_pack_k(const uint16_t *K, ptrdiff_t ks, int nk, int D, uint16_t *Kp)
{ (void)K; (void)ks; (void)nk; (void)D; (void)Kp; }
static inline void fa_bt_pack_vt(const uint16_t *V, ptrdiff_t vs, int nk, int Dv, uint16_t *Vt)
{ (void)V; (void)vs; (void)nk; (void)Dv; (void)Vt; }
static inline void fa_bt_qk(const uint16_t *Kb, ptrdiff_t kstride, int nk, int D,
                            const uint32_t *Qp, int nr, float *St)
{ (void)Kb; (void)kstride; (void)nk; (void)D; (void)Qp; (void)nr; (void)St; }
static inline void fa_bt_scale(float *St, int nk, float scale, int nr)
{ (void)St; (void)nk; (void)scale; (void)nr; }
static inline void fa_bt_softmax_p(const float *St, const int *nks, float scale, float *m,
                                   float *l, float *Ot, int Dv, int nr, uint32_t *Pv)
{ (void)St; (void)nks; (void)scale; (void)m; (void)l; (void)Ot; (void)Dv; (void)nr; (void)Pv; }
static inline void fa_bt_pvt(const uint16_t *const *vts, const int *nks, const uint32_t *Pv,
                             int Dv, int nr, float *Ot)
{ (void)vts; (void)nks; (void)Pv; (void)Dv; (void)nr; (void)Ot; }
#endif /* FA_BF16_ATTN_TILES */


#endif /* FASTATTN_FA_BF16_ATTN_H */
