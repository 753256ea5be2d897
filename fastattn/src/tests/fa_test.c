/* Standalone correctness test and benchmark of ../fa_tiles.h (the tiles, on
 * ../fa_simd.h's vector layer) and ../fa_util.h's tile I/O.
 *
 *   ./fa_test            correctness tests (every function, f32 and f64) and
 *                        the exp2 accuracy sweeps
 *   ./fa_test --bench    + single-thread benchmarks: flash loop (spec vs
 *                        fa_tiles.h), decode row functions
 *
 * Built for several instruction sets by build.sh.  Exit status 0 iff every
 * test passed; the last line is "<isa>: N passed, N failed" (<isa> is
 * fa_tiles_isa(): avx512, avx2, sse2, generic or scalar).
 */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <float.h>
#include <stdint.h>
#include <time.h>

#include "fa_util.h"    /* from -I (build.sh: the src/ directory) */
#include "fa_tiles.h"
#include "fa_gemv.h"
#include "fa_ref.h"
#include "fa_test_util.h"


static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n)
{
    qsort(v, n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- correctness, instantiated for float and double -------------------- */
#define T float
#define RT double
#define F(name) name##_f32
#define TEPS ((RT)FLT_EPSILON / 2)
#define TLO (-126.0f)
#define TMIN ((RT)FLT_MIN)
#include "fa_test_tpl.h"
#undef T
#undef RT
#undef F
#undef TEPS
#undef TLO
#undef TMIN
#define T double
#define RT long double
#define F(name) name##_f64
#define TEPS ((RT)DBL_EPSILON / 2)
#define TLO (-1022.0)
#define TMIN ((RT)DBL_MIN)
#include "fa_test_tpl.h"
#undef T
#undef RT
#undef F
#undef TEPS
#undef TLO
#undef TMIN

/* ---- exp2 accuracy sweeps (vector path via fa_exp2_sub_sum with mx = 0) -- */
static double ulp_err_f32(float got, double ref)
{
    if (ref == 0) return got == 0 ? 0 : 1e9;
    if (isinf(ref) || ref >= 0x1p128) return isinf(got) ? 0 : 1e9;
    int e;
    frexp(ref, &e);                        /* ref in [2^(e-1), 2^e) */
    double ulp = ldexp(1.0, e - 1 - 23);
    return fabs((double)got - ref) / ulp;
}
static double ulp_err_f64(double got, long double ref)
{
    if (ref == 0) return got == 0 ? 0 : 1e9;
    if (isinf((double)ref) || ref >= 0x1p1024L) return isinf(got) ? 0 : 1e9;
    int e;
    frexpl(ref, &e);
    long double ulp = ldexpl(1.0L, e - 1 - 52);
    return (double)(fabsl((long double)got - ref) / ulp);
}

static int sweep_exp2(void)
{
    int fails = 0;
    enum { N = 1 << 16 };
    float *x = xalloc(sizeof(float) * N), *y = xalloc(sizeof(float) * N);
    double maxu = 0, xmax = 0, sumu = 0;
    long cnt = 0, bad_flush = 0, denorm = 0;
    /* (a) uniform grid over [-127, 129) step 2^-14 (4.2M points) */
    /* (b) every 64th float bit pattern with |x| <= 128 (35M points, dense near 0) */
    for (int pass = 0; pass < 2; pass++) {
        long total = pass == 0 ? (long)256 << 14 : (long)(0x43000000u / 64) * 2;
        for (long base = 0; base < total; base += N) {
            int n = (int)(total - base < N ? total - base : N);
            for (int i = 0; i < n; i++) {
                long k = base + i;
                if (pass == 0) x[i] = (float)(-127.0 + (double)k * 0x1p-14);
                else {
                    uint32_t b = (uint32_t)((k >> 1) * 64) | ((uint32_t)(k & 1) << 31);
                    memcpy(&x[i], &b, 4);
                }
            }
            memcpy(y, x, sizeof(float) * n);
            fa_exp2_sub_sum_f32(y, n, 0.0f);
            for (int i = 0; i < n; i++) {
                float xi = x[i];
                if (xi < -126.0f) { bad_flush += y[i] != 0.0f; continue; }
                if (y[i] != 0 && fabsf(y[i]) < FLT_MIN) denorm++;
                double u = ulp_err_f32(y[i], exp2((double)xi));
                sumu += u; cnt++;
                if (u > maxu) { maxu = u; xmax = xi; }
            }
        }
    }
    printf("  exp2_f32 vector: %ld points in [-126,128]: max %.3f ulp (at x=%.9g), mean %.4f ulp; "
           "flush errors %ld, denormals %ld\n", cnt, maxu, xmax, sumu / cnt, bad_flush, denorm);
    if (maxu > 2.0 || bad_flush || denorm) { printf("  FAIL exp2_f32 accuracy\n"); fails++; }
    /* special inputs through the vector path */
    {
        float s[8] = {NAN, INFINITY, -INFINITY, -126.0f, -126.00001f, 128.0f, 127.99999f, -1e30f};
        fa_exp2_sub_sum_f32(s, 8, 0.0f);
        int ok = isnan(s[0]) && s[1] == INFINITY && s[2] == 0 && s[3] == 0x1p-126f && s[4] == 0 &&
                 s[5] == INFINITY && isfinite(s[6]) && s[6] > 3.4e38f && s[7] == 0;
        printf("  exp2_f32 specials (NaN, inf, -inf, -126, <-126, 128, 127.99999, -1e30): %s\n", ok ? "ok" : "FAIL");
        fails += !ok;
    }
    free(x); free(y);

    double *xd = xalloc(sizeof(double) * N), *yd = xalloc(sizeof(double) * N);
    maxu = 0; sumu = 0; cnt = 0; bad_flush = 0; denorm = 0;
    for (int pass = 0; pass < 2; pass++) {
        long total = pass == 0 ? (long)4 << 20 : (long)4 << 20;
        for (long base = 0; base < total; base += N) {
            int n = (int)(total - base < N ? total - base : N);
            for (int i = 0; i < n; i++) {
                long k = base + i;
                if (pass == 0) xd[i] = -1023.0 + 2048.0 * ((double)k / (double)total) + urand() * 1e-3;
                else xd[i] = (urand() * 2 - 1) * ldexp(1.0, -(int)(urand() * 60));
            }
            memcpy(yd, xd, sizeof(double) * n);
            fa_exp2_sub_sum_f64(yd, n, 0.0);
            for (int i = 0; i < n; i++) {
                double xi = xd[i];
                if (xi < -1022.0) { bad_flush += yd[i] != 0.0; continue; }
                if (yd[i] != 0 && fabs(yd[i]) < DBL_MIN) denorm++;
                double u = ulp_err_f64(yd[i], exp2l((long double)xi));
                sumu += u; cnt++;
                if (u > maxu) { maxu = u; xmax = xi; }
            }
        }
    }
    printf("  exp2_f64 vector: %ld points in [-1022,1024]: max %.3f ulp (at x=%.17g), mean %.4f ulp; "
           "flush errors %ld, denormals %ld\n", cnt, maxu, xmax, sumu / cnt, bad_flush, denorm);
    if (maxu > 2.0 || bad_flush || denorm) { printf("  FAIL exp2_f64 accuracy\n"); fails++; }
    {
        double s[8] = {NAN, INFINITY, -INFINITY, -1022.0, -1022.0000001, 1024.0, 1023.9999999, -1e300};
        fa_exp2_sub_sum_f64(s, 8, 0.0);
        int ok = isnan(s[0]) && s[1] == INFINITY && s[2] == 0 && s[3] == 0x1p-1022 && s[4] == 0 &&
                 s[5] == INFINITY && isfinite(s[6]) && s[6] > 1.7e308 && s[7] == 0;
        printf("  exp2_f64 specials: %s\n", ok ? "ok" : "FAIL");
        fails += !ok;
    }
    free(xd); free(yd);
    return fails;
}

/* ---- benchmarks ---------------------------------------------------------- */
typedef struct {
    double t_qk, t_sm, t_rs, t_pv;
} phase_t;

/* one-thread flash attention over L x S, head dim D; impl 0 = spec, 1 = fa_tiles */
static double flash_run(int impl, int L, int S, int D, const float *Q, const float *K, const float *V,
                        float *O, float *Qt, float *St, float *Ot, float *m, float *l, float *al,
                        phase_t *ph)
{
    const float c = (float)(1.0 / sqrt((double)D) * 1.4426950408889634);
    double t0 = now_wall(), ta = 0, tb;
    for (int q0 = 0; q0 < L; q0 += FA_BR) {
        int nq = L - q0 < FA_BR ? L - q0 : FA_BR;
        for (int d = 0; d < D; d++)
            for (int i = 0; i < FA_BR; i++) Qt[d * FA_BR + i] = i < nq ? Q[(size_t)(q0 + i) * D + d] * c : 0.0f;
        for (int i = 0; i < FA_BR; i++) { m[i] = -INFINITY; l[i] = 0; }
        memset(Ot, 0, sizeof(float) * D * FA_BR);
        for (int k0 = 0; k0 < S; k0 += FA_BC) {
            int nk = S - k0 < FA_BC ? S - k0 : FA_BC;
            const float *Kb = K + (size_t)k0 * D, *Vb = V + (size_t)k0 * D;
            if (ph) ta = now_wall();
            if (impl) fa_qk_f32(Kb, D, nk, D, Qt, St); else ref_qk_f32(Kb, D, nk, D, Qt, St);
            if (ph) { tb = now_wall(); ph->t_qk += tb - ta; ta = tb; }
            if (impl) fa_softmax_f32(St, nk, m, l, al); else ref_softmax_f32(St, nk, m, l, al);
            if (ph) { tb = now_wall(); ph->t_sm += tb - ta; ta = tb; }
            if (!impl) ref_rescale_f32(Ot, D, al);    /* fa_tiles: fused into pv */
            if (ph) { tb = now_wall(); ph->t_rs += tb - ta; ta = tb; }
            if (impl) fa_rescale_pv_f32(Vb, D, nk, D, St, Ot, al); else ref_pv_f32(Vb, D, nk, D, St, Ot);
            if (ph) { tb = now_wall(); ph->t_pv += tb - ta; }
        }
        for (int i = 0; i < nq; i++)
            for (int d = 0; d < D; d++) O[(size_t)(q0 + i) * D + d] = Ot[d * FA_BR + i] / l[i];
    }
    return now_wall() - t0;
}

static void bench_flash(int D)
{
    const int L = 1024, S = 1024, reps = 11;
    float *Q = xalloc(sizeof(float) * L * D), *K = xalloc(sizeof(float) * S * D), *V = xalloc(sizeof(float) * S * D);
    float *O = xalloc(sizeof(float) * L * D), *O2 = xalloc(sizeof(float) * L * D);
    float *Qt = xalloc(sizeof(float) * D * FA_BR), *St = xalloc(sizeof(float) * FA_BC * FA_BR);
    float *Ot = xalloc(sizeof(float) * D * FA_BR);
    float *m = xalloc(256), *l = xalloc(256), *al = xalloc(256);
    for (int i = 0; i < L * D; i++) Q[i] = (float)(urand() * 2 - 1);
    for (int i = 0; i < S * D; i++) { K[i] = (float)(urand() * 2 - 1); V[i] = (float)(urand() * 2 - 1); }
    double flops = 4.0 * L * S * D, ts[2][16];
    for (int r = 0; r < reps; r++)
        for (int impl = 1; impl >= 0; impl--)      /* interleaved, side by side */
            ts[impl][r] = flash_run(impl, L, S, D, Q, K, V, impl ? O : O2, Qt, St, Ot, m, l, al, NULL);
    double best_spec = ts[0][0], best_fa = ts[1][0];
    for (int r = 1; r < reps; r++) { if (ts[0][r] < best_spec) best_spec = ts[0][r]; if (ts[1][r] < best_fa) best_fa = ts[1][r]; }
    double t_spec = median(ts[0], reps), t_fa = median(ts[1], reps);
    double maxerr = 0;
    for (int i = 0; i < L * D; i++) {
        double e = fabs((double)O[i] - O2[i]);
        if (!(e <= maxerr)) maxerr = e;   /* (fmax here crashed gcc-12 aarch64) */
    }
    /* phases: per phase the median over 5 timed runs */
    phase_t ph[2];
    for (int impl = 0; impl < 2; impl++) {
        double pq[5], ps[5], pr[5], pp[5];
        for (int r = 0; r < 5; r++) {
            phase_t p1 = {0, 0, 0, 0};
            flash_run(impl, L, S, D, Q, K, V, O2, Qt, St, Ot, m, l, al, &p1);
            pq[r] = p1.t_qk; ps[r] = p1.t_sm; pr[r] = p1.t_rs; pp[r] = p1.t_pv;
        }
        ph[impl].t_qk = median(pq, 5); ph[impl].t_sm = median(ps, 5);
        ph[impl].t_rs = median(pr, 5); ph[impl].t_pv = median(pp, 5);
    }
    printf("  flash L=S=%d D=%-3d  spec: %7.2f GFLOP/s   fa_tiles: %7.2f GFLOP/s   (x%.1f; median of %d; best %.2f vs %.2f; "
           "max|O-O_spec| %.1e)\n", L, D, flops / t_spec * 1e-9, flops / t_fa * 1e-9, t_spec / t_fa, reps,
           flops / best_spec * 1e-9, flops / best_fa * 1e-9, maxerr);
    for (int impl = 1; impl >= 0; impl--) {
        double tot = ph[impl].t_qk + ph[impl].t_sm + ph[impl].t_rs + ph[impl].t_pv;
        printf("      %-8s phases: qk %4.1f%%  softmax+exp %4.1f%%  rescale %4.1f%%  pv %4.1f%%   "
               "(qk %.1f, pv %.1f GFLOP/s)\n", impl ? "fa_tiles" : "spec",
               100 * ph[impl].t_qk / tot, 100 * ph[impl].t_sm / tot, 100 * ph[impl].t_rs / tot, 100 * ph[impl].t_pv / tot,
               flops / 2 / ph[impl].t_qk * 1e-9, flops / 2 / ph[impl].t_pv * 1e-9);
    }
    free(Q); free(K); free(V); free(O); free(O2); free(Qt); free(St); free(Ot); free(m); free(l); free(al);
}

/* decode: R query rows (one GQA group) against S keys of one KV head.
 * nheads > 1 cycles through distinct KV heads so K and V come from DRAM. */
static void bench_decode(int R, int nheads)
{
    const int S = 16384, D = 128, reps = 9, chunk = 1024;
    size_t hsz = (size_t)S * D;
    float *K = xalloc(sizeof(float) * hsz * nheads), *V = xalloc(sizeof(float) * hsz * nheads);
    float *Q = xalloc(sizeof(float) * R * D), *O = xalloc(sizeof(float) * R * D);
    float *s = xalloc(sizeof(float) * R * S);
    for (size_t i = 0; i < hsz * nheads; i++) { K[i] = (float)(urand() - 0.5); V[i] = (float)(urand() - 0.5); }
    for (int i = 0; i < R * D; i++) Q[i] = (float)(urand() - 0.5);
    double td[2][16], ta[2][16];
    for (int rep = 0; rep < reps; rep++)
        for (int impl = 1; impl >= 0; impl--) {
            int h = (rep * 2 + impl) % nheads;
            const float *Kh = K + hsz * h, *Vh = V + hsz * h;
            double t0 = now_wall();
            for (int j = 0; j < S; j += chunk) {
                if (impl) fa_dot_rows_f32(Q, R, Kh + (size_t)j * D, D, chunk, D, s + j, S);
                else ref_dot_rows_f32(Q, R, Kh + (size_t)j * D, D, chunk, D, s + j, S);
            }
            double t1 = now_wall();
            for (int r = 0; r < R; r++) {
                float mx = impl ? fa_max_f32(s + (size_t)r * S, S) : ref_max_f32(s + (size_t)r * S, S);
                if (impl) fa_exp2_sub_sum_f32(s + (size_t)r * S, S, mx); else ref_exp2_sub_sum_f32(s + (size_t)r * S, S, mx);
            }
            h = (h + 1) % nheads;   /* V of another head when cycling: cold */
            Vh = V + hsz * h;
            double t2 = now_wall();
            memset(O, 0, sizeof(float) * R * D);
            for (int j = 0; j < S; j += chunk) {
                if (impl) fa_axpy_rows_f32(s + j, R, S, Vh + (size_t)j * D, D, chunk, D, O);
                else ref_axpy_rows_f32(s + j, R, S, Vh + (size_t)j * D, D, chunk, D, O);
            }
            double t3 = now_wall();
            td[impl][rep] = t1 - t0;
            ta[impl][rep] = t3 - t2;
        }
    double bytes = (double)hsz * sizeof(float);
    printf("  decode S=%d D=%d R=%d %-5s dot_rows: spec %6.1f  fa %6.1f GB/s (K)   axpy_rows: spec %6.1f  fa %6.1f GB/s (V)\n",
           S, D, R, nheads > 1 ? "cold" : "hot", bytes / median(td[0], reps) * 1e-9, bytes / median(td[1], reps) * 1e-9,
           bytes / median(ta[0], reps) * 1e-9, bytes / median(ta[1], reps) * 1e-9);
    free(K); free(V); free(Q); free(O); free(s);
}

int main(int argc, char **argv)
{
    int bench = argc > 1 && !strcmp(argv[1], "--bench");
    int bench_only = argc > 1 && !strcmp(argv[1], "--bench-only");
    printf("fa_tiles.h ISA: %s (f32 lanes/vector %d, f64 %d)\n", fa_tiles_isa(), FA__VWS, FA__VWD);
    int failed = 0, passed = 0;
    if (!bench_only) {
        int n;
        int run = 0;
        n = run_tests_f32("f32", &run); failed += n;
        n = run_tests_f64("f64", &run); failed += n;
        n = sweep_exp2(); failed += n; run += 4;   /* 4 checks: f32/f64 accuracy, f32/f64 specials */
        passed = run - failed;
    }
    if (bench || bench_only) {
        bench_flash(64);
        bench_flash(128);
        bench_decode(1, 1);
        bench_decode(4, 1);
        bench_decode(1, 8);
        bench_decode(4, 8);
    }
    if (!bench_only) printf("%s: %d passed, %d failed\n", fa_tiles_isa(), passed, failed);
    return failed != 0;
}
