/*
 * fa_simd.h -- the vector layer of fastattn's C tiles: which instruction set
 * this translation unit is compiled for, and one-line mappings of the dozen
 * vector operations the tiles use onto that instruction set's intrinsics (or
 * GNU C vector extensions, or plain C).  Every other header names operations
 * (fa__fma_s, fa__ld_d, ...), never intrinsics; the ISA noise stays here.
 * Exception: fa_util.h's 8x8 transposes for the tile I/O, 256-bit AVX code
 * used by the avx2 and avx512 layers only (chosen by FA__ISA_* below).
 *
 * The instruction set is chosen from the compiler's target macros, once, here.
 * One name per instruction set, used in the macros (FA__ISA_<NAME>), in
 * FA_ISA_NAME / fa_tiles_isa() and in comments:
 *
 *   name     chosen when                                  lanes f32/f64  registers
 *   avx512   __AVX512F__ + DQ + BW + VL, __FMA__, __AVX2__   16 / 8        32
 *   avx2     __AVX2__ and __FMA__                            8 / 4         16
 *   sse2     __SSE2__ on x86 (the x86-64 baseline)           4 / 2         16
 *   generic  any other GNU C target (NEON on aarch64)        4 / 2         32 on aarch64, else 16
 *   scalar   no GNU C (e.g. MSVC): plain C                   1 / 1         (shapes of their own)
 *
 * setup.py compiles the kernels three times; its build names (FA_BUILD_ISA in
 * fa_util.h, the `ISA` of each kernel module) map onto these as:
 *   avx512 -> avx512,  avx2 -> avx2,
 *   baseline -> sse2 on x86-64, generic on other GNU C targets, scalar on MSVC.
 *
 * Test-only knobs (tests/build.sh): FA_FORCE_GENERIC=<bytes> (the generic
 * layer at that vector width, e.g. 64 with FA_FORCE_NREGS=32 for the emul512
 * build: the avx512 blocking on AVX2 hardware), FA_FORCE_SCALAR,
 * FA_FORCE_NREGS=<16|32>.
 *
 * Also here, because both fa_util.h (tile I/O) and fa_tiles.h (tile
 * arithmetic) need them and both include this file: the tile geometry FA_BR,
 * FA_BC, and the compiler portability macros FA__AI, FA__PUB, FA__UNROLL.
 *
 * Dependency order: fa_simd.h <- fa_util.h, fa_simd.h <- fa_tiles.h (fa_util.h
 * and fa_tiles.h do not include each other).  C99, static inline only.
 */
#ifndef FASTATTN_FA_SIMD_H
#define FASTATTN_FA_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

/* ---- tile geometry ------------------------------------------------------ */
#define FA_BR 64   /* query rows per tile = lanes; a multiple of every lane group */
#define FA_BC 64   /* keys per tile */

/* ---- compiler portability ---------------------------------------------- */
/* The microkernels keep arrays of accumulators in registers; that needs their
 * constant-bound loops fully unrolled, which gcc does by itself only at -O3. */
#if defined(__clang__)
#  define FA__UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__) && __GNUC__ >= 8
#  define FA__UNROLL _Pragma("GCC unroll 16")
#else
#  define FA__UNROLL
#endif

/* FA__AI: always inlined helper; FA__PUB: a public tile function */
#if defined(__GNUC__)
#  define FA__AI static inline __attribute__((always_inline))
#  define FA__PUB static inline
#elif defined(_MSC_VER)
#  define FA__AI static __forceinline
#  define FA__PUB static __inline
#else
#  define FA__AI static inline
#  define FA__PUB static inline
#endif

/* ---- choose the instruction set ----------------------------------------- */
#if defined(FA_FORCE_SCALAR) || !defined(__GNUC__)
#  define FA__ISA_SCALAR 1
#  define FA_ISA_NAME "scalar"
#elif defined(FA_FORCE_GENERIC)
#  define FA__ISA_GENERIC 1
#  define FA__GVB FA_FORCE_GENERIC     /* vector bytes */
#  define FA_ISA_NAME "generic"
#elif defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) \
    && defined(__AVX512VL__) && defined(__FMA__) && defined(__AVX2__)
#  define FA__ISA_AVX512 1
#  define FA_ISA_NAME "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#  define FA__ISA_AVX2 1
#  define FA_ISA_NAME "avx2"
#elif defined(__SSE2__) && (defined(__x86_64__) || defined(__i386__))
#  define FA__ISA_SSE2 1
#  define FA_ISA_NAME "sse2"
#else
#  define FA__ISA_GENERIC 1
#  define FA__GVB 16
#  define FA_ISA_NAME "generic"
#endif

/* register count decides the microtile shapes (fa_tiles.h) */
#if defined(FA_FORCE_NREGS)
#  define FA__NREGS FA_FORCE_NREGS
#elif defined(FA__ISA_AVX512) || defined(__aarch64__)
#  define FA__NREGS 32
#else
#  define FA__NREGS 16
#endif

#if defined(FA__ISA_AVX512) || defined(FA__ISA_AVX2) || defined(FA__ISA_SSE2)
#  include <immintrin.h>
#endif

/* ---- the vector layer, one block per instruction set --------------------
 * Per element type (suffix _s = float, _d = double):
 *   fa__vs, fa__vd   vector types, FA__VWS / FA__VWD lanes
 *   ld/ldu/st/stu    aligned / unaligned load and store
 *   set1, zero       broadcast, zero
 *   add, sub, mul    IEEE lane-wise
 *   fma(a,b,c)       a*b + c: fused on avx512 and avx2, two roundings on
 *                    sse2; generic and scalar write a*b + c and leave the
 *                    contraction to the compiler (-ffp-contract, target FMA)
 *   max(a,b)         a > b ? a : b   (x86 maxps semantics: b if NaN)
 *   min(a,b)         a < b ? a : b   (x86 minps semantics: b if NaN)
 *   zero_if_lt(r,x,c) x < c ? 0 : r  (NaN x keeps r)
 *   zero_if_eq(x,c)  x == c ? 0 : x
 *   scalbits(p,t)    bits(p) + (bits(t) << mantissa_bits), integer add
 *   lane0(v)         first lane
 * and, shared by every instruction set, the lane reductions fa__hsum_f32/_f64
 * (fixed tree order) and fa__hmax_f32/_f64.
 */
#if defined(FA__ISA_AVX512)
typedef __m512  fa__vs;
typedef __m512d fa__vd;
#  define FA__VWS 16
#  define FA__VWD 8
FA__AI fa__vs fa__ld_s(const float *p) { return _mm512_load_ps(p); }
FA__AI fa__vs fa__ldu_s(const float *p) { return _mm512_loadu_ps(p); }
FA__AI void fa__st_s(float *p, fa__vs v) { _mm512_store_ps(p, v); }
FA__AI void fa__stu_s(float *p, fa__vs v) { _mm512_storeu_ps(p, v); }
FA__AI fa__vs fa__set1_s(float x) { return _mm512_set1_ps(x); }
FA__AI fa__vs fa__zero_s(void) { return _mm512_setzero_ps(); }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return _mm512_add_ps(a, b); }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return _mm512_sub_ps(a, b); }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return _mm512_mul_ps(a, b); }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return _mm512_fmadd_ps(a, b, c); }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return _mm512_max_ps(a, b); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return _mm512_min_ps(a, b); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c)
    { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, c, _CMP_NLT_UQ), r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c)
    { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, c, _CMP_NEQ_UQ), x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
    { return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_castps_si512(t), 23))); }
FA__AI float fa__lane0_s(fa__vs v) { return _mm512_cvtss_f32(v); }
FA__AI fa__vd fa__ld_d(const double *p) { return _mm512_load_pd(p); }
FA__AI fa__vd fa__ldu_d(const double *p) { return _mm512_loadu_pd(p); }
FA__AI void fa__st_d(double *p, fa__vd v) { _mm512_store_pd(p, v); }
FA__AI void fa__stu_d(double *p, fa__vd v) { _mm512_storeu_pd(p, v); }
FA__AI fa__vd fa__set1_d(double x) { return _mm512_set1_pd(x); }
FA__AI fa__vd fa__zero_d(void) { return _mm512_setzero_pd(); }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return _mm512_add_pd(a, b); }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return _mm512_sub_pd(a, b); }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return _mm512_mul_pd(a, b); }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return _mm512_fmadd_pd(a, b, c); }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return _mm512_max_pd(a, b); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return _mm512_min_pd(a, b); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c)
    { return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, c, _CMP_NLT_UQ), r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c)
    { return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, c, _CMP_NEQ_UQ), x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
    { return _mm512_castsi512_pd(_mm512_add_epi64(_mm512_castpd_si512(p), _mm512_slli_epi64(_mm512_castpd_si512(t), 52))); }
FA__AI double fa__lane0_d(fa__vd v) { return _mm512_cvtsd_f64(v); }

#elif defined(FA__ISA_AVX2)
typedef __m256  fa__vs;
typedef __m256d fa__vd;
#  define FA__VWS 8
#  define FA__VWD 4
FA__AI fa__vs fa__ld_s(const float *p) { return _mm256_load_ps(p); }
FA__AI fa__vs fa__ldu_s(const float *p) { return _mm256_loadu_ps(p); }
FA__AI void fa__st_s(float *p, fa__vs v) { _mm256_store_ps(p, v); }
FA__AI void fa__stu_s(float *p, fa__vs v) { _mm256_storeu_ps(p, v); }
FA__AI fa__vs fa__set1_s(float x) { return _mm256_set1_ps(x); }
FA__AI fa__vs fa__zero_s(void) { return _mm256_setzero_ps(); }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return _mm256_add_ps(a, b); }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return _mm256_sub_ps(a, b); }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return _mm256_mul_ps(a, b); }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return _mm256_fmadd_ps(a, b, c); }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return _mm256_max_ps(a, b); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return _mm256_min_ps(a, b); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c)
    { return _mm256_andnot_ps(_mm256_cmp_ps(x, c, _CMP_LT_OQ), r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c)
    { return _mm256_andnot_ps(_mm256_cmp_ps(x, c, _CMP_EQ_OQ), x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
    { return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(t), 23))); }
FA__AI float fa__lane0_s(fa__vs v) { return _mm256_cvtss_f32(v); }
FA__AI fa__vd fa__ld_d(const double *p) { return _mm256_load_pd(p); }
FA__AI fa__vd fa__ldu_d(const double *p) { return _mm256_loadu_pd(p); }
FA__AI void fa__st_d(double *p, fa__vd v) { _mm256_store_pd(p, v); }
FA__AI void fa__stu_d(double *p, fa__vd v) { _mm256_storeu_pd(p, v); }
FA__AI fa__vd fa__set1_d(double x) { return _mm256_set1_pd(x); }
FA__AI fa__vd fa__zero_d(void) { return _mm256_setzero_pd(); }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return _mm256_add_pd(a, b); }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return _mm256_sub_pd(a, b); }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return _mm256_mul_pd(a, b); }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return _mm256_fmadd_pd(a, b, c); }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return _mm256_max_pd(a, b); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return _mm256_min_pd(a, b); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c)
    { return _mm256_andnot_pd(_mm256_cmp_pd(x, c, _CMP_LT_OQ), r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c)
    { return _mm256_andnot_pd(_mm256_cmp_pd(x, c, _CMP_EQ_OQ), x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
    { return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p), _mm256_slli_epi64(_mm256_castpd_si256(t), 52))); }
FA__AI double fa__lane0_d(fa__vd v) { return _mm256_cvtsd_f64(v); }

#elif defined(FA__ISA_SSE2)
typedef __m128  fa__vs;
typedef __m128d fa__vd;
#  define FA__VWS 4
#  define FA__VWD 2
FA__AI fa__vs fa__ld_s(const float *p) { return _mm_load_ps(p); }
FA__AI fa__vs fa__ldu_s(const float *p) { return _mm_loadu_ps(p); }
FA__AI void fa__st_s(float *p, fa__vs v) { _mm_store_ps(p, v); }
FA__AI void fa__stu_s(float *p, fa__vs v) { _mm_storeu_ps(p, v); }
FA__AI fa__vs fa__set1_s(float x) { return _mm_set1_ps(x); }
FA__AI fa__vs fa__zero_s(void) { return _mm_setzero_ps(); }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return _mm_add_ps(a, b); }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return _mm_sub_ps(a, b); }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return _mm_mul_ps(a, b); }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return _mm_max_ps(a, b); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return _mm_min_ps(a, b); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c) { return _mm_andnot_ps(_mm_cmplt_ps(x, c), r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c) { return _mm_andnot_ps(_mm_cmpeq_ps(x, c), x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
    { return _mm_castsi128_ps(_mm_add_epi32(_mm_castps_si128(p), _mm_slli_epi32(_mm_castps_si128(t), 23))); }
FA__AI float fa__lane0_s(fa__vs v) { return _mm_cvtss_f32(v); }
FA__AI fa__vd fa__ld_d(const double *p) { return _mm_load_pd(p); }
FA__AI fa__vd fa__ldu_d(const double *p) { return _mm_loadu_pd(p); }
FA__AI void fa__st_d(double *p, fa__vd v) { _mm_store_pd(p, v); }
FA__AI void fa__stu_d(double *p, fa__vd v) { _mm_storeu_pd(p, v); }
FA__AI fa__vd fa__set1_d(double x) { return _mm_set1_pd(x); }
FA__AI fa__vd fa__zero_d(void) { return _mm_setzero_pd(); }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return _mm_add_pd(a, b); }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return _mm_sub_pd(a, b); }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return _mm_mul_pd(a, b); }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return _mm_add_pd(_mm_mul_pd(a, b), c); }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return _mm_max_pd(a, b); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return _mm_min_pd(a, b); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c) { return _mm_andnot_pd(_mm_cmplt_pd(x, c), r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c) { return _mm_andnot_pd(_mm_cmpeq_pd(x, c), x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
    { return _mm_castsi128_pd(_mm_add_epi64(_mm_castpd_si128(p), _mm_slli_epi64(_mm_castpd_si128(t), 52))); }
FA__AI double fa__lane0_d(fa__vd v) { return _mm_cvtsd_f64(v); }

#elif defined(FA__ISA_GENERIC)
/* GNU C vector extensions (gcc, clang): NEON on aarch64, anything else
 * elsewhere; the compiler lowers them to whatever the target has. */
#  define FA__VWS (FA__GVB / 4)
#  define FA__VWD (FA__GVB / 8)
typedef float    fa__vs  __attribute__((vector_size(FA__GVB)));
typedef float    fa__vsa __attribute__((vector_size(FA__GVB), may_alias));
typedef float    fa__vsu __attribute__((vector_size(FA__GVB), may_alias, aligned(4)));
typedef uint32_t fa__vsi __attribute__((vector_size(FA__GVB)));
typedef double   fa__vd  __attribute__((vector_size(FA__GVB)));
typedef double   fa__vda __attribute__((vector_size(FA__GVB), may_alias));
typedef double   fa__vdu __attribute__((vector_size(FA__GVB), may_alias, aligned(8)));
typedef uint64_t fa__vdi __attribute__((vector_size(FA__GVB)));
FA__AI fa__vs fa__ld_s(const float *p) { return *(const fa__vsa *)p; }
FA__AI fa__vs fa__ldu_s(const float *p) { return *(const fa__vsu *)p; }
FA__AI void fa__st_s(float *p, fa__vs v) { *(fa__vsa *)p = v; }
FA__AI void fa__stu_s(float *p, fa__vs v) { *(fa__vsu *)p = v; }
FA__AI fa__vs fa__set1_s(float x) { return x - (fa__vs){0}; }
FA__AI fa__vs fa__zero_s(void) { return (fa__vs){0}; }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return a + b; }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return a - b; }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return a * b; }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return a * b + c; }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b)
    { fa__vsi m = (fa__vsi)(a > b); return (fa__vs)((m & (fa__vsi)a) | (~m & (fa__vsi)b)); }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b)
    { fa__vsi m = (fa__vsi)(a < b); return (fa__vs)((m & (fa__vsi)a) | (~m & (fa__vsi)b)); }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c)
    { return (fa__vs)(~(fa__vsi)(x < c) & (fa__vsi)r); }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c) { return (fa__vs)(~(fa__vsi)(x == c) & (fa__vsi)x); }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t) { return (fa__vs)((fa__vsi)p + ((fa__vsi)t << 23)); }
FA__AI float fa__lane0_s(fa__vs v) { return v[0]; }
FA__AI fa__vd fa__ld_d(const double *p) { return *(const fa__vda *)p; }
FA__AI fa__vd fa__ldu_d(const double *p) { return *(const fa__vdu *)p; }
FA__AI void fa__st_d(double *p, fa__vd v) { *(fa__vda *)p = v; }
FA__AI void fa__stu_d(double *p, fa__vd v) { *(fa__vdu *)p = v; }
FA__AI fa__vd fa__set1_d(double x) { return x - (fa__vd){0}; }
FA__AI fa__vd fa__zero_d(void) { return (fa__vd){0}; }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return a + b; }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return a - b; }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return a * b; }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return a * b + c; }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b)
    { fa__vdi m = (fa__vdi)(a > b); return (fa__vd)((m & (fa__vdi)a) | (~m & (fa__vdi)b)); }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b)
    { fa__vdi m = (fa__vdi)(a < b); return (fa__vd)((m & (fa__vdi)a) | (~m & (fa__vdi)b)); }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c)
    { return (fa__vd)(~(fa__vdi)(x < c) & (fa__vdi)r); }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c) { return (fa__vd)(~(fa__vdi)(x == c) & (fa__vdi)x); }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t) { return (fa__vd)((fa__vdi)p + ((fa__vdi)t << 52)); }
FA__AI double fa__lane0_d(fa__vd v) { return v[0]; }

#else /* FA__ISA_SCALAR: plain C, one lane */
typedef float  fa__vs;
typedef double fa__vd;
#  define FA__VWS 1
#  define FA__VWD 1
FA__AI fa__vs fa__ld_s(const float *p) { return *p; }
FA__AI fa__vs fa__ldu_s(const float *p) { return *p; }
FA__AI void fa__st_s(float *p, fa__vs v) { *p = v; }
FA__AI void fa__stu_s(float *p, fa__vs v) { *p = v; }
FA__AI fa__vs fa__set1_s(float x) { return x; }
FA__AI fa__vs fa__zero_s(void) { return 0.0f; }
FA__AI fa__vs fa__add_s(fa__vs a, fa__vs b) { return a + b; }
FA__AI fa__vs fa__sub_s(fa__vs a, fa__vs b) { return a - b; }
FA__AI fa__vs fa__mul_s(fa__vs a, fa__vs b) { return a * b; }
FA__AI fa__vs fa__fma_s(fa__vs a, fa__vs b, fa__vs c) { return a * b + c; }
FA__AI fa__vs fa__max_s(fa__vs a, fa__vs b) { return a > b ? a : b; }
FA__AI fa__vs fa__min_s(fa__vs a, fa__vs b) { return a < b ? a : b; }
FA__AI fa__vs fa__zero_if_lt_s(fa__vs r, fa__vs x, fa__vs c) { return x < c ? 0.0f : r; }
FA__AI fa__vs fa__zero_if_eq_s(fa__vs x, fa__vs c) { return x == c ? 0.0f : x; }
FA__AI fa__vs fa__scalbits_s(fa__vs p, fa__vs t)
    { uint32_t pb, tb; memcpy(&pb, &p, 4); memcpy(&tb, &t, 4); pb += tb << 23; memcpy(&p, &pb, 4); return p; }
FA__AI float fa__lane0_s(fa__vs v) { return v; }
FA__AI fa__vd fa__ld_d(const double *p) { return *p; }
FA__AI fa__vd fa__ldu_d(const double *p) { return *p; }
FA__AI void fa__st_d(double *p, fa__vd v) { *p = v; }
FA__AI void fa__stu_d(double *p, fa__vd v) { *p = v; }
FA__AI fa__vd fa__set1_d(double x) { return x; }
FA__AI fa__vd fa__zero_d(void) { return 0.0; }
FA__AI fa__vd fa__add_d(fa__vd a, fa__vd b) { return a + b; }
FA__AI fa__vd fa__sub_d(fa__vd a, fa__vd b) { return a - b; }
FA__AI fa__vd fa__mul_d(fa__vd a, fa__vd b) { return a * b; }
FA__AI fa__vd fa__fma_d(fa__vd a, fa__vd b, fa__vd c) { return a * b + c; }
FA__AI fa__vd fa__max_d(fa__vd a, fa__vd b) { return a > b ? a : b; }
FA__AI fa__vd fa__min_d(fa__vd a, fa__vd b) { return a < b ? a : b; }
FA__AI fa__vd fa__zero_if_lt_d(fa__vd r, fa__vd x, fa__vd c) { return x < c ? 0.0 : r; }
FA__AI fa__vd fa__zero_if_eq_d(fa__vd x, fa__vd c) { return x == c ? 0.0 : x; }
FA__AI fa__vd fa__scalbits_d(fa__vd p, fa__vd t)
    { uint64_t pb, tb; memcpy(&pb, &p, 8); memcpy(&tb, &t, 8); pb += tb << 52; memcpy(&p, &pb, 8); return p; }
FA__AI double fa__lane0_d(fa__vd v) { return v; }
#endif

/* Lane reductions in a fixed (tree) order, shared by every instruction set:
 * for w = VW/2, VW/4, ..., 1: a[i] += a[i + w] (i < w).  On x86 the sums are
 * written with shuffles (the same additions, so the same bits: one decode
 * dot product per key made the store-and-reload version the cost of the
 * rows path at head_dim 64). */
#if defined(FA__ISA_AVX512)
#  define FA__HSUM_X86 1
FA__AI float fa__hsum4_ps(__m128 q)
{
    __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));          /* w = 2 */
    return _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps(p, p, 1)));   /* w = 1 */
}
FA__AI float fa__hsum_f32(fa__vs v)
{
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return fa__hsum4_ps(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
FA__AI double fa__hsum_f64(fa__vd v)
{
    __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
#elif defined(FA__ISA_AVX2)
#  define FA__HSUM_X86 1
FA__AI float fa__hsum4_ps(__m128 q)
{
    __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps(p, p, 1)));
}
FA__AI float fa__hsum_f32(fa__vs v)
{
    return fa__hsum4_ps(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}
FA__AI double fa__hsum_f64(fa__vd v)
{
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
#elif defined(FA__ISA_SSE2)
#  define FA__HSUM_X86 1
FA__AI float fa__hsum_f32(fa__vs v)
{
    __m128 p = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps(p, p, 1)));
}
FA__AI double fa__hsum_f64(fa__vd v)
{
    return _mm_cvtsd_f64(_mm_add_sd(v, _mm_unpackhi_pd(v, v)));
}
#endif
#if !defined(FA__HSUM_X86)
FA__AI float fa__hsum_f32(fa__vs v)
{
#if FA__VWS == 1
    return v;
#else
    float a[FA__VWS] __attribute__((aligned(64)));
    fa__st_s(a, v);
    for (int w = FA__VWS / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) a[i] += a[i + w];
    return a[0];
#endif
}
FA__AI double fa__hsum_f64(fa__vd v)
{
#if FA__VWD == 1
    return v;
#else
    double a[FA__VWD] __attribute__((aligned(64)));
    fa__st_d(a, v);
    for (int w = FA__VWD / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) a[i] += a[i + w];
    return a[0];
#endif
}
#endif /* !FA__HSUM_X86 */

/* fa__hsumv_f32(v): FA__VWS vectors reduced at once into one vector whose lane
 * i is fa__hsum_f32(v[i]), bit for bit: the same additions in the same tree
 * (w = VW/2, ..., 1), done on pairs of vectors with shuffles, so that the
 * row-layout dot products pay ~3 shuffle/add operations per (row, key)
 * instead of ~8.  Inputs are fed in a transposed order so the lanes come out
 * in natural order.  Defined where FA__HAS_HSUMV_S is. */
/* the last two levels (w = 2, 1), inside each 128-bit block, on the four
 * vectors x[0..3] left by the cross-block levels */
#define FA__HV_PAIR(ADD, SHUF, a, b, lo, hi) ADD(SHUF(a, b, lo), SHUF(a, b, hi))
#define FA__HSUMV_INLANE(ADD, SHUF, x) \
    FA__HV_PAIR(ADD, SHUF, \
                FA__HV_PAIR(ADD, SHUF, x[0], x[1], _MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2)), \
                FA__HV_PAIR(ADD, SHUF, x[2], x[3], _MM_SHUFFLE(1, 0, 1, 0), _MM_SHUFFLE(3, 2, 3, 2)), \
                _MM_SHUFFLE(2, 0, 2, 0), _MM_SHUFFLE(3, 1, 3, 1))
#if defined(FA__ISA_AVX512)
#  define FA__HAS_HSUMV_S 1
FA__AI fa__vs fa__hsumv_f32(const fa__vs *v)
{
    __m512 t[8], u[4];
    int k;
    /* level w = 8: [a0..7 + a8..15 | b0..7 + b8..15]; lane 4k + j of the
     * result comes from input 4j + k, so input n takes v[(n % 4) * 4 + n / 4] */
#define FA__HV_IN(n) v[((n) % 4) * 4 + (n) / 4]
    FA__UNROLL for (k = 0; k < 8; k++) {
        __m512 a = FA__HV_IN(2 * k), b = FA__HV_IN(2 * k + 1);
        t[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
#undef FA__HV_IN
    /* w = 4: 128-bit blocks [q(a), q(b), q(c), q(d)] */
    FA__UNROLL for (k = 0; k < 4; k++)
        u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], 0xDD));
    return FA__HSUMV_INLANE(_mm512_add_ps, _mm512_shuffle_ps, u);
}
#elif defined(FA__ISA_AVX2)
#  define FA__HAS_HSUMV_S 1
FA__AI fa__vs fa__hsumv_f32(const fa__vs *v)
{
    __m256 t[4];
    int k;
    /* w = 4: [a0..3 + a4..7 | b0..3 + b4..7]; lane 4b + j of the result comes
     * from input 2j + b, so input n takes v[(n % 2) * 4 + n / 2] */
#define FA__HV_IN(n) v[((n) % 2) * 4 + (n) / 2]
    FA__UNROLL for (k = 0; k < 4; k++) {
        __m256 a = FA__HV_IN(2 * k), b = FA__HV_IN(2 * k + 1);
        t[k] = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    }
#undef FA__HV_IN
    return FA__HSUMV_INLANE(_mm256_add_ps, _mm256_shuffle_ps, t);
}
#endif
FA__AI float fa__hmax_f32(fa__vs v)
{
#if FA__VWS == 1
    return v;
#else
    float a[FA__VWS] __attribute__((aligned(64)));
    fa__st_s(a, v);
    float mx = a[0];
    for (int i = 1; i < FA__VWS; i++) mx = a[i] > mx ? a[i] : mx;
    return mx;
#endif
}
FA__AI double fa__hmax_f64(fa__vd v)
{
#if FA__VWD == 1
    return v;
#else
    double a[FA__VWD] __attribute__((aligned(64)));
    fa__st_d(a, v);
    double mx = a[0];
    for (int i = 1; i < FA__VWD; i++) mx = a[i] > mx ? a[i] : mx;
    return mx;
#endif
}

#endif /* FASTATTN_FA_SIMD_H */
