/* The float32 activations fused into the GEMMs' stores (fa_gemm.h's packed
 * fp32 GEMM and fa_bf16.h's bf16 GEMM), in one place.  Written so gcc
 * vectorises them with the including build's ISA (no libm calls); the row
 * kernels of _layers.pyx call them too.  exp by range reduction and
 * cephes' degree-5 polynomial; GELU's erf by a rational approximation
 * (erf's max |error| <= 4.5e-7 in float32, see FA_ACT_GELU).  Elementwise,
 * so a value never depends on the other rows or on where a tile starts.
 * C99, static inline only, no globals. */
#ifndef FA_ACT_H
#define FA_ACT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* activation codes (shared with the Cython layer) */
enum { FA_ACT_NONE = 0, FA_ACT_RELU = 1, FA_ACT_GELU = 2, FA_ACT_GELU_TANH = 3,
       FA_ACT_SILU = 4, FA_ACT_QUICK_GELU = 5 };

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
static inline float fa_act_expf(float x)
{
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float t = x * 1.44269504088896341f;
    float r = t + 12582912.0f;          /* round to nearest integer */
    float n = r - 12582912.0f;
    float f = x - n * 0.693359375f;
    f = f - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    n = n == n ? n : 0.0f;              /* NaN: no undefined int conversion */
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* activation act (FA_ACT_*) over o[0..n) in place; FA_ACT_NONE and unknown
 * codes leave o alone */
static inline void fa_act_f32(float *o, ptrdiff_t n, int act)
{
    ptrdiff_t j;
    switch (act) {
    case FA_ACT_RELU:
        for (j = 0; j < n; j++)
            o[j] = o[j] > 0.0f ? o[j] : (o[j] == o[j] ? 0.0f : o[j]);   /* NaN stays NaN */
        break;
    case FA_ACT_GELU:
        /* 0.5 x (1 + erf(x / sqrt 2)), erf(z) = z P(z^2) / Q(z^2) on
         * |z| < 3.93 and +-1 beyond (1 - erf(3.93) < 3e-8, under half an ulp
         * of 1): no exp, one division, ~22 vector operations against ~55
         * for the exp-based A&S 7.1.26 it replaces (2.7 cycles per element
         * on Zen 4, most of the first feed-forward GEMM's store).  P (degree
         * 6) and Q (degree 4) are a least-squares-then-Lawson fit of erf on
         * [0, 4] made for fastattn: max |error| 5.5e-8 in exact arithmetic,
         * <= 4.5e-7 evaluated in float32 (A&S: 5.5e-7 in float32); the
         * GELU's max |error| 1.4e-6 near |x| = 5.5 (A&S: 4.7e-7), relative
         * 2.7e-5 where |GELU| >= 1e-2 (A&S: 1.7e-5; both near x = -2.6). */
        for (j = 0; j < n; j++) {
            float x = o[j];
            float z = x * 0.70710678118654752f;
            z = z < -3.93f ? -3.93f : z;        /* NaN passes both clamps */
            z = z > 3.93f ? 3.93f : z;
            float t = z * z;
            float p = 1.921624635e-08f;
            p = p * t - 1.990381797e-06f;
            p = p * t + 1.555598802e-04f;
            p = p * t + 4.294080699e-03f;
            p = p * t + 5.243688272e-02f;
            p = p * t + 2.139688928e-01f;
            p = p * t + 1.128378678e+00f;
            float q = 1.098279927e-03f;
            q = q * t + 1.555324329e-02f;
            q = q * t + 1.208097897e-01f;
            q = q * t + 5.229526554e-01f;
            q = q * t + 1.0f;
            float e = z * p / q;
            e = z >= 3.93f ? 1.0f : e;
            e = z <= -3.93f ? -1.0f : e;
            o[j] = 0.5f * x * (1.0f + e);
        }
        break;
    case FA_ACT_GELU_TANH:
        for (j = 0; j < n; j++) {
            float x = o[j];
            float z = 0.7978845608028654f * (x + 0.044715f * x * x * x);
            o[j] = x / (1.0f + fa_act_expf(-2.0f * z));
        }
        break;
    case FA_ACT_SILU:
        for (j = 0; j < n; j++) {
            float x = o[j];
            o[j] = x / (1.0f + fa_act_expf(-x));
        }
        break;
    case FA_ACT_QUICK_GELU:
        for (j = 0; j < n; j++) {
            float x = o[j];
            o[j] = x / (1.0f + fa_act_expf(-1.702f * x));
        }
        break;
    default:
        break;
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif /* FA_ACT_H */
