/*
 * fa_bf16.h -- bfloat16 storage kernels: fp32 <-> bf16 conversion, the
 * packed weight layout and the bf16 x bf16 -> fp32 GEMM microkernels
 * (issue 12).  docs/architecture.md, "bfloat16 GEMM", describes the design.
 *
 * One path per kernel build, chosen from the compiler's target macros:
 *
 *   path    build          chosen when                         microkernel
 *   amx     amx            __AMX_TILE__ __AMX_BF16__ + avx512bf16  tdpbf16ps tiles
 *   dp      avx512bf16     __AVX512BF16__ + avx512             vdpbf16ps registers
 *   widen   avx512         avx512 (fa_simd.h)                  fa_gemm.h's fp32 kernel
 *           avx2           avx2                                on W widened per K slice
 *           baseline       anything else (plain C)             (see the widen section)
 *
 * Test-only knobs (src/tests/build.sh): FA_BF16_EMUL_AMX / FA_BF16_EMUL_DP
 * compile the amx / dp path with the intrinsics replaced by plain C that
 * follows the instructions' documented semantics (fa_bf16_emul.h), so the
 * tile code runs on any CPU; FA_BF16_FORCE_WIDEN forces the widen path.
 *
 * Packed weight layout (the same in every build, "vnni16"): W (N, K) in torch
 * layout is cut into groups of 16 output features (N padded to Np, a multiple
 * of 16, with zeros) and K is padded with zeros to Kp, a multiple of 32.  For
 * group g, feature pair p (k = 2p, 2p+1) and lane j (n = 16 g + j):
 *     P[((g * Kp/2 + p) * 16 + j) * 2 + e] = W[16 g + j][2 p + e]
 * so one 64-byte line holds the 16 lanes' pair p: one zmm for vdpbf16ps (and
 * for the widen path: even k = line << 16, odd k = line & 0xffff0000), and 16
 * consecutive lines (1 KB) are exactly one AMX B tile (16 pairs x 16 lanes).
 *
 * Batch invariance: every output element is summed over all of K in one task,
 * in a fixed order that depends only on K (tiles / pairs / features in
 * order); lanes and tile rows are independent, so a row's bits never depend
 * on M, on where the row sits, on how many rows a microkernel handles or on
 * the thread count.  Work is split over M and N only.
 *
 * Rounding fp32 -> bf16 is round-to-nearest-even; NaN keeps its sign and
 * becomes the quiet NaN 0x7fc0 / 0xffc0 (what ml_dtypes does); +-inf stay.
 */
#ifndef FASTATTN_FA_BF16_H
#define FASTATTN_FA_BF16_H

#include "fa_simd.h"
#include "fa_bf16_cpu.h"
#include "fa_act.h"
#include <stdint.h>
#include <string.h>
#include <math.h>

/* software prefetch distance of the packed weights: AMX, in 32-feature
 * chunks (1 KiB tiles); vdpbf16ps, in feature pairs (one 64-byte line each).
 * Prefetches never fault, so running past a panel's end is harmless. */
#ifndef FA__BF16_PFC
#  define FA__BF16_PFC 4
#endif
#ifndef FA__BF16_PFD
#  define FA__BF16_PFD 32
#endif

#if defined(FA_BF16_EMUL_AMX)
#  define FA_BF16_AMX 1
#  define FA_BF16_EMUL 1
#  define FA_BF16_PATH "amx-emulated"
#elif defined(FA_BF16_EMUL_DP)
#  define FA_BF16_DP 1
#  define FA_BF16_EMUL 1
#  define FA_BF16_PATH "dp-emulated"
#elif !defined(FA_BF16_FORCE_WIDEN) && defined(FA__ISA_AVX512) && defined(__AVX512BF16__) \
    && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#  define FA_BF16_AMX 1
#  define FA_BF16_PATH "amx"
#elif !defined(FA_BF16_FORCE_WIDEN) && defined(FA__ISA_AVX512) && defined(__AVX512BF16__)
#  define FA_BF16_DP 1
#  define FA_BF16_PATH "dp"
#else
#  define FA_BF16_WIDEN 1
#  if defined(FA__ISA_AVX512)
#    define FA_BF16_PATH "widen-avx512"
#  elif defined(FA__ISA_AVX2)
#    define FA_BF16_PATH "widen-avx2"
#  else
#    define FA_BF16_PATH "widen-c"
#  endif
#endif

/* The amx and dp paths name the instructions through these macros: the
 * intrinsics, or fa_bf16_emul.h's plain C versions in the emulation builds. */
#if defined(FA_BF16_EMUL)
#  include "fa_bf16_emul.h"
#elif defined(FA_BF16_AMX) || defined(FA_BF16_DP)
#  include <immintrin.h>
typedef __m512 fa__fv;
typedef __m512bh fa__bv;
#  define FA__FV_ZERO() _mm512_setzero_ps()
#  define FA__FV_ST(p, v) _mm512_storeu_ps((p), (v))
#  define FA__BV_LD(p) ((__m512bh)_mm512_loadu_si512((const void *)(p)))
#  define FA__BV_SET1(i) ((__m512bh)_mm512_set1_epi32(i))
#  define FA__DPBF16(acc, a, b) _mm512_dpbf16_ps((acc), (a), (b))
#  define FA__TCFG(c) _tile_loadconfig(c)
#  define FA__TZERO(t) _tile_zero(t)
#  define FA__TLOAD(t, p, s) _tile_loadd(t, p, s)
#  define FA__TSTORE(t, p, s) _tile_stored(t, p, s)
#  define FA__TDP(c, a, b) _tile_dpbf16ps(c, a, b)
#  define FA__TRELEASE() _tile_release()
#endif

/* activations fused into the store: fa_act.h's FA_ACT_* codes and formulas */

/* geometry */
#define FA_BF16_NG 16          /* output features per packed group */
#define FA_BF16_KQ 32          /* K is padded to a multiple of this */
#if defined(FA_BF16_WIDEN)
#  include "fa_gemm.h"
#  define FA_BF16_MB FA_GM_MB  /* rows per task: the fp32 packed GEMM's row block */
#else
#  define FA_BF16_MB 32        /* rows per task (the amx path's 2 A tiles) */
#endif

static inline ptrdiff_t fa_bf16_np(ptrdiff_t N) { return (N + 15) / 16 * 16; }
static inline ptrdiff_t fa_bf16_kp(ptrdiff_t K) { return (K + 31) / 32 * 32; }

/* ---- scalar conversions -------------------------------------------------- */
FA__AI uint16_t fa_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) & 0x8000u) | 0x7fc0u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

FA__AI float fa_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Branch-free form of fa_f32_to_bf16 over an array: gcc vectorises it in
 * every build (the select becomes a blend).  vcvtneps2bf16 is NOT used:
 * it treats denormal inputs as zero and keeps NaN payloads, where ml_dtypes
 * (the reference) rounds denormals and writes 0x7fc0 (tests/test_bf16_gemm.py
 * checks every build bit for bit against ml_dtypes, denormals and NaNs
 * included). */
static inline void fa_bf16_from_f32_n(const float *src, uint16_t *dst, ptrdiff_t n)
{
    const uint32_t *s = (const uint32_t *)(const void *)src;
    for (ptrdiff_t i = 0; i < n; i++) {
        uint32_t u = s[i];
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        uint32_t q = ((u >> 16) & 0x8000u) | 0x7fc0u;
        dst[i] = (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? q : r);
    }
}

static inline void fa_bf16_to_f32_n(const uint16_t *src, float *dst, ptrdiff_t n)
{
    uint32_t *d = (uint32_t *)(void *)dst;
    for (ptrdiff_t i = 0; i < n; i++)
        d[i] = (uint32_t)src[i] << 16;
}

/* ---- packing -------------------------------------------------------------- */
/* W (N, K) bf16 with row stride ws (elements) -> P (Np/16 groups of Kp/2
 * lines of 32 bf16), zero-padded.  Groups [g0, g1) only (for threading). */
static inline void fa_bf16_pack_groups(const uint16_t *W, ptrdiff_t ws, ptrdiff_t N,
                                       ptrdiff_t K, uint16_t *P, ptrdiff_t g0, ptrdiff_t g1)
{
    ptrdiff_t Kp = fa_bf16_kp(K);
    for (ptrdiff_t g = g0; g < g1; g++) {
        uint16_t *pg = P + g * (Kp / 2) * 32;
        memset(pg, 0, (size_t)(Kp / 2) * 32 * sizeof(uint16_t));
        for (int j = 0; j < 16; j++) {
            ptrdiff_t n = g * 16 + j;
            if (n >= N)
                break;
            const uint16_t *wr = W + n * ws;
            for (ptrdiff_t k = 0; k < K; k++)
                pg[(k >> 1) * 32 + j * 2 + (k & 1)] = wr[k];
        }
    }
}

static inline void fa_bf16_unpack(const uint16_t *P, ptrdiff_t N, ptrdiff_t K, uint16_t *W)
{
    ptrdiff_t Kp = fa_bf16_kp(K);
    for (ptrdiff_t n = 0; n < N; n++) {
        const uint16_t *pg = P + (n / 16) * (Kp / 2) * 32 + (n % 16) * 2;
        for (ptrdiff_t k = 0; k < K; k++)
            W[n * K + k] = pg[(k >> 1) * 32 + (k & 1)];
    }
}

/* ---- the fused store ------------------------------------------------------ */
/* acc (nr rows, row stride lda floats, nc columns) + bias, activation, then
 * stored as fp32 (out_bf16 = 0) or bf16 into y (row stride ys elements). */
static void fa_bf16_store(float *acc, ptrdiff_t lda, int nr, int nc, const float *bias, int act,
                          void *y, ptrdiff_t ys, int out_bf16)
{
    for (int r = 0; r < nr; r++) {
        float *a = acc + (ptrdiff_t)r * lda;
        if (bias)
            for (int j = 0; j < nc; j++)
                a[j] += bias[j];
        if (act)
            fa_act_f32(a, nc, act);
        if (out_bf16)
            fa_bf16_from_f32_n(a, (uint16_t *)y + r * ys, nc);
        else if ((float *)y + r * ys != a)
            memcpy((float *)y + r * ys, a, (size_t)nc * sizeof(float));
    }
}

/* ---- the GEMM task --------------------------------------------------------
 * y[m0 + r, n0 + c] for r < nr (<= FA_BF16_MB), c < nn (n0 a multiple of 16):
 * x (bf16, row stride xs) times the packed weight, K features.  scratch:
 * FA_BF16_SCRATCH(K) bytes, 64-byte aligned. */
#if !defined(FA_BF16_WIDEN)
/* A task's scratch: the 32 x 32 fp32 store tile at 0, the amx path's 32 x 32
 * bf16 K-tail tile at FA__BF16_TAIL_OFF, then from FA__BF16_BLK_OFF its packed
 * rows of x (amx: 32 x Kp bf16; dp: nr x npair feature pairs).  An amx task of
 * fewer than FA__AMX_SHORT_ROWS rows loads x in place and needs only the first
 * two. */
#define FA__BF16_TAIL_OFF 4096
#define FA__BF16_BLK_OFF 8192
#define FA__AMX_SHORT_ROWS 16
#define FA_BF16_SCRATCH(K) \
    ((size_t)(FA_BF16_MB * (fa_bf16_kp(K) + 32)) * 4 + FA__BF16_BLK_OFF)
#define FA_BF16_PANELS 0
#define FA_BF16_PW 32
#define FA_BF16_MR 32
#define FA_BF16_NB 256
static inline size_t fa_bf16_scratch(ptrdiff_t rows, int out_bf16, ptrdiff_t K)
{
    (void)out_bf16;
#if defined(FA_BF16_AMX)
    if (rows < FA__AMX_SHORT_ROWS)  /* short A tiles load x in place */
        return FA__BF16_BLK_OFF;
    return FA_BF16_SCRATCH(K);
#else
    /* dp: the store tile and the task's rows of x, pair-major (a few-row
     * call's per-thread buffer is cleared on every call: keep it small) */
    if (rows > FA_BF16_MB)
        rows = FA_BF16_MB;
    return FA__BF16_BLK_OFF + (size_t)rows * (size_t)((K + 1) / 2) * 4;
#endif
}
#endif

/* x rows [0, nr) copied into a zero-padded (rows x Kp) bf16 block */
static inline void fa_bf16_copy_rows(const uint16_t *x, ptrdiff_t xs, int nr, int rows,
                                     ptrdiff_t K, uint16_t *dst)
{
    ptrdiff_t Kp = fa_bf16_kp(K);
    for (int r = 0; r < rows; r++) {
        uint16_t *d = dst + (ptrdiff_t)r * Kp;
        if (r < nr) {
            memcpy(d, x + r * xs, (size_t)K * 2);
            memset(d + K, 0, (size_t)(Kp - K) * 2);
        } else {
            memset(d, 0, (size_t)Kp * 2);
        }
    }
}

#if defined(FA_BF16_AMX)
/* ---- amx: tdpbf16ps ------------------------------------------------------
 * tmm0..3 = C (2 x 2 tiles of 16 rows x 16 fp32), tmm4,5 = A (16 rows x 32
 * bf16 of x), tmm6,7 = B (16 pairs x 16 lanes of the packed weight).  Every
 * tile is 16 rows x 64 bytes, so one configuration serves every task; it is
 * loaded at the start of each task (every OpenMP thread, before its first
 * tile instruction) and released at the end.  K runs over Kp/32 chunks in
 * order, the zero padding adding exact zeros.  Full 32-row blocks load A in
 * place with x's row stride (the last chunk, when K is no multiple of 32,
 * from a zero-padded copy); partial blocks from a zero-padded copy of the
 * rows, one A tile when nr <= 16; fewer than 16 rows load one A tile of nr
 * rows in place (the configuration gives tmm0, tmm1 and tmm4 nr rows).  Each
 * tile row is computed independently, so neither padding rows nor the tile
 * height ever change a real row's bits. */
typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} fa_tilecfg;

/* every tile 16 rows x 64 bytes, except the first C row of tiles (tmm0,1)
 * and the first A tile (tmm4), which get ar (1..16) rows */
static inline void fa_amx_config_rows(int ar)
{
    fa_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = (t == 0 || t == 1 || t == 4) ? (uint8_t)ar : 16;
    }
    FA__TCFG(&cfg);
}

static inline void fa_amx_config(void) { fa_amx_config_rows(16); }

/* one column group pair (nb = 2) or single (nb = 1), na A tiles */
#define FA__AMX_BODY(NA, NB)                                                            \
    do {                                                                                \
        FA__TZERO(0);                                                                  \
        if (NB > 1) FA__TZERO(1);                                                      \
        if (NA > 1) FA__TZERO(2);                                                      \
        if (NA > 1 && NB > 1) FA__TZERO(3);                                            \
        for (ptrdiff_t c = 0; c < nck; c++) {                                           \
            const uint16_t *a0, *a1;                                                    \
            ptrdiff_t as;                                                               \
            if (c < nfull) { a0 = ax + c * 32; as = axs; }                              \
            else { a0 = tail; as = 32; }                                                \
            a1 = a0 + 16 * as;                                                          \
            FA__TLOAD(4, a0, as * 2);                                                 \
            if (NA > 1) FA__TLOAD(5, a1, as * 2);                                     \
            FA__TLOAD(6, b0 + c * 512, 64);                                           \
            if (NB > 1) FA__TLOAD(7, b1 + c * 512, 64);                               \
            for (int l = 0; l < 1024; l += 64) {  /* weights FA__BF16_PFC chunks on */ \
                __builtin_prefetch((const char *)(b0 + (c + FA__BF16_PFC) * 512) + l, 0, 3); \
                if (NB > 1)                                                             \
                    __builtin_prefetch((const char *)(b1 + (c + FA__BF16_PFC) * 512) + l, 0, 3); \
            }                                                                           \
            FA__TDP(0, 4, 6);                                                    \
            if (NB > 1) FA__TDP(1, 4, 7);                                        \
            if (NA > 1) FA__TDP(2, 5, 6);                                        \
            if (NA > 1 && NB > 1) FA__TDP(3, 5, 7);                              \
        }                                                                               \
        FA__TSTORE(0, cb, cst * 4);                                                     \
        if (NB > 1) FA__TSTORE(1, cb + 16, cst * 4);                                    \
        if (NA > 1) FA__TSTORE(2, cb + 16 * cst, cst * 4);                              \
        if (NA > 1 && NB > 1) FA__TSTORE(3, cb + 16 * cst + 16, cst * 4);               \
    } while (0)

static void fa_bf16_gemm_task(const uint16_t *x, ptrdiff_t xs, int nr, const uint16_t *P,
                              ptrdiff_t K, ptrdiff_t n0, int nn, const float *bias, int act,
                              void *y, ptrdiff_t ys, int out_bf16, void *scratch)
{
    ptrdiff_t Kp = fa_bf16_kp(K), nck = Kp / 32, nfull;
    float *cs = (float *)scratch;                           /* 32 x 32 fp32 */
    uint16_t *tail = (uint16_t *)((char *)scratch + FA__BF16_TAIL_OFF);
    uint16_t *blk = (uint16_t *)((char *)scratch + FA__BF16_BLK_OFF);
    const uint16_t *ax;
    ptrdiff_t axs;
    int na = nr > 16 ? 2 : 1;
    /* fewer than 16 rows (decoding): one A tile of nr rows, loaded in place
     * (a zero-padded copy of 16 rows per task wrote 16x the x it read) */
    const int short_a = nr < FA__AMX_SHORT_ROWS;
    if (nr == FA_BF16_MB || short_a) {
        const int rr = short_a ? nr : 32;
        ax = x; axs = xs; nfull = K / 32;
        if (nfull < nck) {
            for (int r = 0; r < rr; r++) {
                ptrdiff_t k0 = nfull * 32;
                memcpy(tail + r * 32, x + r * xs + k0, (size_t)(K - k0) * 2);
                memset(tail + r * 32 + (K - k0), 0, (size_t)(32 - (K - k0)) * 2);
            }
        }
    } else {
        fa_bf16_copy_rows(x, xs, nr, na * 16, K, blk);
        ax = blk; axs = Kp; nfull = nck;
    }
    fa_amx_config_rows(short_a ? nr : 16);
    for (int c0 = 0; c0 < nn; c0 += 32) {
        int nc = nn - c0 < 32 ? nn - c0 : 32;
        ptrdiff_t g = (n0 + c0) / 16;
        const uint16_t *b0 = P + g * (Kp / 2) * 32;
        const uint16_t *b1 = b0 + (Kp / 2) * 32;
        /* whole tiles of an fp32 output go straight to y (bias and
         * activation then run in place); the rest through cs */
        int direct = !out_bf16 && nck > 0 && nr == na * 16 && nc == (nc > 16 ? 32 : 16);
        float *cb = direct ? (float *)y + c0 : cs;
        ptrdiff_t cst = direct ? ys : 32;
        if (nck == 0) {
            memset(cs, 0, 32 * 32 * sizeof(float));
        } else if (na == 2 && nc > 16) {
            FA__AMX_BODY(2, 2);
        } else if (na == 2) {
            FA__AMX_BODY(2, 1);
        } else if (nc > 16) {
            FA__AMX_BODY(1, 2);
        } else {
            FA__AMX_BODY(1, 1);
        }
        if (direct) {
            if (bias || act)
                fa_bf16_store(cb, ys, nr, nc, bias ? bias + c0 : NULL, act, cb, ys, 0);
        } else {
            fa_bf16_store(cs, 32, nr, nc, bias ? bias + c0 : NULL, act,
                          out_bf16 ? (void *)((uint16_t *)y + c0) : (void *)((float *)y + c0),
                          ys, out_bf16);
        }
    }
    FA__TRELEASE();
}

#elif defined(FA_BF16_DP)
/* ---- dp: vdpbf16ps register tile -----------------------------------------
 * A task first packs x's rows pair-major per row chunk (chunks of 12, then 4,
 * then 1 rows): pa[p * mr + r] = x[r][2p], x[r][2p+1] (the last pair of an
 * odd K with a zero partner), so the microkernel broadcasts from one pointer.
 * Per feature pair p: NV (1-2) loads of the packed weight line, mr
 * broadcasts, mr x NV vdpbf16ps.  Each lane's sum is the chain over pairs in
 * order, so the chunk height (12, 4, 1) and NV never change a row's bits. */
FA__AI void fa__dp_tile(const uint32_t *pa, const int mr, const int nv, const uint16_t *b0,
                        const uint16_t *b1, ptrdiff_t npair, float *cs, ptrdiff_t ldc)
{
    fa__fv acc[12][2];
    FA__UNROLL
    for (int r = 0; r < 12; r++) {
        if (r < mr) {
            acc[r][0] = FA__FV_ZERO();
            acc[r][1] = FA__FV_ZERO();
        }
    }
    for (ptrdiff_t p = 0; p < npair; p++) {
        /* weights FA__BF16_PFD pairs ahead: a few-row call streams them from
         * memory, and the hardware prefetcher stops at each 4 KiB page */
        __builtin_prefetch(b0 + (p + FA__BF16_PFD) * 32, 0, 3);
        if (nv > 1)
            __builtin_prefetch(b1 + (p + FA__BF16_PFD) * 32, 0, 3);
        fa__bv w0 = FA__BV_LD(b0 + p * 32);
        fa__bv w1 = w0;
        if (nv > 1)
            w1 = FA__BV_LD(b1 + p * 32);
        FA__UNROLL
        for (int r = 0; r < 12; r++) {
            if (r < mr) {
                fa__bv a = FA__BV_SET1((int32_t)pa[p * mr + r]);
                acc[r][0] = FA__DPBF16(acc[r][0], a, w0);
                if (nv > 1)
                    acc[r][1] = FA__DPBF16(acc[r][1], a, w1);
            }
        }
    }
    FA__UNROLL
    for (int r = 0; r < 12; r++) {
        if (r < mr) {
            FA__FV_ST(cs + r * ldc, acc[r][0]);
            if (nv > 1)
                FA__FV_ST(cs + r * ldc + 16, acc[r][1]);
        }
    }
}

FA__AI int fa__dp_chunk(int left) { return left >= 12 ? 12 : left >= 4 ? 4 : 1; }

/* x's rows [0, nr) (nr <= FA_BF16_MB) packed pair-major per row chunk into
 * pa (nr x npair 32-bit pairs) */
static inline void fa_bf16_dp_pack(const uint16_t *x, ptrdiff_t xs, int nr, ptrdiff_t K,
                                   uint32_t *pa)
{
    ptrdiff_t npair = (K + 1) / 2;
    for (int r0 = 0; r0 < nr; r0 += fa__dp_chunk(nr - r0)) {
        int mr = fa__dp_chunk(nr - r0);
        uint32_t *pc = pa + (ptrdiff_t)r0 * npair;
        for (int r = 0; r < mr; r++) {
            const uint16_t *xr = x + (r0 + r) * xs;
            for (ptrdiff_t p = 0; p < K / 2; p++) {
                uint32_t v;
                memcpy(&v, xr + 2 * p, 4);
                pc[p * mr + r] = v;
            }
            if (K & 1)
                pc[(K / 2) * mr + r] = xr[K - 1];
        }
    }
}

/* the task on rows already packed by fa_bf16_dp_pack; scratch: the 32 x 32
 * fp32 store tile */
static void fa__dp_gemm(const uint32_t *pa, int nr, const uint16_t *P, ptrdiff_t K,
                        ptrdiff_t n0, int nn, const float *bias, int act, void *y,
                        ptrdiff_t ys, int out_bf16, float *cs)
{
    ptrdiff_t Kp = fa_bf16_kp(K), npair = (K + 1) / 2;
    for (int c0 = 0; c0 < nn; c0 += 32) {
        int nc = nn - c0 < 32 ? nn - c0 : 32;
        ptrdiff_t g = (n0 + c0) / 16;
        const uint16_t *b0 = P + g * (Kp / 2) * 32;
        const uint16_t *b1 = b0 + (Kp / 2) * 32;
        int direct = !out_bf16 && nc == 32;     /* whole blocks straight to y */
        float *cb = direct ? (float *)y + c0 : cs;
        ptrdiff_t ldc = direct ? ys : 32;
        for (int r0 = 0; r0 < nr; r0 += fa__dp_chunk(nr - r0)) {
            int mr = fa__dp_chunk(nr - r0);
            const uint32_t *pc = pa + (ptrdiff_t)r0 * npair;
            float *c = cb + (ptrdiff_t)r0 * ldc;
            if (mr == 12) {
                if (nc > 16) fa__dp_tile(pc, 12, 2, b0, b1, npair, c, ldc);
                else fa__dp_tile(pc, 12, 1, b0, b1, npair, c, ldc);
            } else if (mr == 4) {
                if (nc > 16) fa__dp_tile(pc, 4, 2, b0, b1, npair, c, ldc);
                else fa__dp_tile(pc, 4, 1, b0, b1, npair, c, ldc);
            } else {
                if (nc > 16) fa__dp_tile(pc, 1, 2, b0, b1, npair, c, ldc);
                else fa__dp_tile(pc, 1, 1, b0, b1, npair, c, ldc);
            }
        }
        if (direct) {
            if (bias || act)
                fa_bf16_store(cb, ys, nr, nc, bias ? bias + c0 : NULL, act, cb, ys, 0);
        } else {
            fa_bf16_store(cs, 32, nr, nc, bias ? bias + c0 : NULL, act,
                          out_bf16 ? (void *)((uint16_t *)y + c0) : (void *)((float *)y + c0),
                          ys, out_bf16);
        }
    }
}

static void fa_bf16_gemm_task(const uint16_t *x, ptrdiff_t xs, int nr, const uint16_t *P,
                              ptrdiff_t K, ptrdiff_t n0, int nn, const float *bias, int act,
                              void *y, ptrdiff_t ys, int out_bf16, void *scratch)
{
    uint32_t *pa = (uint32_t *)((char *)scratch + FA__BF16_BLK_OFF);  /* nr x npair */
    fa_bf16_dp_pack(x, xs, nr, K, pa);
    fa__dp_gemm(pa, nr, P, K, n0, nn, bias, act, y, ys, out_bf16, (float *)scratch);
}

/* A few-row call splits the features into many narrow tasks over the same
 * rows: there the rows are packed once per call (fa_bf16_prepack, per row
 * block of FA_BF16_MB, fa_bf16_prepack_bytes(K) each) and every task
 * reads them (fa_bf16_gemm_task_pre, scratch FA__BF16_BLK_OFF bytes), instead
 * of each packing them again.  The same microkernel on the same pairs: the
 * bits do not change. */
#define FA_BF16_PREPACK 1
static inline size_t fa_bf16_prepack_bytes(ptrdiff_t K)   /* per row block */
{
    return (size_t)FA_BF16_MB * (size_t)((K + 1) / 2) * 4;
}
static inline void fa_bf16_prepack(const uint16_t *x, ptrdiff_t xs, int nr, ptrdiff_t K,
                                   void *dst)
{
    fa_bf16_dp_pack(x, xs, nr, K, (uint32_t *)dst);
}
static inline size_t fa_bf16_pre_scratch(ptrdiff_t rows, int out_bf16, ptrdiff_t K)
{
    (void)rows; (void)out_bf16; (void)K;
    return FA__BF16_BLK_OFF;                 /* the store tile only */
}
static void fa_bf16_gemm_task_pre(const void *pre, int nr, const uint16_t *P, ptrdiff_t K,
                                  ptrdiff_t n0, int nn, const float *bias, int act, void *y,
                                  ptrdiff_t ys, int out_bf16, void *scratch)
{
    fa__dp_gemm((const uint32_t *)pre, nr, P, K, n0, nn, bias, act, y, ys, out_bf16,
                (float *)scratch);
}

#else
/* ---- widen: the fp32 packed-panel microkernel on widened copies ------------
 * bf16 -> fp32 is exact (the bits shifted up), so the sum each output element
 * needs is the fp32 GEMM's chain over k in order, acc = fma(w[n][k], x[m][k],
 * acc) from +0, on the widened values.  The widening is paid once per cache
 * block, not per FMA: per K slice (FA_GM_KC features, fewer for few rows) the
 * task widens its x rows into fa_gemm.h's packed-X block (MR rows
 * interleaved) and, panel by panel, the slice of the packed bf16 weight into
 * one fp32 panel (PW lanes per feature, in L1), then runs fa_gemm.h's
 * microkernel over every MR-row group of the block.  So the widening of a
 * weight panel is shared by all the task's rows (up to FA_GM_MB) and that of
 * x by all its features.  The microkernel's accumulators continue across
 * slices through the destination (stored as fp32 and reloaded: exact), and
 * are never given a bias (that would add +0 to a -0 sum): the bias, the
 * activation and the store are fa_bf16_store's, after the last slice.
 *
 * K runs over Ke = K rounded up to even (the packed weight and the widened x
 * are zero there), the same chain as the amx/dp pair layout's.  Every element
 * is one lane of one accumulator summed over all of K in one task, in k
 * order: the row groups, panels per microkernel, slice lengths, task shapes
 * and thread count change the speed, never a bit.  The product of two bf16
 * values is exact in fp32, so fused (avx512, avx2) and unfused (the sse2 and
 * plain C fp32 kernels) multiply-adds give the same bits: every build agrees
 * (src/tests/build.sh compares their digests).
 *
 * Scratch (fa_bf16_scratch(rows, out_bf16, K), 64-byte aligned): the packed-X
 * block (rows rounded up to MR, x KC fp32), one widened panel slice (KC x PW
 * fp32) and the fp32 results that cannot go straight into y: the partial last
 * panel (rows x PW) or, for a bf16 output, a chunk of FA_BF16_NB features
 * (rows x FA_BF16_NB).  Bounded by the block, whatever M, N and K are. */
#define FA__BW_PW (FA__GM_NV * FA__VWS)         /* fp32 panel width */
#if !((FA__BW_PW <= 16 && 16 % FA__BW_PW == 0) || FA__BW_PW % 16 == 0)
#  error "fa_bf16.h: the fp32 panel width must divide 16 or be a multiple of 16"
#endif
#define FA_BF16_PANELS 1                        /* tasks follow fa_gemm.h's panels */
#define FA_BF16_PW FA__BW_PW
#define FA_BF16_MR FA_GM_MR
#define FA_BF16_NB 256                          /* features per bf16-output chunk */
#ifndef FA_BF16_KCS
#  define FA_BF16_KCS(np) ((np) >= 3 ? FA_GM_KC / 4 : (np) == 2 ? FA_GM_KC / 2 : FA_GM_KC)
#endif

static inline size_t fa_bf16_scratch(ptrdiff_t rows, int out_bf16, ptrdiff_t K)
{
    (void)K;
    size_t ng = (size_t)((rows + FA_GM_MR - 1) / FA_GM_MR);
    size_t xp = ng * FA_GM_MR * FA_GM_KC * 4;
    size_t wf = (size_t)FA_GM_KC * FA__BW_PW * 4;
    size_t c = (size_t)rows * (out_bf16 ? FA_BF16_NB : FA__BW_PW) * 4;
    return xp + wf + (c + 63) / 64 * 64;
}
#define FA_BF16_SCRATCH(K) fa_bf16_scratch(FA_BF16_MB, 1, (K))

/* W's packed panel slice, features [nf, nf + PW) (nf a multiple of PW),
 * pairs [q0, q0 + nq), widened into Wf[k * PW + j] (k = 2 (q - q0) + e).
 * two: whether the panel's second 16-lane group exists (PW = 32; the packed
 * weight holds ceil(N / 16) groups), else its lanes are zeros. */
FA__AI void fa__bw_widen_w(const uint16_t *P, ptrdiff_t Kp, ptrdiff_t nf, ptrdiff_t q0,
                           ptrdiff_t nq, float *Wf, int two)
{
#if defined(FA__ISA_AVX512) && FA__BW_PW == 32
    const uint16_t *s0 = P + (nf / 16) * (Kp / 2) * 32 + q0 * 32;
    const uint16_t *s1 = s0 + (Kp / 2) * 32;
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (ptrdiff_t q = 0; q < nq; q++) {
        __m512i l0 = _mm512_loadu_si512((const void *)(s0 + q * 32));
        __m512i l1 = two ? _mm512_loadu_si512((const void *)(s1 + q * 32)) : _mm512_setzero_si512();
        float *d = Wf + q * 64;
        _mm512_store_ps(d, _mm512_castsi512_ps(_mm512_slli_epi32(l0, 16)));
        _mm512_store_ps(d + 16, _mm512_castsi512_ps(_mm512_slli_epi32(l1, 16)));
        _mm512_store_ps(d + 32, _mm512_castsi512_ps(_mm512_and_si512(l0, hi)));
        _mm512_store_ps(d + 48, _mm512_castsi512_ps(_mm512_and_si512(l1, hi)));
    }
#elif defined(FA__ISA_AVX2) && FA__BW_PW == 16
    (void)two;
    const uint16_t *s0 = P + (nf / 16) * (Kp / 2) * 32 + q0 * 32;
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    for (ptrdiff_t q = 0; q < nq; q++) {
        __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)(s0 + q * 32));
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(s0 + q * 32 + 16));
        float *d = Wf + q * 32;
        _mm256_store_ps(d, _mm256_castsi256_ps(_mm256_slli_epi32(l0, 16)));
        _mm256_store_ps(d + 8, _mm256_castsi256_ps(_mm256_slli_epi32(l1, 16)));
        _mm256_store_ps(d + 16, _mm256_castsi256_ps(_mm256_and_si256(l0, hi)));
        _mm256_store_ps(d + 24, _mm256_castsi256_ps(_mm256_and_si256(l1, hi)));
    }
#else
    const int gw = FA__BW_PW < 16 ? FA__BW_PW : 16;
    for (int j0 = 0; j0 < FA__BW_PW; j0 += gw) {
        ptrdiff_t f = nf + j0;
        const uint16_t *s = P + (f / 16) * (Kp / 2) * 32 + q0 * 32 + (f % 16) * 2;
        const int have = j0 < 16 || two;
        for (ptrdiff_t q = 0; q < nq; q++) {
            float *de = Wf + 2 * q * FA__BW_PW + j0, *dodd = de + FA__BW_PW;
            for (int j = 0; j < gw; j++) {
                de[j] = have ? fa_bf16_to_f32(s[q * 32 + 2 * j]) : 0.0f;
                dodd[j] = have ? fa_bf16_to_f32(s[q * 32 + 2 * j + 1]) : 0.0f;
            }
        }
    }
#endif
}

/* The direct microkernel (avx512, avx2) for a task of one row group: R rows
 * x G 16-lane groups read from the packed bf16 weight and widened in the
 * registers (even k = line << 16, odd k = line & 0xffff0000), with no fp32
 * copy of W (few rows would not repay it).  The same chain per lane as the
 * panel kernel: acc from +0 (or Y), fma(w, x, acc) over k in order.  Xp is
 * the slice's packed-X block (Xp[k*MR + i]), Pg the first group's line at
 * the slice's first pair, gst the stride between groups. */
#if (defined(FA__ISA_AVX512) && FA__BW_PW == 32) || (defined(FA__ISA_AVX2) && FA__BW_PW == 16)
#  define FA__BW_DIRECT 1
#  if defined(FA__ISA_AVX512)
FA__AI void fa__bw_direct(const float *Xp, const uint16_t *Pg, ptrdiff_t gst, ptrdiff_t nq,
                          float *Y, ptrdiff_t ys, int first, const int R, const int G)
{
    __m512 acc[FA_GM_MR][8];
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    FA__UNROLL for (int r = 0; r < R; r++)
        FA__UNROLL for (int g = 0; g < G; g++)
            acc[r][g] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(Y + r * ys + 16 * g);
    for (ptrdiff_t q = 0; q < nq; q++) {
        const float *xe = Xp + 2 * q * FA_GM_MR, *xo = xe + FA_GM_MR;
        FA__UNROLL for (int g = 0; g < G; g++) {
            __m512i l = _mm512_loadu_si512((const void *)(Pg + g * gst + q * 32));
            __m512 e = _mm512_castsi512_ps(_mm512_slli_epi32(l, 16));
            __m512 o = _mm512_castsi512_ps(_mm512_and_si512(l, hi));
            FA__UNROLL for (int r = 0; r < R; r++)
                acc[r][g] = _mm512_fmadd_ps(e, _mm512_set1_ps(xe[r]), acc[r][g]);
            FA__UNROLL for (int r = 0; r < R; r++)
                acc[r][g] = _mm512_fmadd_ps(o, _mm512_set1_ps(xo[r]), acc[r][g]);
        }
    }
    FA__UNROLL for (int r = 0; r < R; r++)
        FA__UNROLL for (int g = 0; g < G; g++) _mm512_storeu_ps(Y + r * ys + 16 * g, acc[r][g]);
}
#  else
FA__AI void fa__bw_direct(const float *Xp, const uint16_t *Pg, ptrdiff_t gst, ptrdiff_t nq,
                          float *Y, ptrdiff_t ys, int first, const int R, const int G)
{
    __m256 acc[FA_GM_MR][8];
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    FA__UNROLL for (int r = 0; r < R; r++)
        FA__UNROLL for (int g = 0; g < 2 * G; g++)
            acc[r][g] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(Y + r * ys + 8 * g);
    for (ptrdiff_t q = 0; q < nq; q++) {
        const float *xe = Xp + 2 * q * FA_GM_MR, *xo = xe + FA_GM_MR;
        FA__UNROLL for (int g = 0; g < G; g++) {
            const uint16_t *lp = Pg + g * gst + q * 32;
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)lp);
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(lp + 16));
            __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(l0, 16));
            __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(l1, 16));
            __m256 o0 = _mm256_castsi256_ps(_mm256_and_si256(l0, hi));
            __m256 o1 = _mm256_castsi256_ps(_mm256_and_si256(l1, hi));
            FA__UNROLL for (int r = 0; r < R; r++) {
                __m256 b = _mm256_broadcast_ss(xe + r);
                acc[r][2 * g] = _mm256_fmadd_ps(e0, b, acc[r][2 * g]);
                acc[r][2 * g + 1] = _mm256_fmadd_ps(e1, b, acc[r][2 * g + 1]);
            }
            FA__UNROLL for (int r = 0; r < R; r++) {
                __m256 b = _mm256_broadcast_ss(xo + r);
                acc[r][2 * g] = _mm256_fmadd_ps(o0, b, acc[r][2 * g]);
                acc[r][2 * g + 1] = _mm256_fmadd_ps(o1, b, acc[r][2 * g + 1]);
            }
        }
    }
    FA__UNROLL for (int r = 0; r < R; r++)
        FA__UNROLL for (int g = 0; g < 2 * G; g++) _mm256_storeu_ps(Y + r * ys + 8 * g, acc[r][g]);
}
#  endif
/* a run-time row count 1..MR, a constant group count; more than
 * FA__BW_DSPLIT rows in two calls (the same sums: rows are independent),
 * so that the accumulators, the widened line and the broadcast fit in the
 * registers */
#  if defined(FA__ISA_AVX512)
#    define FA__BW_DSPLIT 7
#  else
#    define FA__BW_DSPLIT 4
#  endif
FA__AI void fa__bw_direct_sw(const float *Xp, const uint16_t *Pg, ptrdiff_t gst, ptrdiff_t nq,
                             float *Y, ptrdiff_t ys, int first, int R, const int G)
{
    switch (R) {
#define FA__BW_CASE(c) case c: if (c <= FA_GM_MR) fa__bw_direct(Xp, Pg, gst, nq, Y, ys, first, c <= FA_GM_MR ? c : 1, G); break;
    FA__BW_CASE(1) FA__BW_CASE(2) FA__BW_CASE(3) FA__BW_CASE(4) FA__BW_CASE(5)
    FA__BW_CASE(6) FA__BW_CASE(7) FA__BW_CASE(8) FA__BW_CASE(9) FA__BW_CASE(10)
    FA__BW_CASE(11) FA__BW_CASE(12) FA__BW_CASE(13) FA__BW_CASE(14)
#undef FA__BW_CASE
    default: break;
    }
}

FA__AI void fa__bw_direct_rows(const float *Xp, const uint16_t *Pg, ptrdiff_t gst, ptrdiff_t nq,
                               float *Y, ptrdiff_t ys, int first, int R, const int G)
{
    if (R > FA__BW_DSPLIT) {
        const int r1 = R / 2;
        fa__bw_direct_sw(Xp, Pg, gst, nq, Y, ys, first, r1, G);
        Xp += r1;
        Y += (ptrdiff_t)r1 * ys;
        R -= r1;
    }
    fa__bw_direct_sw(Xp, Pg, gst, nq, Y, ys, first, R, G);
}
#  define FA__BW_DIRECT_ROWS(...) fa__bw_direct_rows(__VA_ARGS__)
#else
#  define FA__BW_DIRECT 0
#  define FA__BW_DIRECT_ROWS(...) ((void)0)
#endif

/* one slice of panels [p, p + NP) of the chunk (panel p - pbase of dst):
 * for one row group on a direct build, the direct kernel over GE 16-lane
 * groups (NP * PW / 16, fewer for a partial last panel); else each panel
 * widened into Wf and the fp32 kernel run for every row group */
#define FA__BW_RUN(NP, GE)                                                              \
    do {                                                                                \
        const ptrdiff_t nf_ = n0 + c0 + (ptrdiff_t)p * FA__BW_PW;                       \
        float *dp_ = dst + (ptrdiff_t)(p - pbase) * FA__BW_PW;                          \
        if (FA__BW_DIRECT && ng == 1) {                                                 \
            FA__BW_DIRECT_ROWS(Xp, P + (nf_ / 16) * gst + (k0 / 2) * 32, gst, kc / 2,   \
                               dp_, ld, first, rlast, (GE));                            \
        } else {                                                                        \
            for (int pp = 0; pp < (NP); pp++)                                           \
                fa__bw_widen_w(P, Kp, nf_ + (ptrdiff_t)pp * FA__BW_PW, k0 / 2, kc / 2,  \
                               Wf + (ptrdiff_t)pp * kcs * FA__BW_PW,                    \
                               (GE) > 1 || pp < (NP) - 1);                              \
            for (int g = 0; g < ng; g++)                                                \
                fa__gm_rows_f32(Xp + (ptrdiff_t)g * kcs * FA_GM_MR, Wf, kcs * FA__BW_PW, \
                                kc, dp_ + (ptrdiff_t)g * FA_GM_MR * ld, ld, NULL, first, 0, \
                                0, g == ng - 1 ? rlast : FA_GM_MR, (NP));               \
        }                                                                               \
    } while (0)

/* y[r, n0 + c] for r < nr (<= FA_BF16_MB), c < nn (n0 a multiple of PW and
 * of 16): x (bf16, row stride xs) times the packed weight, K features. */
static void fa_bf16_gemm_task(const uint16_t *x, ptrdiff_t xs, int nr, const uint16_t *P,
                              ptrdiff_t K, ptrdiff_t n0, int nn, const float *bias, int act,
                              void *y, ptrdiff_t ys, int out_bf16, void *scratch)
{
    const ptrdiff_t Kp = fa_bf16_kp(K), Ke = (K + 1) / 2 * 2, gst = (Kp / 2) * 32;
    const int ng = (nr + FA_GM_MR - 1) / FA_GM_MR, rlast = nr - (ng - 1) * FA_GM_MR;
    /* a single group of few rows: several panels per microkernel call, over
     * shorter slices (the widened panels stay one KC x PW slice in all) */
    const int np_call = ng > 1 ? 1 : FA__GM_PFOR(rlast);
    const ptrdiff_t kcs = FA__BW_DIRECT && ng == 1 ? FA_GM_KC : FA_BF16_KCS(np_call);
    float *Xp = (float *)scratch;
    float *Wf = Xp + (ptrdiff_t)ng * FA_GM_MR * FA_GM_KC;
    float *Cb = Wf + (ptrdiff_t)FA_GM_KC * FA__BW_PW;
    int cw;
    (void)gst;      /* the direct kernel's (avx512, avx2) */
    for (int c0 = 0; c0 < nn; c0 += cw) {
        cw = out_bf16 && nn - c0 > FA_BF16_NB ? FA_BF16_NB : nn - c0;
        const int np = (cw + FA__BW_PW - 1) / FA__BW_PW;
        const int nfull = cw / FA__BW_PW;                  /* whole panels */
        ptrdiff_t k0 = 0;
        for (;;) {
            const ptrdiff_t kc = Ke - k0 < kcs ? Ke - k0 : kcs;
            const int first = k0 == 0;
            /* Xp[g*kcs*MR + k*MR + i] = x[g*MR + i][k0 + k] (0 at k = K) */
            for (int g = 0; g < ng; g++) {
                const int R = g == ng - 1 ? rlast : FA_GM_MR;
                float *xg = Xp + (ptrdiff_t)g * kcs * FA_GM_MR;
                for (int i = 0; i < R; i++) {
                    const uint16_t *xr = x + ((ptrdiff_t)g * FA_GM_MR + i) * xs + k0;
                    const ptrdiff_t kx = K - k0 < kc ? K - k0 : kc;
                    for (ptrdiff_t k = 0; k < kx; k++)
                        xg[k * FA_GM_MR + i] = fa_bf16_to_f32(xr[k]);
                    for (ptrdiff_t k = kx; k < kc; k++)
                        xg[k * FA_GM_MR + i] = 0.0f;
                }
            }
            /* whole panels [0, nfull) into y (fp32) or Cb (bf16, NB apart);
             * a partial last panel into Cb after them (bf16) or alone */
            int p = 0, pbase = 0;
            float *dst = out_bf16 ? Cb : (float *)y + c0;
            ptrdiff_t ld = out_bf16 ? FA_BF16_NB : ys;
            if (np_call == 4)
                for (; p + 4 <= nfull; p += 4) FA__BW_RUN(4, 4 * FA__BW_PW / 16);
            if (np_call == 3)
                for (; p + 3 <= nfull; p += 3) FA__BW_RUN(3, 3 * FA__BW_PW / 16);
            if (np_call >= 2)
                for (; p + 2 <= nfull; p += 2) FA__BW_RUN(2, 2 * FA__BW_PW / 16);
            for (; p < nfull; p++) FA__BW_RUN(1, FA__BW_PW > 16 ? FA__BW_PW / 16 : 1);
            if (p < np) {
                if (!out_bf16) {
                    dst = Cb; ld = FA__BW_PW; pbase = p;
                }
                if (FA__BW_PW > 16 && cw - p * FA__BW_PW > 16)
                    FA__BW_RUN(1, 2);
                else
                    FA__BW_RUN(1, 1);
            }
            if (k0 + kc >= Ke)
                break;
            k0 += kc;
        }
        const float *bc = bias ? bias + c0 : NULL;
        const int nd = out_bf16 ? 0 : nfull * FA__BW_PW;   /* columns already in y */
        if (nd && (bias || act))
            fa_bf16_store((float *)y + c0, ys, nr, nd, bc, act, (float *)y + c0, ys, 0);
        if (cw > nd)
            fa_bf16_store(Cb, out_bf16 ? FA_BF16_NB : FA__BW_PW, nr, cw - nd,
                          bc ? bc + nd : NULL, act,
                          out_bf16 ? (void *)((uint16_t *)y + c0) : (void *)((float *)y + c0 + nd),
                          ys, out_bf16);
    }
}
#undef FA__BW_RUN
#endif

#if !defined(FA_BF16_PREPACK)
/* amx and widen load (or widen) x inside the task: the packed-once rows of a
 * few-row call are plain contiguous copies (row stride K), and the prepacked
 * task is the ordinary one on them (the Cython driver uses this only where
 * FA_BF16_PREPACK is 1; these keep every build's interface the same). */
#define FA_BF16_PREPACK 0
static inline size_t fa_bf16_prepack_bytes(ptrdiff_t K)   /* per row block */
{
    return (size_t)FA_BF16_MB * (size_t)K * 2;
}
static inline void fa_bf16_prepack(const uint16_t *x, ptrdiff_t xs, int nr, ptrdiff_t K,
                                   void *dst)
{
    for (int r = 0; r < nr; r++)
        memcpy((uint16_t *)dst + (ptrdiff_t)r * K, x + (ptrdiff_t)r * xs, (size_t)K * 2);
}
static inline size_t fa_bf16_pre_scratch(ptrdiff_t rows, int out_bf16, ptrdiff_t K)
{
    return fa_bf16_scratch(rows, out_bf16, K);
}
static void fa_bf16_gemm_task_pre(const void *pre, int nr, const uint16_t *P, ptrdiff_t K,
                                  ptrdiff_t n0, int nn, const float *bias, int act, void *y,
                                  ptrdiff_t ys, int out_bf16, void *scratch)
{
    fa_bf16_gemm_task((const uint16_t *)pre, K, nr, P, K, n0, nn, bias, act, y, ys, out_bf16,
                      scratch);
}
#endif

#endif /* FASTATTN_FA_BF16_H */
