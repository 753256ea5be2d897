/* The float32 activations fused into the GEMMs' stores (fa_gemm.h's packed
 * fp32 GEMM and fa_bf16.h's bf16 GEMM), in one place.  Written so gcc
 * vectorises them with the including build's ISA (no libm calls); the row
 * kernels of _layers.pyx call them too.  exp by range reduction and
 * cephes' degree-5 polynomial, erf by Abramowitz & Stegun 7.1.26
 * (|error| <= 1.5e-7).  Elementwise, so a value never depends on the other
 * rows or on where a tile starts.  C99, static inline only, no globals. */
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
        for (j = 0; j < n; j++) {
            float x = o[j];
            float a = x * 0.70710678118654752f;
            float s = x < 0.0f ? -1.0f : 1.0f;
            a = a < 0.0f ? -a : a;
            float t = 1.0f / (1.0f + 0.3275911f * a);
            float y = 1.061405429f;
            y = y * t - 1.453152027f;
            y = y * t + 1.421413741f;
            y = y * t - 0.284496736f;
            y = y * t + 0.254829592f;
            float erf_a = 1.0f - y * t * fa_act_expf(-a * a);
            o[j] = 0.5f * x * (1.0f + s * erf_a);
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
