/* Standalone test (and benchmark) of ../fa_gemm.h: the packed-panel linear
 * GEMM must equal the lanes-layout 64-lane tile (fa_pack_qt + fa_gemm_nt in
 * LIN_KC = 256 slices + fa_store_yt, as _lin_task in the Cython driver runs
 * them) BIT FOR BIT, for every row count 1..FA_GM_MB, many (N, K) including
 * K > 256, K and N no multiple of anything, sub-ranges of the panels (as the
 * driver's tasks split N), with and without bias and ReLU, random values and
 * special ones (NaN, +-inf, +-0.0, denormals, overflowing products).  Two NaNs
 * count as equal whatever their payloads; every other result must have the
 * same bits, and nothing outside the output rows/columns may be written.
 *
 *   ./fa_gemm_test                 the tests
 *   ./fa_gemm_test --bench [N K]   + one-thread timings, lanes tile vs packed
 *
 * Built for every instruction set by narrow.sh (but emul512: see there).
 * Exit status 0 iff all passed.
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
#include "fa_test_util.h"
#include "fa_gemm.h"

#define LIN_KC 256
#define MAXN 200

static long nfail = 0, nchecked = 0;

#define DEF_TESTS(T, SUF, TMIN, TMAX)                                            \
/* the 64-lane path, exactly as _lin_task runs it, over rows in blocks of 64 */  \
static void wide_##SUF(const T *x, ptrdiff_t xs, int M, const T *w, ptrdiff_t ws, \
                       int nn, ptrdiff_t K, const T *bias, int relu, T *y,       \
                       ptrdiff_t ys, T *Xt, T *Yt)                               \
{                                                                                \
    for (int m0 = 0; m0 < M; m0 += FA_BR) {                                      \
        int nr = M - m0 < FA_BR ? M - m0 : FA_BR;                                \
        ptrdiff_t k0 = 0;                                                        \
        if (K == 0)                                                              \
            for (ptrdiff_t i = 0; i < (ptrdiff_t)nn * FA_BR; i++) Yt[i] = 0;     \
        while (k0 < K) {                                                         \
            int kc = (int)(K - k0 < LIN_KC ? K - k0 : LIN_KC);                   \
            fa_pack_qt_##SUF(x + m0 * xs + k0, xs, nr, kc, (T)1.0, Xt);          \
            fa_gemm_nt_##SUF(w + k0, ws, nn, kc, Xt, Yt, k0 > 0);                \
            k0 += kc;                                                            \
        }                                                                        \
        fa_store_yt_##SUF(Yt, nr, nn, bias, relu, y + m0 * ys, ys);              \
    }                                                                            \
}                                                                                \
/* the packed path as the driver runs it: row blocks of at most FA_GM_MB rows, \
 * panel ranges [p0, p1) split at pcut */                                       \
static void packed_##SUF(const T *x, ptrdiff_t xs, int M, const T *Wp, int N,   \
                         ptrdiff_t K, const T *bias, int relu, T *y, ptrdiff_t ys, \
                         T *buf, int mb, int pcut)                               \
{                                                                                \
    const int PW = fa_gemm_panel_width_##SUF();                                  \
    const int np = (N + PW - 1) / PW;                                            \
    const ptrdiff_t pst = (K > 0 ? K : 1) * PW;                                  \
    for (int m0 = 0; m0 < M; m0 += mb) {                                         \
        int mr = M - m0 < mb ? M - m0 : mb;                                      \
        int cuts[3] = {0, pcut < np ? pcut : np, np};                            \
        for (int c = 0; c < 2; c++) {                                            \
            int p0 = cuts[c], p1 = cuts[c + 1];                                  \
            if (p1 <= p0) continue;                                              \
            int nlast = p1 == np ? N - (np - 1) * PW : PW;                       \
            fa_gemm_packed_##SUF(x + m0 * xs, xs, mr, Wp + p0 * pst, K, p1 - p0, \
                                 nlast, bias ? bias + p0 * PW : bias, relu,      \
                                 y + m0 * ys + p0 * PW, ys, buf);                \
        }                                                                        \
    }                                                                            \
}                                                                                \
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
        case 5: return (T)(u * TMIN);                                            \
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
static void case_##SUF(int M, int nn, int K, int kind, int hasbias, int relu, int mb, int pcut) \
{                                                                                \
    ptrdiff_t xs = K + 1 + irand(3), ws = K + irand(3), ys = nn + 1 + irand(3);  \
    T *x = xalloc(sizeof(T) * (M * xs + 1));                                     \
    T *w = xalloc(sizeof(T) * (nn * ws + 1));                                    \
    T *b = xalloc(sizeof(T) * (nn + 1));                                         \
    T *y1 = xalloc(sizeof(T) * (M * ys + 1));                                    \
    T *y2 = xalloc(sizeof(T) * (M * ys + 1));                                    \
    T *Xt = xalloc(sizeof(T) * LIN_KC * FA_BR);                                  \
    T *Yt = xalloc(sizeof(T) * MAXN * FA_BR);                                    \
    T *Wp = xalloc(sizeof(T) * fa_gemm_packed_size_##SUF(nn, K));                \
    /* exactly the scratch of the largest row block (ASan builds see overruns) */ \
    const ptrdiff_t nbuf = fa_gemm_scratch_##SUF(M < mb ? M : mb);               \
    T *buf = xalloc(sizeof(T) * nbuf);                                           \
    const int PW = fa_gemm_panel_width_##SUF(), np = (nn + PW - 1) / PW;         \
    for (ptrdiff_t i = 0; i < M * xs; i++) x[i] = val_##SUF(kind);               \
    for (ptrdiff_t i = 0; i < nn * ws; i++) w[i] = val_##SUF(kind);              \
    for (int i = 0; i < nn; i++) b[i] = val_##SUF(kind == 3 ? 0 : kind);         \
    for (ptrdiff_t i = 0; i < M * ys; i++) y1[i] = y2[i] = (T)777;               \
    for (ptrdiff_t i = 0; i < nbuf; i++) buf[i] = (T)NAN;                        \
    /* packed in two calls, as threads would */                                  \
    fa_gemm_pack_w_##SUF(w, ws, nn, K, 0, np / 2, Wp);                           \
    fa_gemm_pack_w_##SUF(w, ws, nn, K, np / 2, np, Wp);                          \
    wide_##SUF(x, xs, M, w, ws, nn, K, hasbias ? b : NULL, relu, y1, ys, Xt, Yt); \
    packed_##SUF(x, xs, M, Wp, nn, K, hasbias ? b : NULL, relu, y2, ys, buf, mb, pcut); \
    int bad = 0;                                                                 \
    for (int i = 0; i < M; i++)                                                  \
        for (ptrdiff_t n = 0; n < ys; n++) {                                     \
            T a = y1[i * ys + n], c = y2[i * ys + n];                            \
            nchecked++;                                                          \
            if (n >= nn ? c != (T)777 : !same_##SUF(a, c)) {                     \
                if (bad++ < 3)                                                   \
                    printf("  FAIL " #SUF " M=%d nn=%d K=%d kind=%d bias=%d relu=%d" \
                           " mb=%d pcut=%d y[%d][%d]: wide %a packed %a\n", M, nn, K, \
                           kind, hasbias, relu, mb, pcut, i, (int)n, (double)a, (double)c); \
            }                                                                    \
        }                                                                        \
    nfail += bad;                                                                \
    free(x); free(w); free(b); free(y1); free(y2); free(Xt); free(Yt); free(Wp); free(buf); \
}                                                                                \
static void tests_##SUF(void)                                                    \
{                                                                                \
    static const int nns[] = {1, 2, 3, 5, 7, 8, 9, 12, 13, 16, 17, 23, 24, 31, 32, \
                              33, 47, 48, 63, 64, 65, 96, 97, 150, 200};         \
    static const int Ks[] = {0, 1, 2, 3, 7, 16, 31, 100, 255, 256, 257, 300,    \
                             511, 512, 513, 777, 1025};                          \
    const int nnn = (int)(sizeof(nns) / sizeof(int)), nK = (int)(sizeof(Ks) / sizeof(int)); \
    long before = nfail;                                                         \
    for (int M = 1; M <= FA_GM_MB + 20; M++) {                                   \
        int reps = M <= 20 || M % 7 == 0 ? (nnn > nK ? nnn : nK) : 2;            \
        for (int t = 0; t < reps; t++) {                                         \
            int nn = nns[(t + M) % nnn], K = Ks[(t * 7 + M) % nK];               \
            int mb = t % 3 == 0 ? FA_GM_MB : 1 + irand(FA_GM_MB);                \
            case_##SUF(M, nn, K, t % 4, (t + M) % 2, (t / 2 + M) % 2, mb, irand(4)); \
        }                                                                        \
    }                                                                            \
    printf("  %s packed == lanes tile: %s (%ld mismatches)\n", #SUF,             \
           nfail == before ? "ok" : "FAIL", nfail - before);                     \
}                                                                                \
static void bench_##SUF(int M, int nn, int K, int reps, double *gw, double *gp)  \
{                                                                                \
    T *x = xalloc(sizeof(T) * M * K), *w = xalloc(sizeof(T) * nn * K);           \
    T *y = xalloc(sizeof(T) * M * nn), *b = xalloc(sizeof(T) * nn);              \
    T *Xt = xalloc(sizeof(T) * LIN_KC * FA_BR), *Yt = xalloc(sizeof(T) * nn * FA_BR); \
    T *Wp = xalloc(sizeof(T) * fa_gemm_packed_size_##SUF(nn, K));                \
    T *buf = xalloc(sizeof(T) * fa_gemm_scratch_##SUF(FA_GM_MB));                \
    for (ptrdiff_t i = 0; i < (ptrdiff_t)M * K; i++) x[i] = (T)(urand() - 0.5);  \
    for (ptrdiff_t i = 0; i < (ptrdiff_t)nn * K; i++) w[i] = (T)(urand() - 0.5); \
    fa_gemm_pack_w_##SUF(w, K, nn, K, 0, (nn + fa_gemm_panel_width_##SUF() - 1) / fa_gemm_panel_width_##SUF(), Wp); \
    double bw = 1e30, bp = 1e30;                                                 \
    for (int r = 0; r < reps; r++) {                                             \
        double t0 = now_cpu();                                                       \
        wide_##SUF(x, K, M, w, K, nn, K, b, 0, y, nn, Xt, Yt);                   \
        double t1 = now_cpu();                                                       \
        packed_##SUF(x, K, M, Wp, nn, K, b, 0, y, nn, buf, FA_GM_MB, 1 << 30);   \
        double t2 = now_cpu();                                                       \
        if (t1 - t0 < bw) bw = t1 - t0;                                          \
        if (t2 - t1 < bp) bp = t2 - t1;                                          \
    }                                                                            \
    *gw = 2.0 * M * nn * K / bw * 1e-9; *gp = 2.0 * M * nn * K / bp * 1e-9;      \
    free(x); free(w); free(y); free(b); free(Xt); free(Yt); free(Wp); free(buf); \
}

DEF_TESTS(float, f32, FLT_MIN, FLT_MAX)
DEF_TESTS(double, f64, DBL_MIN, DBL_MAX)

int main(int argc, char **argv)
{
    int bench = argc > 1 && !strcmp(argv[1], "--bench");
    int bnn = argc > 2 ? atoi(argv[2]) : 1536, bK = argc > 3 ? atoi(argv[3]) : 384;
    printf("fa_gemm_test: ISA %s, panel width f32 %d f64 %d, MR %d, MB %d\n", fa_tiles_isa(),
           fa_gemm_panel_width_f32(), fa_gemm_panel_width_f64(), FA__GM_MR, FA_GM_MB);
    if (!bench) {
        tests_f32();
        tests_f64();
    } else {
        static const int Ms[] = {1, 4, 8, 12, 16, 32, 64, 112, 256, 1024};
        printf("one thread, best of 9, GFLOP per CPU-second (N = %d, K = %d): M  lanes-tile  packed\n", bnn, bK);
        for (int i = 0; i < (int)(sizeof(Ms) / sizeof(int)); i++) {
            double a, c;
            bench_f32(Ms[i], bnn, bK, 9, &a, &c);
            printf("  f32 %5d  %6.1f  %6.1f\n", Ms[i], a, c);
        }
        for (int i = 0; i < 3; i++) {
            double a, c;
            bench_f64(Ms[i * 4 + 1], bnn, bK, 5, &a, &c);
            printf("  f64 %5d  %6.1f  %6.1f\n", Ms[i * 4 + 1], a, c);
        }
    }
    printf("%ld elements checked, %ld mismatches\n", nchecked, nfail);
    return nfail != 0;
}
