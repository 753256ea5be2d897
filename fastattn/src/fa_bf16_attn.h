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
 *   fa_bf16_to_f32(x)               one value
 *   fa_f32_to_bf16(x)               one value, round to nearest even
 *   fa_bf16_widen_rows(src, ss, nr, nc, dst)
 *                                   dst[r*nc + c] = widen(src[r*ss + c])
 *   fa_bf16_round_row(src, n, dst)  dst[c] = round(src[c])
 *   fa_pack_qt_bf16(q, qs, nr, D, scale, Qt)
 *                                   fa_pack_qt_f32 on widened q (identical bits)
 *   fa_store_ot_bf16(Ot, l, nr, Dv, o, os)
 *                                   round(fa_store_ot_f32's value) into bf16 o
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

static inline float fa_bf16_to_f32(uint16_t h);
static inline uint16_t fa_f32_to_bf16(float x);
static inline void fa_bf16_widen_rows(const uint16_t *src, ptrdiff_t ss, int nr, int nc,
                                      float *dst);
static inline void fa_bf16_round_row(const float *src, int n, uint16_t *dst);
static inline void fa_pack_qt_bf16(const uint16_t *q, ptrdiff_t qs, int nr, int D, float scale,
                                   float *Qt);
static inline void fa_store_ot_bf16(const float *Ot, const float *l, int nr, int Dv, uint16_t *o,
                                    ptrdiff_t os);

static inline float fa_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t fa_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)           /* NaN: quiet, sign kept */
        return (uint16_t)((u >> 16 & 0x8000u) | 0x7FC0u);
    u += 0x7FFFu + ((u >> 16) & 1u);                /* nearest, ties to even */
    return (uint16_t)(u >> 16);
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
    for (int c = 0; c < n; c++) dst[c] = fa_f32_to_bf16(src[c]);
}

/* Qt[d*FA_BR + i] = widen(q[i*qs + d]) * scale, lanes i >= nr zero: the same
 * single multiply as fa_pack_qt_f32, so the same bits */
static inline void fa_pack_qt_bf16(const uint16_t *q, ptrdiff_t qs, int nr, int D, float scale,
                                   float *Qt)
{
    for (int i = 0; i < nr; i++) {
        const uint16_t *row = q + (ptrdiff_t)i * qs;
        for (int d = 0; d < D; d++) Qt[(size_t)d * FA_BR + i] = fa_bf16_to_f32(row[d]) * scale;
    }
    for (int d = 0; d < D; d++)
        for (int i = nr; i < FA_BR; i++) Qt[(size_t)d * FA_BR + i] = 0;
}

/* o[i*os + d] = round(Ot[d*FA_BR + i] * (1 / l[i])), 0 where l[i] == 0: the
 * value fa_store_ot_f32 stores, rounded once */
static inline void fa_store_ot_bf16(const float *Ot, const float *l, int nr, int Dv, uint16_t *o,
                                    ptrdiff_t os)
{
    float row[8];
    for (int i = 0; i < nr; i++) {
        float inv = (l[i] == 0) ? 0.0f : 1.0f / l[i];
        uint16_t *orow = o + (ptrdiff_t)i * os;
        for (int d0 = 0; d0 < Dv; d0 += 8) {
            int n = Dv - d0 < 8 ? Dv - d0 : 8;
            for (int k = 0; k < n; k++)
                row[k] = (inv == 0) ? 0.0f : Ot[(size_t)(d0 + k) * FA_BR + i] * inv;
            fa_bf16_round_row(row, n, orow + d0);
        }
    }
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
    for (int i = 0; i < FA__VWS; i++) t[i] = fa_bf16_to_f32(p[i]);
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
                t += Q[r * D + dd] * fa_bf16_to_f32(K[b * ks + dd]);
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
            for (ptrdiff_t j = 0; j < nk; j++) o += P[r * ldp + j] * fa_bf16_to_f32(V[j * vs + d]);
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

#endif /* FASTATTN_FA_BF16_ATTN_H */
