/* fa_util.h -- small portable helpers for fastattn's Cython kernels:
 * aligned allocation, the OpenMP shim (serial stand-ins when the build has no
 * OpenMP), the name of the setup.py build this translation unit belongs to,
 * and the tile I/O: packing row-major (B, L, D) views into the lanes layout of
 * fa_tiles.h (FA_BR lanes, leading dimension FA_BR) and storing tiles back.
 * Includes fa_simd.h (instruction-set choice, FA_BR / FA_BC); does not need
 * fa_tiles.h. */
#ifndef FASTATTN_FA_UTIL_H
#define FASTATTN_FA_UTIL_H

#include <stdlib.h>
#include <stddef.h>
#include <string.h>

#include "fa_simd.h"

#ifdef _OPENMP
#include <omp.h>
#define FA_OPENMP 1
static inline int fa_omp_max_threads(void) { return omp_get_max_threads(); }
#else
#define FA_OPENMP 0
static inline int fa_omp_max_threads(void) { return 1; }
#endif /* FASTATTN_FA_UTIL_H */

/* The setup.py build (module suffix, the kernel module's ISA) from
 * fa_simd.h's choice: baseline is the sse2, generic or scalar layer. */
#if defined(FA__ISA_AVX512) && defined(__AMX_TILE__) && defined(__AMX_BF16__) \
    && defined(__AVX512BF16__)
#define FA_BUILD_ISA "amx"
#elif defined(FA__ISA_AVX512) && defined(__AVX512BF16__)
#define FA_BUILD_ISA "avx512bf16"
#elif defined(FA__ISA_AVX512)
#define FA_BUILD_ISA "avx512"
#elif defined(FA__ISA_AVX2)
#define FA_BUILD_ISA "avx2"
#else
#define FA_BUILD_ISA "baseline"
#endif /* FASTATTN_FA_UTIL_H */

#if FA_BR % 8 != 0
#  error "the tile I/O works on blocks of 8 lanes: FA_BR must be a multiple of 8"
#endif /* FASTATTN_FA_UTIL_H */

/* 64-byte aligned, zero-initialised buffer (NULL on failure or n == 0). */
static inline void *fa_aligned_calloc(size_t nbytes)
{
    void *p = NULL;
    if (nbytes == 0) nbytes = 64;
    nbytes = (nbytes + 63) & ~(size_t)63;
#if defined(_MSC_VER) || defined(_WIN32)
    p = _aligned_malloc(nbytes, 64);
#else
    if (posix_memalign(&p, 64, nbytes) != 0) p = NULL;
#endif /* FASTATTN_FA_UTIL_H */
    if (p) memset(p, 0, nbytes);
    return p;
}

static inline void fa_aligned_free(void *p)
{
#if defined(_MSC_VER) || defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif /* FASTATTN_FA_UTIL_H */
}

/* ---- the tile I/O functions (defined below by FA_DEF_TILE_IO and
 * FA_DEF_STORE_Y, once per dtype; the compiler checks these prototypes). */
static inline void fa_pack_qt_f32(const float *q, ptrdiff_t qs, int nr, int D, float scale, float *Qt);
static inline void fa_pack_qt_f64(const double *q, ptrdiff_t qs, int nr, int D, double scale, double *Qt);
static inline void fa_pack_qt_lanes_f32(const float *q, ptrdiff_t qs, int nr, int D, float scale,
                                        float *Qt, int nl);
static inline void fa_pack_qt_lanes_f64(const double *q, ptrdiff_t qs, int nr, int D, double scale,
                                        double *Qt, int nl);
static inline void fa_store_ot_f32(const float *Ot, const float *l, int nr, int Dv, float *o, ptrdiff_t os);
static inline void fa_store_ot_f64(const double *Ot, const double *l, int nr, int Dv, double *o,
                                   ptrdiff_t os);
static inline void fa_store_yt_f32(const float *Yt, int nr, int nn, const float *bias, int relu, float *o,
                                   ptrdiff_t os);
static inline void fa_store_yt_f64(const double *Yt, int nr, int nn, const double *bias, int relu,
                                   double *o, ptrdiff_t os);

/* ---- tile transposes between row-major (B, L, D) views and the lanes layout.
 * 8x8 blocks: on the avx2 and avx512 layers a 256-bit register transpose
 * (unpack/shuffle/permute; immintrin.h comes with fa_simd.h) so both the
 * row-major side and the lanes side are read and written as whole vectors;
 * elsewhere (and for ragged edges) plain loops. */
#if defined(FA__ISA_AVX2) || defined(FA__ISA_AVX512)
static inline void fa__tr8x8_ps(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#define FA__HAVE_TR8 1
#else
#define FA__HAVE_TR8 0
#endif /* FASTATTN_FA_UTIL_H */

#define FA_DEF_TILE_IO(T, SUF, FAST)                                           \
/* Qt[d*FA_BR + i] = q[i*qs + d] * scale for i < nr; lanes nr.. zeroed up to  \
 * nl (rounded up to 8, at most FA_BR): a narrow-lanes tile reads only its     \
 * fa_lanes_used(nr) lanes, so zeroing the other 48 of a 16-row block's 64     \
 * would be wasted stores */                                                   \
static inline void fa_pack_qt_lanes_##SUF(const T *q, ptrdiff_t qs, int nr,   \
                                          int D, T scale, T *Qt, int nl)       \
{                                                                              \
    if (nl > FA_BR) nl = FA_BR;                                                \
    for (int i0 = 0; i0 < nl; i0 += 8) {                                       \
        int n = nr - i0, d = 0;                                                \
        if (n < 0) n = 0;                                                      \
        if (n > 8) n = 8;                                                      \
        if (FAST && n == 8) d = fa__pack8_##SUF(q + (ptrdiff_t)i0 * qs, qs, D, \
                                                scale, Qt + i0);               \
        for (; d < D; d++) {                                                   \
            T *dst = Qt + (size_t)d * FA_BR + i0;                              \
            for (int ii = 0; ii < n; ii++)                                     \
                dst[ii] = q[(ptrdiff_t)(i0 + ii) * qs + d] * scale;            \
            for (int ii = n; ii < 8; ii++) dst[ii] = 0;                        \
        }                                                                      \
    }                                                                          \
}                                                                              \
/* every lane: nr packed, nr.. FA_BR zeroed */                                 \
static inline void fa_pack_qt_##SUF(const T *q, ptrdiff_t qs, int nr, int D,  \
                                    T scale, T *Qt)                            \
{                                                                              \
    fa_pack_qt_lanes_##SUF(q, qs, nr, D, scale, Qt, FA_BR);                    \
}                                                                              \
/* o[i*os + d] = Ot[d*FA_BR + i] / l[i], i < nr (0 where l[i] == 0: no key) */ \
static inline void fa_store_ot_##SUF(const T *Ot, const T *l, int nr, int Dv,  \
                                     T *o, ptrdiff_t os)                       \
{                                                                              \
    T inv[FA_BR];                                                              \
    for (int i = 0; i < nr; i++) inv[i] = (l[i] == 0) ? (T)0 : (T)1 / l[i];    \
    for (int i0 = 0; i0 < nr; i0 += 8) {                                       \
        int n = nr - i0 < 8 ? nr - i0 : 8, d = 0;                              \
        T *r0 = o + (ptrdiff_t)i0 * os;                                        \
        if (FAST && n == 8) d = fa__store8_##SUF(Ot + i0, inv + i0, Dv, r0, os); \
        for (; d < Dv; d++) {                                                  \
            const T *src = Ot + (size_t)d * FA_BR + i0;                        \
            for (int ii = 0; ii < n; ii++)                                     \
                r0[ii * os + d] = (inv[i0 + ii] == 0) ? (T)0 : src[ii] * inv[i0 + ii]; \
        }                                                                      \
    }                                                                          \
}

#if FA__HAVE_TR8
/* 8 full rows: d in whole blocks of 8; returns how many features were done */
static inline int fa__pack8_f32(const float *q, ptrdiff_t qs, int D, float scale,
                                float *Qt)
{
    __m256 s = _mm256_set1_ps(scale), r[8];
    int d0 = 0;
    for (; d0 + 8 <= D; d0 += 8) {
        for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(q + k * qs + d0);
        fa__tr8x8_ps(r);
        for (int k = 0; k < 8; k++)
            _mm256_storeu_ps(Qt + (size_t)(d0 + k) * FA_BR, _mm256_mul_ps(r[k], s));
    }
    return d0;
}
static inline int fa__store8_f32(const float *Ot, const float *inv, int Dv,
                                 float *o, ptrdiff_t os)
{
    __m256 r[8];
    int d0 = 0;
    for (int k = 0; k < 8; k++)
        if (inv[k] == 0) return 0;       /* a fully masked row: the plain loops */
    for (; d0 + 8 <= Dv; d0 += 8) {
        for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(Ot + (size_t)(d0 + k) * FA_BR);
        fa__tr8x8_ps(r);
        for (int k = 0; k < 8; k++)
            _mm256_storeu_ps(o + k * os + d0, _mm256_mul_ps(r[k], _mm256_set1_ps(inv[k])));
    }
    return d0;
}
FA_DEF_TILE_IO(float, f32, 1)
#else
static inline int fa__pack8_f32(const float *q, ptrdiff_t qs, int D, float s, float *Qt)
{ (void)q; (void)qs; (void)D; (void)s; (void)Qt; return 0; }
static inline int fa__store8_f32(const float *Ot, const float *inv, int Dv, float *o, ptrdiff_t os)
{ (void)Ot; (void)inv; (void)Dv; (void)o; (void)os; return 0; }
FA_DEF_TILE_IO(float, f32, 0)
#endif /* FASTATTN_FA_UTIL_H */
static inline int fa__pack8_f64(const double *q, ptrdiff_t qs, int D, double s, double *Qt)
{ (void)q; (void)qs; (void)D; (void)s; (void)Qt; return 0; }
static inline int fa__store8_f64(const double *Ot, const double *inv, int Dv, double *o, ptrdiff_t os)
{ (void)Ot; (void)inv; (void)Dv; (void)o; (void)os; return 0; }
FA_DEF_TILE_IO(double, f64, 0)

/* ---- the store of a linear layer's tile: Yt (nn x FA_BR lanes, W rows by X
 * rows) back to row-major Y, with the bias and an optional ReLU fused in:
 * o[i*os + n] = relu?(Yt[n*FA_BR + i] + bias[n]) for i < nr, n < nn.  ReLU keeps
 * NaN (like numpy.maximum(v, 0)); bias may be NULL. */
#if FA__HAVE_TR8
static inline int fa__storey8_f32(const float *Yt, const float *bias, int relu, int nn,
                                  float *o, ptrdiff_t os)
{
    const __m256 z = _mm256_setzero_ps();
    __m256 r[8];
    int n0 = 0;
    for (; n0 + 8 <= nn; n0 += 8) {
        for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(Yt + (size_t)(n0 + k) * FA_BR);
        fa__tr8x8_ps(r);
        __m256 bv = bias ? _mm256_loadu_ps(bias + n0) : z;
        for (int k = 0; k < 8; k++) {
            __m256 v = _mm256_add_ps(r[k], bv);
            if (relu) v = _mm256_max_ps(z, v);     /* NaN in v -> v */
            _mm256_storeu_ps(o + k * os + n0, v);
        }
    }
    return n0;
}
#define FA__STOREY8_F32 1
#else
#define FA__STOREY8_F32 0
static inline int fa__storey8_f32(const float *Yt, const float *bias, int relu, int nn,
                                  float *o, ptrdiff_t os)
{ (void)Yt; (void)bias; (void)relu; (void)nn; (void)o; (void)os; return 0; }
#endif /* FASTATTN_FA_UTIL_H */
static inline int fa__storey8_f64(const double *Yt, const double *bias, int relu, int nn,
                                  double *o, ptrdiff_t os)
{ (void)Yt; (void)bias; (void)relu; (void)nn; (void)o; (void)os; return 0; }

#define FA_DEF_STORE_Y(T, SUF, FAST)                                           \
static inline void fa_store_yt_##SUF(const T *Yt, int nr, int nn, const T *bias, \
                                     int relu, T *o, ptrdiff_t os)             \
{                                                                              \
    for (int i0 = 0; i0 < nr; i0 += 8) {                                       \
        int n = nr - i0 < 8 ? nr - i0 : 8, c = 0;                              \
        T *r0 = o + (ptrdiff_t)i0 * os;                                        \
        if (FAST && n == 8) c = fa__storey8_##SUF(Yt + i0, bias, relu, nn, r0, os); \
        for (; c < nn; c++) {                                                  \
            const T *src = Yt + (size_t)c * FA_BR + i0;                        \
            T b = bias ? bias[c] : (T)0;                                       \
            for (int ii = 0; ii < n; ii++) {                                   \
                T v = src[ii] + b;                                             \
                r0[ii * os + c] = (relu && v < 0) ? (T)0 : v;                  \
            }                                                                  \
        }                                                                      \
    }                                                                          \
}
FA_DEF_STORE_Y(float, f32, FA__STOREY8_F32)
FA_DEF_STORE_Y(double, f64, 0)

#endif /* FASTATTN_FA_UTIL_H */
