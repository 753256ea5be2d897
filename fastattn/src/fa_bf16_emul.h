/*
 * fa_bf16_emul.h -- plain C stand-ins for the AVX512-BF16 and AMX-BF16
 * instructions fa_bf16.h uses, for the C harness's emulation builds
 * (src/tests/build.sh: bf16_emul_dp, bf16_emul_amx).  They follow the
 * instructions' documented pseudocode, so the tile code (blocking, tails,
 * padding, tile configuration) is tested on CPUs without these instructions:
 *
 *   vdpbf16ps  per lane i: acc += a[2i+1] * b[2i+1]; acc += a[2i] * b[2i]
 *              (odd pair element first), each step one fp32 rounding (RNE);
 *              denormal inputs read as zero (DAZ), denormal results flushed
 *              to zero (FTZ).
 *   tdpbf16ps  per row m, pair k, column n: c += a[m][2k] * b[k][2n];
 *              c += a[m][2k+1] * b[k][2n+1] (even element first), same
 *              rounding, DAZ and FTZ.
 *   tileloadd / tilestored / tilezero / ldtilecfg / tilerelease: copies of
 *              rows x colsb bytes of the per-thread tile registers.
 *
 * The harness compares these with the real instructions bit for bit on a
 * CPU that has them.  Test-only: never compiled into the Python extension.
 */
#ifndef FASTATTN_FA_BF16_EMUL_H
#define FASTATTN_FA_BF16_EMUL_H

#include <stdint.h>
#include <string.h>
#include <math.h>

typedef struct { float f[16]; } fa__fv;
typedef struct { uint16_t h[32]; } fa__bv;

static inline float fa__emul_daz(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    if ((u & 0x7f800000u) == 0)
        u &= 0x80000000u;                 /* denormal (or zero) -> signed zero */
    memcpy(&f, &u, 4);
    return f;
}

static inline float fa__emul_ftz(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0)
        u &= 0x80000000u;
    memcpy(&f, &u, 4);
    return f;
}

/* one step: acc + a*b with one rounding (the product of two bf16 values is
 * exact in fp32's significand, so fmaf's single rounding is the rounding) */
static inline float fa__emul_step(float acc, uint16_t a, uint16_t b)
{
    return fa__emul_ftz(fmaf(fa__emul_daz(a), fa__emul_daz(b), acc));
}

static inline fa__fv FA__FV_ZERO(void)
{
    fa__fv v;
    memset(&v, 0, sizeof v);
    return v;
}
#define FA__FV_ST(p, v) memcpy((p), (v).f, 64)
static inline fa__bv FA__BV_LD(const void *p)
{
    fa__bv v;
    memcpy(v.h, p, 64);
    return v;
}
static inline fa__bv FA__BV_SET1(int32_t i)
{
    fa__bv v;
    for (int j = 0; j < 16; j++)
        memcpy(&v.h[2 * j], &i, 4);
    return v;
}
static inline fa__fv FA__DPBF16(fa__fv acc, fa__bv a, fa__bv b)
{
    for (int i = 0; i < 16; i++) {
        float t = acc.f[i];
        t = fa__emul_step(t, a.h[2 * i + 1], b.h[2 * i + 1]);
        t = fa__emul_step(t, a.h[2 * i], b.h[2 * i]);
        acc.f[i] = t;
    }
    return acc;
}

/* tiles: 8 registers of up to 16 rows x 64 bytes, per thread */
typedef struct { uint8_t b[16][64]; } fa__tile;
static __thread fa__tile fa__tmm[8];
static __thread uint8_t fa__trows[8];
static __thread uint16_t fa__tcolsb[8];
static __thread int fa__tconfigured;

static inline void FA__TCFG(const void *cfg)
{
    const uint8_t *c = (const uint8_t *)cfg;
    for (int t = 0; t < 8; t++) {
        memcpy(&fa__tcolsb[t], c + 16 + 2 * t, 2);
        fa__trows[t] = c[48 + t];
    }
    memset(fa__tmm, 0, sizeof fa__tmm);
    fa__tconfigured = 1;
}
static inline void fa__tcheck(int t)
{
    if (!fa__tconfigured || t < 0 || t > 7 || fa__trows[t] > 16 || fa__tcolsb[t] > 64)
        __builtin_trap();                 /* what the hardware would #UD / #GP on */
}
static inline void FA__TZERO(int t)
{
    fa__tcheck(t);
    memset(&fa__tmm[t], 0, sizeof(fa__tile));
}
static inline void FA__TLOAD(int t, const void *p, ptrdiff_t stride)
{
    fa__tcheck(t);
    memset(&fa__tmm[t], 0, sizeof(fa__tile));
    for (int r = 0; r < fa__trows[t]; r++)
        memcpy(fa__tmm[t].b[r], (const char *)p + r * stride, fa__tcolsb[t]);
}
static inline void FA__TSTORE(int t, void *p, ptrdiff_t stride)
{
    fa__tcheck(t);
    for (int r = 0; r < fa__trows[t]; r++)
        memcpy((char *)p + r * stride, fa__tmm[t].b[r], fa__tcolsb[t]);
}
static inline void FA__TDP(int c, int a, int b)
{
    fa__tcheck(c); fa__tcheck(a); fa__tcheck(b);
    int rows = fa__trows[c], ncol = fa__tcolsb[c] / 4, npair = fa__tcolsb[a] / 4;
    if (fa__trows[a] != rows || fa__trows[b] != npair || fa__tcolsb[b] != fa__tcolsb[c])
        __builtin_trap();
    for (int m = 0; m < rows; m++) {
        float tmp[16];
        uint16_t ar[32];
        memcpy(tmp, fa__tmm[c].b[m], 64);
        memcpy(ar, fa__tmm[a].b[m], 64);
        for (int k = 0; k < npair; k++) {
            uint16_t br[32];
            memcpy(br, fa__tmm[b].b[k], 64);
            for (int n = 0; n < ncol; n++) {
                tmp[n] = fa__emul_step(tmp[n], ar[2 * k], br[2 * n]);
                tmp[n] = fa__emul_step(tmp[n], ar[2 * k + 1], br[2 * n + 1]);
            }
        }
        memcpy(fa__tmm[c].b[m], tmp, 64);
    }
}
static inline void FA__TRELEASE(void)
{
    memset(fa__tmm, 0, sizeof fa__tmm);
    fa__tconfigured = 0;
}

#endif /* FASTATTN_FA_BF16_EMUL_H */
