/* Standalone test of ../fa_bf16_attn.h, the bf16 operands of the fused
 * attention kernel, for whichever path this build compiles:
 *
 *   attnwiden  every build: the widening loads/packs/stores and the rows
 *              tiles reading bf16 K/V in place, checked bit for bit against
 *              the fp32 tiles of fa_tiles.h on the widened values, and the
 *              rounding against an independent nearest-even reference
 *   attnamx    the amx build: additionally the AMX tile products S^T = K.Qp
 *              (the P.V product: tests/test_bf16_attention.py) against a float64 reference within the
 *              fp32-accumulation bound (products of bf16 values are exact)
 *   attndp     the avx512bf16 build: the same product on vdpbf16ps, K read in
 *              place (even D) or from the zero-padded copy (odd D), every
 *              number of 16-query vectors (1-4) and the lanes past them
 *              left untouched
 *
 *   ./fa_bf16_attn_test   prints "fa_bf16_attn.h ISA: <name>" first and
 *                         "<name>: N passed, N failed" last
 */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdint.h>

#include "fa_bf16_attn.h"
#define FA_TEST_SEED 0x2545F4914F6CDD1Dull
#include "fa_test_util.h"
#if FA_BF16_ATTN_AMX
#  include "fa_bf16_cpu.h"
#  define NAME "attnamx"
#elif FA_BF16_ATTN_DP
#  define NAME "attndp"
#else
#  define NAME "attnwiden"
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

static float frand(void) { return (float)((double)(rnext() >> 11) / 9007199254740992.0 * 4.0 - 2.0); }
static uint16_t brand(void) { return fa_bf16_round1(frand()); }


static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* nearest-even by comparing the two bf16 neighbours in double */
static uint16_t ref_round(float x)
{
    uint32_t u = bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7FC0u);
    if ((u & 0x7FFFFFFFu) == 0x7F800000u) return (uint16_t)(u >> 16);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);   /* toward larger magnitude */
    double dl = fabs((double)fa_bf16_widen1(lo) - (double)x);
    double dh;
    if (((hi & 0x7F80u) == 0x7F80u)) {                  /* rounding up overflows to inf */
        /* the midpoint between the largest finite and 2^128 decides */
        double mid = ldexp(2.0 - ldexp(1.0, -8), 127);
        return (uint16_t)(fabs((double)x) >= mid ? ((lo & 0x8000u) | 0x7F80u) : lo);
    }
    dh = fabs((double)fa_bf16_widen1(hi) - (double)x);
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1u) ? hi : lo;
}

static void test_round(void)
{
    int bad = 0;
    const uint32_t special[] = {0, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u,
                                0x7F800001u, 0x7F7FFFFFu, 0x7F7F8000u, 0x7F7F7FFFu, 0x00000001u,
                                0x807FFFFFu, 0x3F808000u, 0x3F818000u, 0x3F80FFFFu, 0xBF817FFFu};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        float f;
        memcpy(&f, &special[i], 4);
        bad += fa_bf16_round1(f) != ref_round(f);
    }
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)rnext();
        float f;
        memcpy(&f, &u, 4);
        bad += fa_bf16_round1(f) != ref_round(f);
    }
    float row[37];
    uint16_t out[37];
    for (int i = 0; i < 37; i++) row[i] = frand() * 1000;
    fa_bf16_round_row(row, 37, out);
    for (int i = 0; i < 37; i++) bad += out[i] != ref_round(row[i]);
    check(bad == 0, "rounding = nearest even (NaN quiet, inf kept)");
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++)
        bad += bits(fa_bf16_widen1((uint16_t)h)) != h << 16;
    check(bad == 0, "widening = the bits shifted");
}

/* the row tiles on bf16 K/V == the fp32 row tiles on widened K/V */
static void test_rows(void)
{
    const int Ds[] = {16, 64, 80, 128, 7, 33};
    const int Rs[] = {1, 2, 3, 4, 7, 16};
    char msg[160];
    for (size_t a = 0; a < sizeof Ds / sizeof Ds[0]; a++)
        for (size_t b = 0; b < sizeof Rs / sizeof Rs[0]; b++) {
            int D = Ds[a], R = Rs[b], nk = 203, ks = D + 5, lds = 256;
            uint16_t *K = xalloc((size_t)nk * ks * 2);
            float *Kw = xalloc((size_t)nk * ks * 4), *Q = xalloc((size_t)R * D * 4);
            float *s1 = xalloc((size_t)R * lds * 4), *s2 = xalloc((size_t)R * lds * 4);
            float *P = xalloc((size_t)R * lds * 4);
            float *O1 = xalloc((size_t)R * D * 4), *O2 = xalloc((size_t)R * D * 4);
            for (int i = 0; i < nk * ks; i++) { K[i] = brand(); Kw[i] = fa_bf16_widen1(K[i]); }
            for (int i = 0; i < R * D; i++) { Q[i] = frand(); O1[i] = O2[i] = frand(); }
            for (int i = 0; i < R * lds; i++) P[i] = frand();
            fa_dot_rows_bf16k(Q, R, K, ks, nk, D, s1, lds);
            fa_dot_rows_f32(Q, R, Kw, ks, nk, D, s2, lds);
            fa_axpy_rows_bf16v(P, R, lds, K, ks, nk, D, O1);
            fa_axpy_rows_f32(P, R, lds, Kw, ks, nk, D, O2);
            int same_s = 1, same_o = 1, close = 1;
            for (int r = 0; r < R; r++) {
                for (int j = 0; j < nk; j++) {
                    float x = s1[r * lds + j], y = s2[r * lds + j];
                    same_s &= bits(x) == bits(y);
                    close &= fabsf(x - y) <= 1e-5f * (1 + fabsf(y)) * D;
                }
                for (int d = 0; d < D; d++) {
                    same_o &= bits(O1[r * D + d]) == bits(O2[r * D + d]);
                    close &= fabsf(O1[r * D + d] - O2[r * D + d]) <= 1e-5f * nk;
                }
            }
            snprintf(msg, sizeof msg, "rows tiles on bf16 K/V (D=%d, R=%d): %s", D, R,
                     D % 16 == 0 ? "bit-identical to the fp32 tiles" : "within fp32 rounding");
            check(D % 16 == 0 ? (same_s && same_o) : close, msg);
            free(K); free(Kw); free(Q); free(s1); free(s2); free(P); free(O1); free(O2);
        }
}

/* the lanes packs: fa_pack_qt_bf16 == fa_pack_qt_f32 on the widened rows;
 * fa_store_ot_bf16 == fa_store_ot_f32 rounded */
static void test_lanes_io(void)
{
    const int D = 80, nr = 37, qs = 100;
    uint16_t *q = xalloc((size_t)FA_BR * qs * 2);
    float *qw = xalloc((size_t)FA_BR * qs * 4), *tmp = xalloc((size_t)FA_BR * D * 4);
    float *Qt1 = xalloc((size_t)D * FA_BR * 4), *Qt2 = xalloc((size_t)D * FA_BR * 4);
    for (int i = 0; i < FA_BR * qs; i++) { q[i] = brand(); qw[i] = fa_bf16_widen1(q[i]); }
    fa_pack_qt_bf16(q, qs, nr, D, 0.3f, Qt1, tmp);
    fa_pack_qt_f32(qw, qs, nr, D, 0.3f, Qt2);
    check(memcmp(Qt1, Qt2, (size_t)D * FA_BR * 4) == 0, "pack_qt_bf16 == pack_qt_f32 on widened q");
    float l[FA_BR], *o32 = xalloc((size_t)nr * qs * 4);
    uint16_t *o16 = xalloc((size_t)nr * qs * 2);
    for (int i = 0; i < FA_BR; i++) l[i] = i == 5 ? 0.0f : 1 + frand() * frand();
    fa_store_ot_f32(Qt2, l, nr, D, o32, qs);
    fa_store_ot_bf16(Qt2, l, nr, D, o16, qs, tmp);
    int bad = 0;
    for (int i = 0; i < nr; i++)
        for (int d = 0; d < D; d++) bad += o16[i * qs + d] != ref_round(o32[i * qs + d]);
    check(bad == 0, "store_ot_bf16 == store_ot_f32 rounded once");
    free(q); free(qw); free(tmp); free(Qt1); free(Qt2); free(o32); free(o16);
}

#if FA_BF16_ATTN_TILES
/* S^T = K Q^T on tiles against float64 */
static void test_tiles(void)
{
    const int Ds[] = {32, 64, 80, 128, 7, 40};
    const int nks[] = {64, 37, 1};
    const int nrs[] = {50, 64, 16, 33, 1};
    char msg[200];
    for (size_t a = 0; a < sizeof Ds / sizeof Ds[0]; a++)
        for (size_t b = 0; b < sizeof nks / sizeof nks[0]; b++)
        for (size_t c = 0; c < sizeof nrs / sizeof nrs[0]; c++) {
            int D = Ds[a], nk = nks[b], nr = nrs[c], ks = D + 3;
            int Dp = FA_BT_DP(D), nq = FA_BT_NQ(nr);
            uint16_t *q = xalloc((size_t)nr * ks * 2), *K = xalloc((size_t)nk * ks * 2);
            uint32_t *Qp = xalloc((size_t)Dp / 2 * FA_BR * 4);
            uint16_t *Kp = xalloc((size_t)FA_BC * Dp * 2);
            float *St = xalloc((size_t)FA_BC * FA_BR * 4);
            for (int i = 0; i < nr * ks; i++) q[i] = brand();
            for (int i = 0; i < nk * ks; i++) K[i] = brand();
            fa_bt_begin();
            fa_bt_pack_q(q, ks, nr, D, Qp);
            fa_bt_pack_k(K, ks, nk, D, Kp);
            for (int i = 0; i < FA_BC * FA_BR; i++) St[i] = -7.0f;     /* a sentinel */
            if (fa_bt_k_in_place(D, nk, ks))    /* the rows themselves (stride ks) */
                fa_bt_qk(K, ks, nk, D, Qp, nr, St);
            else
                fa_bt_qk(Kp, Dp, nk, D, Qp, nr, St);
            int bad = 0, touched = 0;
            for (int j = 0; j < FA_BC; j++)
                for (int i = nq; i < FA_BR; i++) touched += St[j * FA_BR + i] != -7.0f;
            for (int j = 0; j < nk; j++)
                for (int i = 0; i < nr; i++) {
                    double s = 0, sa = 0;
                    for (int d = 0; d < D; d++) {
                        double p = (double)fa_bf16_widen1(K[j * ks + d]) * fa_bf16_widen1(q[i * ks + d]);
                        s += p;
                        sa += fabs(p);
                    }
                    bad += fabs(St[j * FA_BR + i] - s) > 2.0 * D * ldexp(1.0, -24) * sa + 1e-30;
                }
            snprintf(msg, sizeof msg, NAME " S^T = K.Q^T (D=%d, nk=%d, nr=%d) within the fp32 "
                     "bound (%d bad), lanes past %d untouched (%d written)", D, nk, nr, bad, nq,
                     touched);
            check(bad == 0 && touched == 0, msg);
            fa_bt_end();
            /* the P.V product (fa_bt_softmax_p + fa_bt_pvt) is checked end to end against
             * the float64 reference by tests/test_bf16_attention.py on this build */
            free(q); free(K); free(Qp); free(Kp); free(St);
        }
}
#endif

int main(void)
{
#if FA_BF16_ATTN_AMX
    const char *why;
    if (!fa_amx_request(&why)) {
        printf("fa_bf16_attn.h ISA: " NAME " (AMX unusable: %s)\n" NAME ": 0 passed, 1 failed\n", why);
        return 1;
    }
#endif
    printf("fa_bf16_attn.h ISA: " NAME " (vector layer %s)\n", fa_tiles_isa());
    test_round();
    test_rows();
    test_lanes_io();
#if FA_BF16_ATTN_TILES
    test_tiles();
#endif
    printf(NAME ": %d passed, %d failed\n", npass, nfail);
    return nfail != 0;
}
