/* Standalone test of ../fa_bf16.h: conversions, packing and the bf16 GEMM
 * task of whichever path this build compiles (amx, dp, widen, or the
 * amx / dp paths on emulated instructions: -DFA_BF16_EMUL_AMX / _DP).
 *
 *   ./fa_bf16_test     correctness tests; prints "fa_bf16.h ISA: <name>",
 *                      a digest of every GEMM result (build.sh compares an
 *                      emulated path's digest with the real instructions'
 *                      where the CPU has them) and, last,
 *                      "<name>: N passed, N failed"
 *
 * <name>: bf16amx, bf16dp, bf16widen, bf16emulamx, bf16emuldp.
 * The GEMM is driven like the Cython layer (_k_bf16_gemm.pxi): tasks of at
 * most 32 rows x nb features, each a call of fa_bf16_gemm_task.
 */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdint.h>

#include "fa_bf16.h"
#include "fa_test_util.h"

#if defined(FA_BF16_EMUL_AMX)
#  define NAME "bf16emulamx"
#elif defined(FA_BF16_EMUL_DP)
#  define NAME "bf16emuldp"
#elif defined(FA_BF16_AMX)
#  define NAME "bf16amx"
#elif defined(FA_BF16_DP)
#  define NAME "bf16dp"
#else
#  define NAME "bf16widen"
#endif

static int npass, nfail;
static void check(int ok, const char *what)
{
    if (ok) {
        npass++;
    } else {
        nfail++;
        printf("FAIL: %s\n", what);
    }
}

static float frand(void) { return (float)((double)(rnext() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }


static uint64_t digest = 1469598103934665603ull;
static void feed(const void *p, size_t n)
{
    const unsigned char *c = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) {
        digest ^= c[i];
        digest *= 1099511628211ull;
    }
}

/* the reference rounding, written independently of fa_bf16.h */
static uint16_t ref_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f))
        return (u & 0x80000000u) ? 0xffc0 : 0x7fc0;
    uint32_t lower = u & 0xffffu, upper = u >> 16;
    if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u)))
        upper++;
    return (uint16_t)upper;
}

static void test_convert(void)
{
    enum { N = 1 << 20 };
    uint32_t *bits = xalloc(N * 4);
    uint16_t *h = xalloc(N * 2);
    float *back = xalloc(N * 4);
    static const uint32_t special[] = {0, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                       0x7f800001u, 0xff812345u, 0x7f7fffffu, 0x00000001u,
                                       0x00008000u, 0x00018000u, 0x3f808000u, 0x3f818000u,
                                       0x7f7f8000u, 0x807fffffu};
    for (int i = 0; i < N; i++)
        bits[i] = (uint32_t)rnext();
    memcpy(bits, special, sizeof special);
    fa_bf16_from_f32_n((const float *)(const void *)bits, h, N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        float f;
        memcpy(&f, &bits[i], 4);
        if (h[i] != ref_round(f) || fa_f32_to_bf16(f) != h[i])
            bad++;
    }
    check(bad == 0, "fp32 -> bf16 rounding (1M bit patterns + specials)");
    fa_bf16_to_f32_n(h, back, N);
    bad = 0;
    for (int i = 0; i < N; i++) {
        uint32_t u;
        memcpy(&u, &back[i], 4);
        if (u != (uint32_t)h[i] << 16)
            bad++;
    }
    check(bad == 0, "bf16 -> fp32 exact");
    free(bits); free(h); free(back);
}

/* y (M x N, fp32) through tasks of 32 rows x nb features */
static void run_gemm(const uint16_t *x, ptrdiff_t xs, int M, const uint16_t *P, int K, int N,
                     const float *bias, int act, void *y, ptrdiff_t ys, int out_bf16, int nb,
                     void *scratch)
{
    for (int n0 = 0; n0 < N; n0 += nb)
        for (int m0 = 0; m0 < M; m0 += FA_BF16_MB) {
            int nr = M - m0 < FA_BF16_MB ? M - m0 : FA_BF16_MB;
            int nn = N - n0 < nb ? N - n0 : nb;
            size_t esz = out_bf16 ? 2 : 4;
            fa_bf16_gemm_task(x + (ptrdiff_t)m0 * xs, xs, nr, P, K, n0, nn,
                              bias ? bias + n0 : NULL, act,
                              (char *)y + ((ptrdiff_t)m0 * ys + n0) * esz, ys, out_bf16, scratch);
        }
}

/* the same through rows packed once per row block (fa_bf16_prepack) and
 * fa_bf16_gemm_task_pre, as the Cython driver runs a few-row call */
static void run_gemm_pre(const uint16_t *x, ptrdiff_t xs, int M, const uint16_t *P, int K, int N,
                         const float *bias, int act, void *y, ptrdiff_t ys, int out_bf16, int nb,
                         void *scratch)
{
    size_t blk = fa_bf16_prepack_bytes(K);
    char *pre = xalloc(blk * (size_t)((M + FA_BF16_MB - 1) / FA_BF16_MB) + 64);
    for (int m0 = 0; m0 < M; m0 += FA_BF16_MB)
        fa_bf16_prepack(x + (ptrdiff_t)m0 * xs, xs, M - m0 < FA_BF16_MB ? M - m0 : FA_BF16_MB,
                        K, pre + (size_t)(m0 / FA_BF16_MB) * blk);
    for (int n0 = 0; n0 < N; n0 += nb)
        for (int m0 = 0; m0 < M; m0 += FA_BF16_MB) {
            int nr = M - m0 < FA_BF16_MB ? M - m0 : FA_BF16_MB;
            int nn = N - n0 < nb ? N - n0 : nb;
            size_t esz = out_bf16 ? 2 : 4;
            fa_bf16_gemm_task_pre(pre + (size_t)(m0 / FA_BF16_MB) * blk, nr, P, K, n0, nn,
                                  bias ? bias + n0 : NULL, act,
                                  (char *)y + ((ptrdiff_t)m0 * ys + n0) * esz, ys, out_bf16,
                                  scratch);
        }
    free(pre);
}

static void test_gemm(void)
{
    static const int Ms[] = {1, 2, 15, 16, 17, 32, 33, 70};
    static const int Ns[] = {1, 15, 16, 17, 33, 64, 100};
    static const int Ks[] = {0, 1, 2, 15, 17, 31, 32, 33, 64, 100, 300};
    int nbad_acc = 0, nbad_inv = 0, nbad_pack = 0, nbad_bf = 0, nbad_pre = 0, ncase = 0;
    for (unsigned a = 0; a < sizeof Ms / sizeof *Ms; a++)
    for (unsigned b = 0; b < sizeof Ns / sizeof *Ns; b++)
    for (unsigned c = 0; c < sizeof Ks / sizeof *Ks; c++) {
        int M = Ms[a], N = Ns[b], K = Ks[c];
        ptrdiff_t xs = K + 3, Kp = fa_bf16_kp(K), Np = fa_bf16_np(N);
        uint16_t *x = xalloc((size_t)(M + 1) * xs * 2 + 64);
        uint16_t *w = xalloc((size_t)N * (K + 1) * 2 + 64);
        uint16_t *P = xalloc((size_t)Np * Kp * 2 + 64);
        uint16_t *wu = xalloc((size_t)N * (K + 1) * 2 + 64);
        float *bias = xalloc((size_t)N * 4);
        float *y = xalloc((size_t)M * N * 4), *y1 = xalloc((size_t)N * 4);
        uint16_t *yb = xalloc((size_t)M * N * 2);
        void *scratch = xalloc(FA_BF16_SCRATCH(K));
        ncase++;
        /* garbage (NaN) beyond each row's K: must never be read into a sum */
        for (ptrdiff_t i = 0; i < (M + 1) * xs; i++)
            x[i] = (i % xs) < K ? fa_f32_to_bf16(frand()) : 0x7fc1;
        for (ptrdiff_t i = 0; i < (ptrdiff_t)N * (K + 1); i++)
            w[i] = (i % (K + 1)) < K ? fa_f32_to_bf16(frand()) : 0x7fc1;
        for (int n = 0; n < N; n++)
            bias[n] = frand();
        fa_bf16_pack_groups(w, K + 1, N, K, P, 0, Np / 16);
        fa_bf16_unpack(P, N, K, wu);
        for (int n = 0; n < N; n++)
            if (memcmp(wu + (ptrdiff_t)n * K, w + (ptrdiff_t)n * (K + 1), (size_t)K * 2))
                nbad_pack++;
        int act = (M + N + K) % 6;
        run_gemm(x, xs, M, P, K, N, bias, act, y, N, 0, 64, scratch);
        run_gemm(x, xs, M, P, K, N, bias, act, yb, N, 1, 32, scratch);
        feed(y, (size_t)M * N * 4);
        feed(yb, (size_t)M * N * 2);
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double s = bias[n], sa = 0;
                for (int k = 0; k < K; k++) {
                    double t = (double)fa_bf16_to_f32(x[m * xs + k])
                               * fa_bf16_to_f32(w[n * (K + 1) + k]);
                    s += t;
                    sa += fabs(t);
                }
                double bound = K * ldexp(1.0, -23) * sa + ldexp(1.0, -24) * fabs(s);
                double ref = s;
                if (act == FA_ACT_RELU) ref = s > 0 ? s : 0;
                else if (act == FA_ACT_GELU) ref = 0.5 * s * (1 + erf(s / sqrt(2.0)));
                else if (act == FA_ACT_GELU_TANH)
                    ref = 0.5 * s * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (s + 0.044715 * s * s * s)));
                else if (act == FA_ACT_SILU) ref = s / (1 + exp(-s));
                else if (act == FA_ACT_QUICK_GELU) ref = s / (1 + exp(-1.702 * s));
                if (act) bound = 1.13 * bound + 2e-7 + ldexp(1.0, -21) * fabs(s);
                float got = y[m * N + n];
                if (!(fabs(got - ref) <= bound))
                    nbad_acc++;
                if (yb[m * N + n] != fa_f32_to_bf16(got))
                    nbad_bf++;
            }
        /* batch invariance: every row alone (any position) gives the same bits */
        for (int m = 0; m < M; m++) {
            run_gemm(x + (ptrdiff_t)m * xs, xs, 1, P, K, N, bias, act, y1, N, 0, 32, scratch);
            if (memcmp(y1, y + (ptrdiff_t)m * N, (size_t)N * 4))
                nbad_inv++;
        }
        /* rows packed once per call: the same bits, fp32 and bf16 stores */
        {
            float *yp = xalloc((size_t)M * N * 4 + 4);
            uint16_t *ybp = xalloc((size_t)M * N * 2 + 2);
            run_gemm_pre(x, xs, M, P, K, N, bias, act, yp, N, 0, 32, scratch);
            run_gemm_pre(x, xs, M, P, K, N, bias, act, ybp, N, 1, 64, scratch);
            if (memcmp(yp, y, (size_t)M * N * 4) || memcmp(ybp, yb, (size_t)M * N * 2))
                nbad_pre++;
            free(yp); free(ybp);
        }
        free(x); free(w); free(P); free(wu); free(bias); free(y); free(y1); free(yb); free(scratch);
    }
    char msg[160];
    snprintf(msg, sizeof msg, "pack/unpack roundtrip (%d cases, %d bad rows)", ncase, nbad_pack);
    check(nbad_pack == 0, msg);
    snprintf(msg, sizeof msg, "GEMM within the fp32-accumulation bound (%d bad)", nbad_acc);
    check(nbad_acc == 0, msg);
    snprintf(msg, sizeof msg, "bf16 store = fp32 result rounded once (%d bad)", nbad_bf);
    check(nbad_bf == 0, msg);
    snprintf(msg, sizeof msg, "row alone == row in a batch, bit for bit (%d bad rows)", nbad_inv);
    check(nbad_inv == 0, msg);
    snprintf(msg, sizeof msg, "rows packed once per call == per task, bit for bit (%d bad cases)",
             nbad_pre);
    check(nbad_pre == 0, msg);
}

int main(void)
{
#if defined(FA_BF16_AMX) && !defined(FA_BF16_EMUL)
    const char *why;
    if (!fa_amx_request(&why)) {
        printf("fa_bf16.h ISA: " NAME " (AMX unusable: %s)\n" NAME ": 0 passed, 1 failed\n", why);
        return 1;
    }
#endif
    printf("fa_bf16.h ISA: " NAME " (path %s)\n", FA_BF16_PATH);
    test_convert();
    test_gemm();
    printf("digest: %016llx\n", (unsigned long long)digest);
    printf(NAME ": %d passed, %d failed\n", npass, nfail);
    return nfail != 0;
}
