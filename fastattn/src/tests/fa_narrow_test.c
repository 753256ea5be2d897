/* Standalone test (and benchmark) of ../fa_narrow.h: the narrow-lane linear
 * tile must equal the 64-lane one (fa_pack_qt + fa_gemm_nt in LIN_KC = 256
 * slices + fa_store_yt, as _lin_task in the Cython driver runs them) BIT FOR
 * BIT, for every row count 1..64, many (nn, K) including K > 256 and K no
 * multiple of anything, with and without bias and ReLU, random values and
 * special ones (NaN, +-inf, +-0.0, denormals, values whose products
 * overflow).  Two NaNs count as equal whatever their payloads (which NaN an
 * x86 instruction propagates depends on the operand order the compiler
 * picks); every other result must have the same bits.
 *
 *   ./fa_narrow_test          the tests
 *   ./fa_narrow_test --bench [nn K [x]]  + one-thread timings, wide vs
 *                        narrow tile (a 4th argument: timings only)
 *
 * Built for every instruction set by narrow.sh.  Exit status 0 iff all passed.
 */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <float.h>
#include <stdint.h>
#include <time.h>

#include "fa_util.h"
#define FA_TEST_SEED 0x2545F4914F6CDD1Dull
#include "fa_test_util.h"
#include "fa_narrow.h"

#define LIN_KC 256
#define MAXN 160

static long nfail = 0, nchecked = 0;

#define DEF_TESTS(T, SUF, TMIN, TMAX)                                            \
/* the 64-lane path, exactly as _lin_task runs it */                             \
static void wide_##SUF(const T *x, ptrdiff_t xs, int nr, const T *w, ptrdiff_t ws, \
                       int nn, ptrdiff_t K, const T *bias, int relu, T *y,       \
                       ptrdiff_t ys, T *Xt, T *Yt)                               \
{                                                                                \
    ptrdiff_t k0 = 0;                                                            \
    if (K == 0)                                                                  \
        for (ptrdiff_t i = 0; i < (ptrdiff_t)nn * FA_BR; i++) Yt[i] = 0;         \
    while (k0 < K) {                                                             \
        int kc = (int)(K - k0 < LIN_KC ? K - k0 : LIN_KC);                       \
        fa_pack_qt_##SUF(x + k0, xs, nr, kc, (T)1.0, Xt);                        \
        fa_gemm_nt_##SUF(w + k0, ws, nn, kc, Xt, Yt, k0 > 0);                    \
        k0 += kc;                                                                \
    }                                                                            \
    fa_store_yt_##SUF(Yt, nr, nn, bias, relu, y, ys);                            \
}                                                                                \
/* kind 0: uniform(-1, 1); 1: + specials; 2: mostly zeros of both signs and   \
 * denormals; 3: large values (products overflow to inf, inf - inf = NaN) */    \
static T val_##SUF(int kind)                                                     \
{                                                                                \
    double u = urand() * 2 - 1;                                                  \
    if (kind == 1 && irand(16) == 0) {                                           \
        switch (irand(8)) {                                                      \
        case 0: return (T)NAN;                                                   \
        case 1: return (T)INFINITY;                                              \
        case 2: return -(T)INFINITY;                                             \
        case 3: return -(T)0.0;                                                  \
        case 4: return (T)0.0;                                                   \
        case 5: return (T)(u * TMIN);             /* denormal */                 \
        case 6: return (T)(u * TMAX * 0.5);                                      \
        default: return (T)(u * TMIN * 4);                                       \
        }                                                                        \
    }                                                                            \
    if (kind == 2) {                                                             \
        int r = irand(4);                                                        \
        return r == 0 ? -(T)0.0 : r == 1 ? (T)0.0 : r == 2 ? (T)(u * TMIN) : (T)u; \
    }                                                                            \
    if (kind == 3) return (T)(u * TMAX * 0.25);                                  \
    return (T)u;                                                                 \
}                                                                                \
static int same_##SUF(T a, T b)                                                  \
{                                                                                \
    if (a != a && b != b) return 1;                                              \
    return memcmp(&a, &b, sizeof(T)) == 0;                                       \
}                                                                                \
static void case_##SUF(int nr, int nn, int K, int kind, int hasbias, int relu)   \
{                                                                                \
    ptrdiff_t xs = K + 1 + irand(3), ws = K + irand(3), ys = nn + 1 + irand(3);  \
    T *x = xalloc(sizeof(T) * (nr * xs + 1));                                    \
    T *w = xalloc(sizeof(T) * (nn * ws + 1));                                    \
    T *b = xalloc(sizeof(T) * (nn + 1));                                         \
    T *y1 = xalloc(sizeof(T) * (nr * ys + 1));                                   \
    T *y2 = xalloc(sizeof(T) * (nr * ys + 1));                                   \
    T *Xt = xalloc(sizeof(T) * LIN_KC * FA_BR);                                  \
    T *Yt = xalloc(sizeof(T) * MAXN * FA_BR);                                    \
    T *Xn = xalloc(sizeof(T) * FA_NR_XN);                                        \
    T *Yn = xalloc(sizeof(T) * MAXN * FA_BR);                                    \
    for (ptrdiff_t i = 0; i < nr * xs; i++) x[i] = val_##SUF(kind);              \
    for (ptrdiff_t i = 0; i < nn * ws; i++) w[i] = val_##SUF(kind);              \
    for (int i = 0; i < nn; i++) b[i] = val_##SUF(kind == 3 ? 0 : kind);         \
    for (ptrdiff_t i = 0; i < nr * ys; i++) y1[i] = y2[i] = (T)777;              \
    /* stale garbage in the narrow tile's buffers must not matter */             \
    for (int i = 0; i < FA_NR_XN; i++) Xn[i] = (T)NAN;                           \
    for (int i = 0; i < MAXN * FA_BR; i++) Yn[i] = (T)-5;                        \
    wide_##SUF(x, xs, nr, w, ws, nn, K, hasbias ? b : NULL, relu, y1, ys, Xt, Yt); \
    fa_gemm_narrow_##SUF(x, xs, nr, w, ws, nn, K, hasbias ? b : NULL, relu, y2, ys, Xn, Yn); \
    int bad = 0;                                                                 \
    for (int i = 0; i < nr; i++)                                                 \
        for (ptrdiff_t n = 0; n < ys; n++) {                                     \
            T a = y1[i * ys + n], c = y2[i * ys + n];                            \
            nchecked++;                                                          \
            if (n >= nn ? c != (T)777 : !same_##SUF(a, c)) {                     \
                if (bad++ < 3)                                                   \
                    printf("  FAIL " #SUF " nr=%d nn=%d K=%d kind=%d bias=%d relu=%d" \
                           " y[%d][%d]: wide %a narrow %a\n", nr, nn, K, kind,   \
                           hasbias, relu, i, (int)n, (double)a, (double)c);     \
            }                                                                    \
        }                                                                        \
    nfail += bad;                                                                \
    free(x); free(w); free(b); free(y1); free(y2); free(Xt); free(Yt); free(Xn); free(Yn); \
}                                                                                \
static void tests_##SUF(void)                                                    \
{                                                                                \
    static const int nns[] = {1, 2, 3, 5, 7, 8, 9, 12, 13, 17, 23, 24, 25, 31,   \
                              47, 48, 49, 96, 97, 150};                          \
    static const int Ks[] = {0, 1, 2, 3, 7, 16, 31, 100, 255, 256, 257, 300,    \
                             511, 512, 513, 777, 1025, 1500};                    \
    const int nnn = (int)(sizeof(nns) / sizeof(int)), nK = (int)(sizeof(Ks) / sizeof(int)); \
    long before = nfail;                                                         \
    for (int nr = 1; nr <= FA_BR; nr++) {                                        \
        /* every nn and every K at least once per row count, in random pairs */  \
        for (int t = 0; t < (nnn > nK ? nnn : nK); t++) {                        \
            int nn = nns[t % nnn], K = Ks[(t * 7 + nr) % nK];                    \
            case_##SUF(nr, nn, K, t % 4, (t + nr) % 2, (t / 2 + nr) % 2);        \
        }                                                                        \
        for (int t = 0; t < 4; t++)                                              \
            case_##SUF(nr, nns[irand(nnn)], Ks[irand(nK)], 1, t % 2, t / 2);    \
    }                                                                            \
    printf("  %s narrow == wide: %s (%ld mismatches)\n", #SUF,                   \
           nfail == before ? "ok" : "FAIL", nfail - before);                     \
}                                                                                \
static double bench_##SUF(int nr, int nn, int K, int narrow, int reps)           \
{                                                                                \
    T *x = xalloc(sizeof(T) * nr * K), *w = xalloc(sizeof(T) * nn * K);          \
    T *y = xalloc(sizeof(T) * nr * nn), *b = xalloc(sizeof(T) * nn);             \
    T *Xt = xalloc(sizeof(T) * LIN_KC * FA_BR), *Yt = xalloc(sizeof(T) * nn * FA_BR); \
    for (ptrdiff_t i = 0; i < (ptrdiff_t)nr * K; i++) x[i] = (T)(urand() - 0.5); \
    for (ptrdiff_t i = 0; i < (ptrdiff_t)nn * K; i++) w[i] = (T)(urand() - 0.5); \
    double best = 1e30;                                                          \
    for (int r = 0; r < reps; r++) {                                             \
        double t0 = now_cpu();                                                       \
        if (narrow) fa_gemm_narrow_##SUF(x, K, nr, w, K, nn, K, b, 0, y, nn, Xt, Yt); \
        else wide_##SUF(x, K, nr, w, K, nn, K, b, 0, y, nn, Xt, Yt);             \
        double dt = now_cpu() - t0;                                                  \
        if (dt < best) best = dt;                                                \
    }                                                                            \
    free(x); free(w); free(y); free(b); free(Xt); free(Yt);                      \
    return 2.0 * nr * nn * K / best * 1e-9;                                      \
}

DEF_TESTS(float, f32, FLT_MIN, FLT_MAX)
DEF_TESTS(double, f64, DBL_MIN, DBL_MAX)

int main(int argc, char **argv)
{
    int bench = argc > 1 && !strcmp(argv[1], "--bench");
    int bnn = argc > 2 ? atoi(argv[2]) : 384, bK = argc > 3 ? atoi(argv[3]) : 768;
    if (argc > 4) { /* --bench nn K only: skip the tests */ }
    printf("fa_narrow_test: ISA %s, f32 lanes per vector %d\n", fa_tiles_isa(),
           fa_narrow_lanes_f32(1));
    if (argc <= 4) {
        tests_f32();
        tests_f64();
    }
    if (bench) {
        static const int nrs[] = {1, 4, 8, 12, 16, 24, 32, 48, 63};
        printf("one thread, best of 7, GFLOP/s (nn = %d, K = %d): nr  wide  narrow\n", bnn, bK);
        for (int i = 0; i < (int)(sizeof(nrs) / sizeof(int)); i++) {
            double a = bench_f32(nrs[i], bnn, bK, 0, 7), c = bench_f32(nrs[i], bnn, bK, 1, 7);
            printf("  f32 %2d  %6.1f  %6.1f\n", nrs[i], a, c);
        }
        for (int i = 0; i < (int)(sizeof(nrs) / sizeof(int)); i++) {
            double a = bench_f64(nrs[i], bnn, bK, 0, 7), c = bench_f64(nrs[i], bnn, bK, 1, 7);
            printf("  f64 %2d  %6.1f  %6.1f\n", nrs[i], a, c);
        }
    }
    printf("%ld elements checked, %ld mismatches\n", nchecked, nfail);
    return nfail != 0;
}
