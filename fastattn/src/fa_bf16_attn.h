/*
 * fa_bf16_attn.h -- bfloat16 operands for the fused attention kernel.
 *
 * The portable path (every build): bf16 Q, K and V are widened to float32
 * inside the kernel -- the query block once per task straight into the
 * transposed, pre-scaled Qt of the lanes layout (or the R x D rows of the
 * rows layout), each block of keys and values into a small per-thread fp32
 * scratch right before the fp32 tiles of fa_tiles.h use it -- so DRAM and
 * cache traffic is that of bf16 (half of fp32) while the arithmetic, the
 * online softmax and the accumulators are exactly the fp32 kernel's.  For
 * inputs that are bf16 values, the float32 result is therefore bit-identical
 * to the fp32 kernel run on the widened inputs (same build); the bf16 output
 * is that float32 result rounded once, to nearest even.
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
 */
#ifndef FASTATTN_FA_BF16_ATTN_H
#define FASTATTN_FA_BF16_ATTN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "fa_tiles.h"
/* fa_bf16_to_f32 / fa_f32_to_bf16 (nearest even, NaN quiet with its sign):
   the GEMM header's scalar conversions, one definition for both */
#include "fa_bf16.h"

static inline void fa_bf16_widen_rows(const uint16_t *src, ptrdiff_t ss, int nr, int nc,
                                      float *dst);
static inline void fa_bf16_round_row(const float *src, int n, uint16_t *dst);
static inline void fa_pack_qt_bf16(const uint16_t *q, ptrdiff_t qs, int nr, int D, float scale,
                                   float *Qt);
static inline void fa_store_ot_bf16(const float *Ot, const float *l, int nr, int Dv, uint16_t *o,
                                    ptrdiff_t os);


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

#endif /* FASTATTN_FA_BF16_ATTN_H */
