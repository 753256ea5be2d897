/* Correctness tests of fa_tiles.h and fa_util.h's tile I/O, instantiated for float and double by
 * fa_test.c (T, RT = wider reference type, F(name) = name##_f32/_f64,
 * TEPS = unit roundoff of T, TLO = exp2 flush threshold, TMIN = smallest
 * normal). */

static T F(rnd)(void) { return (T)(urand() * 2.0 - 1.0); }

/* exp2 reference with the header's flushing rule, evaluated in RT */
static RT F(exp2_ref)(T a)
{
    if (a != a) return (RT)NAN;
    if (a < TLO) return 0;
    return exp2l((long double)a);
}

static int F(close)(T got, RT ref, RT tol)
{
    if (ref != ref) return got != got;
    if (isinf((double)ref)) return (RT)got == ref;
    if (got != got) return 0;
    RT e = (RT)got - ref;
    if (e < 0) e = -e;
    return e <= tol;
}

static int F(is_denormal)(T x) { return x != 0 && fabsl((long double)x) < TMIN; }

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            if (nfail_local < 5) { printf("  FAIL " __VA_ARGS__); printf("\n"); } \
            nfail_local++;                                                 \
        }                                                                  \
    } while (0)

static const int F(dims)[] = {1, 3, 7, 16, 17, 32, 63, 64, 65, 80, 96, 128, 129, 256};
#define NDIMS ((int)(sizeof(F(dims)) / sizeof(int)))
static const int F(nks)[] = {0, 1, 2, 3, 5, 6, 7, 8, 9, 13, 17, 31, 33, 48, 63, 64};
#define NNKS ((int)(sizeof(F(nks)) / sizeof(int)))

/* inject specials into a buffer with probability pr */
static void F(specials)(T *x, size_t n, double pr, int allow_nan)
{
    for (size_t i = 0; i < n; i++) {
        double u = urand();
        if (u < pr) {
            int k = (int)(urand() * (allow_nan ? 4 : 3));
            x[i] = k == 0 ? (T)INFINITY : k == 1 ? -(T)INFINITY : k == 2 ? (T)1e30 : (T)NAN;
        }
    }
}

static int F(test_qk)(void)
{
    int nfail_local = 0;
    const int maxD = 256, ks_extra = 5;
    T *K = xalloc(sizeof(T) * FA_BC * (maxD + ks_extra));
    T *Qt = xalloc(sizeof(T) * maxD * FA_BR);
    T *St = xalloc(sizeof(T) * (FA_BC + 1) * FA_BR);
    T *Sr = xalloc(sizeof(T) * (FA_BC + 1) * FA_BR);
    for (int di = 0; di < NDIMS; di++)
        for (int ni = 0; ni < NNKS; ni++)
            for (int sp = 0; sp < 2; sp++) {
                int D = F(dims)[di], nk = F(nks)[ni];
                ptrdiff_t ks = D + (ni % 3 == 0 ? 0 : ks_extra);
                for (ptrdiff_t i = 0; i < FA_BC * ks; i++) K[i] = F(rnd)();
                for (ptrdiff_t i = 0; i < (ptrdiff_t)D * FA_BR; i++) Qt[i] = F(rnd)();
                if (sp) { F(specials)(K, (size_t)FA_BC * ks, 0.002, 1); F(specials)(Qt, (size_t)D * FA_BR, 0.001, 1); }
                for (int i = 0; i < (FA_BC + 1) * FA_BR; i++) St[i] = (T)777;
                F(fa_qk)(K, ks, nk, D, Qt, St);
                for (int j = 0; j < nk; j++)
                    for (int i = 0; i < FA_BR; i++) {
                        RT acc = 0, aa = 0;
                        for (int d = 0; d < D; d++) {
                            RT t = (RT)K[j * ks + d] * (RT)Qt[d * FA_BR + i];
                            acc += t; aa += fabsl((long double)t);
                        }
                        T got = St[j * FA_BR + i];
                        if (sp) {
                            /* classification against the spec order, in T */
                            T s = 0;
                            for (int d = 0; d < D; d++) s += K[j * ks + d] * Qt[d * FA_BR + i];
                            int ok = (s != s) ? (got != got) : isinf((double)s) ? (got == s) : (got == got && !isinf((double)got));
                            CHECK(ok, "qk special D=%d nk=%d j=%d i=%d got %g spec %g", D, nk, j, i, (double)got, (double)s);
                        } else {
                            CHECK(F(close)(got, acc, (D + 4) * TEPS * aa + TMIN),
                                  "qk D=%d nk=%d ks=%d j=%d i=%d got %.9g ref %.9Lg", D, nk, (int)ks, j, i,
                                  (double)got, (long double)acc);
                        }
                    }
                for (int i = nk * FA_BR; i < (FA_BC + 1) * FA_BR; i++)
                    CHECK(St[i] == (T)777, "qk wrote past nk (D=%d nk=%d)", D, nk);
            }
    (void)Sr;
    free(K); free(Qt); free(St); free(Sr);
    return nfail_local;
}

/* fa_gemm_nt: accumulate = 0 is fa_qk; accumulate = 1 adds to what is there */
static int F(test_gemm_nt)(void)
{
    int nfail_local = 0;
    const int maxD = 256, ws_extra = 3;
    T *W = xalloc(sizeof(T) * FA_BC * (maxD + ws_extra));
    T *Xt = xalloc(sizeof(T) * maxD * FA_BR);
    T *Y = xalloc(sizeof(T) * (FA_BC + 1) * FA_BR);
    T *Y0 = xalloc(sizeof(T) * (FA_BC + 1) * FA_BR);
    T *Sq = xalloc(sizeof(T) * (FA_BC + 1) * FA_BR);
    for (int di = 0; di < NDIMS; di++)
        for (int ni = 0; ni < NNKS; ni++) {
            int D = F(dims)[di], nn = F(nks)[ni];
            ptrdiff_t ws = D + (ni % 2 ? ws_extra : 0);
            for (ptrdiff_t i = 0; i < FA_BC * ws; i++) W[i] = F(rnd)();
            for (ptrdiff_t i = 0; i < (ptrdiff_t)D * FA_BR; i++) Xt[i] = F(rnd)();
            for (int i = 0; i < (FA_BC + 1) * FA_BR; i++) Y[i] = Y0[i] = Sq[i] = i < nn * FA_BR ? F(rnd)() : (T)777;
            F(fa_qk)(W, ws, nn, D, Xt, Sq);
            F(fa_gemm_nt)(W, ws, nn, D, Xt, Y, 1);
            for (int j = 0; j < nn; j++)
                for (int i = 0; i < FA_BR; i++) {
                    RT acc = Y0[j * FA_BR + i], aa = fabsl((long double)acc);
                    for (int d = 0; d < D; d++) {
                        RT t = (RT)W[j * ws + d] * (RT)Xt[d * FA_BR + i];
                        acc += t; aa += fabsl((long double)t);
                    }
                    CHECK(F(close)(Y[j * FA_BR + i], acc, (D + 5) * TEPS * aa + TMIN),
                          "gemm_nt acc D=%d nn=%d j=%d i=%d got %.9g ref %.9Lg", D, nn, j, i,
                          (double)Y[j * FA_BR + i], (long double)acc);
                }
            for (int i = nn * FA_BR; i < (FA_BC + 1) * FA_BR; i++)
                CHECK(Y[i] == (T)777, "gemm_nt wrote past nn (D=%d nn=%d)", D, nn);
            F(fa_gemm_nt)(W, ws, nn, D, Xt, Y, 0);
            CHECK(memcmp(Y, Sq, sizeof(T) * (FA_BC + 1) * FA_BR) == 0,
                  "gemm_nt(accumulate=0) differs from fa_qk (D=%d nn=%d)", D, nn);
        }
    free(W); free(Xt); free(Y); free(Y0); free(Sq);
    return nfail_local;
}

/* fa_rescale_pv is fa_rescale followed by fa_pv, bit for bit */
static int F(test_rescale_pv)(void)
{
    int nfail_local = 0;
    const int maxD = 256, vs_extra = 3;
    T *V = xalloc(sizeof(T) * FA_BC * (maxD + vs_extra));
    T *Pt = xalloc(sizeof(T) * FA_BC * FA_BR);
    T *O1 = xalloc(sizeof(T) * (maxD + 1) * FA_BR);
    T *O2 = xalloc(sizeof(T) * (maxD + 1) * FA_BR);
    T *al = xalloc(sizeof(T) * FA_BR);
    for (int di = 0; di < NDIMS; di++)
        for (int ni = 0; ni < NNKS; ni++) {
            int Dv = F(dims)[di], nk = F(nks)[ni];
            ptrdiff_t vs = Dv + (ni % 2 ? vs_extra : 0);
            for (ptrdiff_t i = 0; i < FA_BC * vs; i++) V[i] = F(rnd)();
            for (int i = 0; i < FA_BC * FA_BR; i++) Pt[i] = (T)urand();
            for (int i = 0; i < FA_BR; i++) al[i] = (T)urand();
            al[0] = 0; al[1] = 1; al[2] = (T)NAN;
            for (int i = 0; i < (maxD + 1) * FA_BR; i++) O1[i] = O2[i] = i < Dv * FA_BR ? F(rnd)() : (T)777;
            if (ni % 3 == 0) F(specials)(O1, (size_t)Dv * FA_BR, 0.01, 1);
            memcpy(O2, O1, sizeof(T) * (maxD + 1) * FA_BR);
            F(fa_rescale)(O1, Dv, al);
            F(fa_pv)(V, vs, nk, Dv, Pt, O1);
            F(fa_rescale_pv)(V, vs, nk, Dv, Pt, O2, al);
            CHECK(memcmp(O1, O2, sizeof(T) * (maxD + 1) * FA_BR) == 0,
                  "rescale_pv differs from rescale + pv (Dv=%d nk=%d)", Dv, nk);
        }
    free(V); free(Pt); free(O1); free(O2); free(al);
    return nfail_local;
}

static int F(test_pv)(void)
{
    int nfail_local = 0;
    const int maxD = 257, vs_extra = 3;
    T *V = xalloc(sizeof(T) * FA_BC * (maxD + vs_extra));
    T *Pt = xalloc(sizeof(T) * FA_BC * FA_BR);
    T *Ot = xalloc(sizeof(T) * (maxD + 1) * FA_BR);
    T *O0 = xalloc(sizeof(T) * (maxD + 1) * FA_BR);
    for (int di = 0; di < NDIMS; di++)
        for (int ni = 0; ni < NNKS; ni++)
            for (int sp = 0; sp < 2; sp++) {
                int Dv = F(dims)[di], nk = F(nks)[ni];
                ptrdiff_t vs = Dv + (ni % 2 ? vs_extra : 0);
                for (ptrdiff_t i = 0; i < FA_BC * vs; i++) V[i] = F(rnd)();
                for (int i = 0; i < FA_BC * FA_BR; i++) Pt[i] = (T)urand();
                for (int i = 0; i < (maxD + 1) * FA_BR; i++) O0[i] = Ot[i] = (i < Dv * FA_BR) ? F(rnd)() : (T)555;
                if (sp) { F(specials)(V, (size_t)FA_BC * vs, 0.002, 1); F(specials)(Pt, FA_BC * FA_BR, 0.001, 1); }
                for (int i = 0; i < Dv * FA_BR; i++) O0[i] = Ot[i];
                F(fa_pv)(V, vs, nk, Dv, Pt, Ot);
                for (int d = 0; d < Dv; d++)
                    for (int i = 0; i < FA_BR; i++) {
                        RT acc = O0[d * FA_BR + i], aa = fabsl((long double)acc);
                        T s = O0[d * FA_BR + i];
                        for (int j = 0; j < nk; j++) {
                            RT t = (RT)V[j * vs + d] * (RT)Pt[j * FA_BR + i];
                            acc += t; aa += fabsl((long double)t);
                            s += V[j * vs + d] * Pt[j * FA_BR + i];
                        }
                        T got = Ot[d * FA_BR + i];
                        if (sp) {
                            int ok = (s != s) ? (got != got) : isinf((double)s) ? (got == s) : (got == got && !isinf((double)got));
                            CHECK(ok, "pv special Dv=%d nk=%d d=%d i=%d got %g spec %g", Dv, nk, d, i, (double)got, (double)s);
                        } else {
                            CHECK(F(close)(got, acc, (nk + 4) * TEPS * aa + TMIN),
                                  "pv Dv=%d nk=%d d=%d i=%d got %.9g ref %.9Lg", Dv, nk, d, i, (double)got, (long double)acc);
                        }
                    }
                for (int i = Dv * FA_BR; i < (maxD + 1) * FA_BR; i++)
                    CHECK(Ot[i] == (T)555, "pv wrote past Dv (Dv=%d nk=%d)", Dv, nk);
            }
    free(V); free(Pt); free(Ot); free(O0);
    return nfail_local;
}

/* softmax: several scenarios, lane-wise double reference with the header's
 * semantics (see fa_tiles.h: NaN scores in a lane whose max is -inf give NaN) */
static int F(test_softmax)(void)
{
    int nfail_local = 0;
    T *St = xalloc(sizeof(T) * FA_BC * FA_BR), *S0 = xalloc(sizeof(T) * FA_BC * FA_BR);
    T *m = xalloc(sizeof(T) * FA_BR), *l = xalloc(sizeof(T) * FA_BR), *al = xalloc(sizeof(T) * FA_BR);
    T *m0 = xalloc(sizeof(T) * FA_BR), *l0 = xalloc(sizeof(T) * FA_BR);
    for (int ni = 0; ni < NNKS; ni++)
        for (int sc = 0; sc < 6; sc++) {
            int nk = F(nks)[ni];
            for (int i = 0; i < FA_BC * FA_BR; i++) S0[i] = (T)(urand() * 40 - 30);
            for (int i = 0; i < FA_BR; i++) {
                m0[i] = (sc == 0) ? -(T)INFINITY : (T)(urand() * 20 - 10);
                l0[i] = (m0[i] == -(T)INFINITY) ? 0 : (T)(urand() * 10);
            }
            if (sc == 2) {      /* masked: some lanes fully -inf, some scores -inf */
                for (int j = 0; j < FA_BC; j++)
                    for (int i = 0; i < FA_BR; i++)
                        if (i % 7 == 3 || urand() < 0.3) S0[j * FA_BR + i] = -(T)INFINITY;
                for (int i = 0; i < FA_BR; i++) if (i % 7 == 3 && i % 2) { m0[i] = -(T)INFINITY; l0[i] = 0; }
            }
            if (sc == 3) F(specials)(S0, FA_BC * FA_BR, 0.01, 1);
            if (sc == 4) {      /* wide range: many flushed, tiny arguments near -126 */
                for (int i = 0; i < FA_BC * FA_BR; i++) S0[i] = (T)(urand() * 300 - 150);
            }
            if (sc == 5) {      /* NaN and +inf in m, all -inf lanes with a NaN */
                for (int i = 0; i < FA_BR; i++) {
                    if (i % 9 == 1) m0[i] = (T)NAN;
                    if (i % 9 == 2) m0[i] = (T)INFINITY;
                    if (i % 9 == 3) { m0[i] = -(T)INFINITY; l0[i] = 0;
                        for (int j = 0; j < FA_BC; j++) S0[j * FA_BR + i] = -(T)INFINITY;
                        if (nk > 1) S0[(nk / 2) * FA_BR + i] = (T)NAN; }
                    if (i % 9 == 4) { m0[i] = -(T)INFINITY; l0[i] = 0;
                        for (int j = 0; j < FA_BC; j++) S0[j * FA_BR + i] = -(T)INFINITY; }
                }
            }
            memcpy(St, S0, sizeof(T) * FA_BC * FA_BR);
            memcpy(m, m0, sizeof(T) * FA_BR);
            memcpy(l, l0, sizeof(T) * FA_BR);
            F(fa_softmax)(St, nk, m, l, al);
            for (int i = 0; i < FA_BR; i++) {
                T mx = m0[i];
                for (int j = 0; j < nk; j++) { T s = S0[j * FA_BR + i]; mx = (s > mx) ? s : mx; }
                T me = (mx == -(T)INFINITY) ? 0 : mx;
                RT a = F(exp2_ref)(m0[i] - me), sum = 0;
                int mok = (mx != mx) ? (m[i] != m[i]) : (m[i] == mx);
                CHECK(mok, "softmax m sc=%d nk=%d i=%d got %g ref %g", sc, nk, i, (double)m[i], (double)mx);
                CHECK(F(close)(al[i], a, 6 * TEPS * a), "softmax alpha sc=%d nk=%d i=%d got %g ref %Lg", sc, nk, i,
                      (double)al[i], (long double)a);
                CHECK(!F(is_denormal)(al[i]), "softmax alpha denormal");
                for (int j = 0; j < nk; j++) {
                    RT p = F(exp2_ref)(S0[j * FA_BR + i] - me);
                    T got = St[j * FA_BR + i];
                    sum += p;
                    CHECK(F(close)(got, p, 6 * TEPS * p), "softmax P sc=%d nk=%d j=%d i=%d s=%g mx=%g got %.9g ref %.9Lg",
                          sc, nk, j, i, (double)S0[j * FA_BR + i], (double)mx, (double)got, (long double)p);
                    CHECK(!F(is_denormal)(got), "softmax P denormal %g", (double)got);
                }
                RT lr = (RT)l0[i] * a + sum;
                CHECK(F(close)(l[i], lr, (nk + 8) * TEPS * (lr < 0 ? -lr : lr) + TMIN),
                      "softmax l sc=%d nk=%d i=%d got %.9g ref %.9Lg", sc, nk, i, (double)l[i], (long double)lr);
            }
            for (int i = nk * FA_BR; i < FA_BC * FA_BR; i++) {
                int same = (St[i] == S0[i]) || (St[i] != St[i] && S0[i] != S0[i]);
                CHECK(same, "softmax wrote past nk");
            }
        }
    free(St); free(S0); free(m); free(l); free(al); free(m0); free(l0);
    return nfail_local;
}

static int F(test_rescale)(void)
{
    int nfail_local = 0;
    T *Ot = xalloc(sizeof(T) * 258 * FA_BR), *O0 = xalloc(sizeof(T) * 258 * FA_BR), *al = xalloc(sizeof(T) * FA_BR);
    for (int di = 0; di < NDIMS; di++) {
        int Dv = F(dims)[di];
        for (int i = 0; i < 258 * FA_BR; i++) O0[i] = Ot[i] = F(rnd)();
        for (int i = 0; i < FA_BR; i++) al[i] = (i % 5 == 0) ? 0 : (T)urand();
        F(fa_rescale)(Ot, Dv, al);
        for (int d = 0; d < 258; d++)
            for (int i = 0; i < FA_BR; i++) {
                T want = d < Dv ? O0[d * FA_BR + i] * al[i] : O0[d * FA_BR + i];
                CHECK(Ot[d * FA_BR + i] == want, "rescale Dv=%d d=%d i=%d", Dv, d, i);
            }
    }
    free(Ot); free(O0); free(al);
    return nfail_local;
}

static int F(test_rows)(void)
{
    int nfail_local = 0;
    const int maxR = 9, maxN = 300, maxD = 259;
    T *Q = xalloc(sizeof(T) * maxR * maxD), *K = xalloc(sizeof(T) * maxN * (maxD + 7));
    T *s = xalloc(sizeof(T) * maxR * (maxN + 5)), *O = xalloc(sizeof(T) * maxR * maxD), *O0 = xalloc(sizeof(T) * maxR * maxD);
    const int Rs[] = {1, 2, 3, 4, 5, 7, 8, 9};
    const int ns[] = {1, 3, 8, 17, 33, 64, 65, 100, 257};
    for (int ri = 0; ri < 8; ri++)
        for (int di = 0; di < NDIMS; di++)
            for (int ni = 0; ni < 9; ni++) {
                int R = Rs[ri], D = F(dims)[di], nk = ns[ni];
                if ((ri + di + ni) % 2) continue;    /* keep it quick: half of the grid */
                ptrdiff_t ks = D + (ni % 2 ? 7 : 0);
                int lds = nk + (ri % 2 ? 5 : 0);
                for (int i = 0; i < R * D; i++) Q[i] = F(rnd)();
                for (ptrdiff_t i = 0; i < nk * ks; i++) K[i] = F(rnd)();
                for (int i = 0; i < maxR * (maxN + 5); i++) s[i] = (T)777;
                F(fa_dot_rows)(Q, R, K, ks, nk, D, s, lds);
                for (int r = 0; r < R; r++)
                    for (int j = 0; j < lds; j++) {
                        if (j >= nk) { CHECK(s[r * lds + j] == (T)777, "dot_rows wrote past nk"); continue; }
                        RT acc = 0, aa = 0;
                        for (int d = 0; d < D; d++) {
                            RT t = (RT)Q[r * D + d] * (RT)K[j * ks + d];
                            acc += t; aa += fabsl((long double)t);
                        }
                        CHECK(F(close)(s[r * lds + j], acc, (D + 4) * TEPS * aa + TMIN),
                              "dot_rows R=%d D=%d nk=%d r=%d j=%d got %.9g ref %.9Lg", R, D, nk, r, j,
                              (double)s[r * lds + j], (long double)acc);
                        /* bit for bit the one-(row, key) micro: the blocked and
                         * the many-vector reductions (fa__hsumv) change no bits */
                        T one = (T)0;
                        F(fa__dotr_micro)(Q + (ptrdiff_t)r * D, D, K + (ptrdiff_t)j * ks, ks, &one, 1, 1, 1, 0);
                        CHECK(memcmp(&one, &s[r * lds + j], sizeof(T)) == 0,
                              "dot_rows R=%d D=%d nk=%d r=%d j=%d: %.9g, one-key micro %.9g", R, D, nk, r, j,
                              (double)s[r * lds + j], (double)one);
                    }
                /* axpy_rows: P = s (as R x ldp), V = K with Dv = D */
                int Dv = D, ldp = lds;
                ptrdiff_t vs = ks;
                for (int i = 0; i < R * ldp; i++) s[i] = (T)urand();
                for (int i = 0; i < maxR * maxD; i++) O0[i] = O[i] = (i < R * Dv) ? F(rnd)() : (T)555;
                F(fa_axpy_rows)(s, R, ldp, K, vs, nk, Dv, O);
                for (int r = 0; r < R; r++)
                    for (int d = 0; d < Dv; d++) {
                        RT acc = O0[r * Dv + d], aa = fabsl((long double)acc);
                        for (int j = 0; j < nk; j++) {
                            RT t = (RT)s[r * ldp + j] * (RT)K[j * vs + d];
                            acc += t; aa += fabsl((long double)t);
                        }
                        CHECK(F(close)(O[r * Dv + d], acc, (nk + 4) * TEPS * aa + TMIN),
                              "axpy_rows R=%d Dv=%d nk=%d r=%d d=%d got %.9g ref %.9Lg", R, Dv, nk, r, d,
                              (double)O[r * Dv + d], (long double)acc);
                    }
                for (int i = R * Dv; i < maxR * maxD; i++) CHECK(O[i] == (T)555, "axpy_rows wrote past R*Dv");
            }
    /* specials through the row path: NaN/inf propagate like the spec order */
    {
        int R = 3, D = 65, nk = 40;
        for (int i = 0; i < R * D; i++) Q[i] = F(rnd)();
        for (int i = 0; i < nk * D; i++) K[i] = F(rnd)();
        K[5 * D + 7] = (T)NAN; K[9 * D + 64] = (T)INFINITY; Q[1 * D + 3] = (T)INFINITY;
        F(fa_dot_rows)(Q, R, K, D, nk, D, s, nk);
        for (int r = 0; r < R; r++)
            for (int j = 0; j < nk; j++) {
                T sp = 0;
                for (int d = 0; d < D; d++) sp += Q[r * D + d] * K[j * D + d];
                T got = s[r * nk + j];
                int ok = (sp != sp) ? (got != got) : isinf((double)sp) ? (got == sp) : (got == got && !isinf((double)got));
                CHECK(ok, "dot_rows special r=%d j=%d got %g spec %g", r, j, (double)got, (double)sp);
            }
    }
    free(Q); free(K); free(s); free(O); free(O0);
    return nfail_local;
}

static int F(test_exp_sum_max)(void)
{
    int nfail_local = 0;
    const int ns[] = {0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 4099};
    T *x = xalloc(sizeof(T) * 4200), *x0 = xalloc(sizeof(T) * 4200);
    for (int ni = 0; ni < 18; ni++)
        for (int sc = 0; sc < 5; sc++) {
            int n = ns[ni], off = sc % 3;   /* unaligned starts */
            for (int i = 0; i < n + 3; i++) x0[i] = (T)(urand() * 200 - 150);
            if (sc == 1) F(specials)(x0, n + 3, 0.05, 0);           /* +-inf, huge */
            if (sc == 2) for (int i = 0; i < n + 3; i++) x0[i] = -(T)INFINITY;
            if (sc == 3) F(specials)(x0, n + 3, 0.02, 1);
            /* max */
            T mref = -(T)INFINITY;
            for (int i = 0; i < n; i++) mref = (x0[off + i] > mref) ? x0[off + i] : mref;
            T mg = F(fa_max)(x0 + off, n);
            if (sc != 3) CHECK(mg == mref, "max n=%d sc=%d got %g ref %g", n, sc, (double)mg, (double)mref);
            /* exp2_sub_sum with the true max (or a given one) */
            T mx = (sc == 4) ? (T)3.25 : mref;
            if (sc == 3) mx = (T)10;
            memcpy(x, x0, sizeof(T) * (n + 3));
            T sum = F(fa_exp2_sub_sum)(x + off, n, mx);
            RT sref = 0;
            int has_nan = 0;
            for (int i = 0; i < n; i++) {
                T a = x0[off + i];
                RT p = (mx == -(T)INFINITY) ? ((a != a) ? (RT)NAN : 0) : F(exp2_ref)(a - mx);
                if (p != p) has_nan = 1;
                sref += p;
                CHECK(F(close)(x[off + i], p, 6 * TEPS * p), "exp2_sub_sum n=%d sc=%d i=%d x=%g mx=%g got %.9g ref %.9Lg",
                      n, sc, i, (double)a, (double)mx, (double)x[off + i], (long double)p);
                CHECK(!F(is_denormal)(x[off + i]), "exp2_sub_sum denormal");
            }
            if (has_nan) CHECK(sum != sum, "exp2_sub_sum NaN sum");
            else CHECK(F(close)(sum, sref, (n + 4) * TEPS * sref + TMIN), "exp2_sub_sum sum n=%d sc=%d got %.9g ref %.9Lg",
                       n, sc, (double)sum, (long double)sref);
            for (int i = 0; i < off; i++) CHECK(x[i] == x0[i] || (x[i] != x[i] && x0[i] != x0[i]), "exp2_sub_sum wrote before");
            for (int i = off + n; i < n + 3; i++) CHECK(x[i] == x0[i] || (x[i] != x[i] && x0[i] != x0[i]), "exp2_sub_sum wrote after");
        }
    free(x); free(x0);
    return nfail_local;
}

/* scalar fa_exp2 on special inputs */
static int F(test_exp2_special)(void)
{
    int nfail_local = 0;
    const T xs[] = {(T)NAN, (T)INFINITY, -(T)INFINITY, 0, -0.0, 1, -1, 0.5, -0.5, TLO, TLO - (T)0.5,
                    TLO + (T)1e-3, -TLO + 1, -TLO + 2, -TLO + 1.5, -TLO + 2.5, -TLO + 1 - (T)1e-3, (T)1e30, (T)-1e30,
                    (T)1e-30, (T)-1e-30};
    for (int k = 0; k < (int)(sizeof(xs) / sizeof(xs[0])); k++) {
        T x = xs[k];
        T got = F(fa_exp2)(x);
        RT ref;
        if (x != x) ref = (RT)NAN;
        else if (x < TLO) ref = 0;
        else { long double r = exp2l((long double)x); ref = (RT)(T)r; if (isinf((double)(T)r)) ref = (RT)INFINITY; }
        CHECK(F(close)(got, ref, 4 * TEPS * (ref < 0 ? -ref : ref)), "exp2(%.9g) got %.9g ref %.9Lg", (double)x, (double)got,
              (long double)ref);
        CHECK(!F(is_denormal)(got), "exp2 denormal");
    }
    return nfail_local;
}

/* fa_util.h's tile I/O: fa_pack_qt, fa_store_ot, fa_store_yt, bit for bit
 * against the loops they replace (one multiply / add each, so exact), every
 * row count 0..FA_BR, strides > D, specials, fully masked rows (l == 0), no
 * write outside the rows/columns/lanes they own.  Runs on its own random
 * stream (the global one is restored), so the other tests' inputs are the
 * same as without it. */
static int F(same)(T a, T b) { return memcmp(&a, &b, sizeof(T)) == 0; }
static int F(test_tile_io)(void)
{
    int nfail_local = 0;
    const uint64_t saved_rng = rng_state;
    rng_state = 0x2545F4914F6CDD1Dull;
    const int Ds[] = {1, 7, 8, 9, 16, 40, 64, 65, 129};
    const T sentinel = (T)-777.25;
    const int maxD = 129, extra = 3, ld = maxD + extra;
    T *q = xalloc(sizeof(T) * FA_BR * ld), *Qt = xalloc(sizeof(T) * (maxD + 1) * FA_BR);
    T *Ot = xalloc(sizeof(T) * maxD * FA_BR), *l = xalloc(sizeof(T) * FA_BR);
    T *o = xalloc(sizeof(T) * FA_BR * ld), *bias = xalloc(sizeof(T) * maxD);
    for (int di = 0; di < (int)(sizeof(Ds) / sizeof(Ds[0])); di++)
        for (int nr = 0; nr <= FA_BR; nr += (nr < 10 || nr > FA_BR - 10) ? 1 : 7)
            for (int sp = 0; sp < 2; sp++) {
                const int D = Ds[di], qs = D + (nr & 1 ? extra : 0);
                const T scale = (T)0.3125 + (T)nr / 64;
                /* pack: rows 0..nr-1 of q (stride qs) into lanes; lanes >= nr
                 * zeroed; feature rows >= D untouched */
                for (int i = 0; i < FA_BR * ld; i++) q[i] = F(rnd)();
                if (sp) F(specials)(q, (size_t)FA_BR * ld, 0.01, 1);
                for (int i = 0; i < (maxD + 1) * FA_BR; i++) Qt[i] = sentinel;
                F(fa_pack_qt)(q, qs, nr, D, scale, Qt);
                for (int d = 0; d <= D && d <= maxD; d++)
                    for (int i = 0; i < FA_BR; i++) {
                        T want = d == D ? sentinel : i < nr ? q[(size_t)i * qs + d] * scale : (T)0;
                        CHECK(F(same)(Qt[d * FA_BR + i], want), "pack_qt D=%d nr=%d d=%d i=%d got %g want %g",
                              D, nr, d, i, (double)Qt[d * FA_BR + i], (double)want);
                    }
                /* store_ot: o[i*os+d] = Ot[d][i] / l[i], 0 where l[i] == 0;
                 * rows >= nr and columns >= Dv untouched */
                const int Dv = D, os = qs;
                for (int i = 0; i < maxD * FA_BR; i++) Ot[i] = F(rnd)();
                if (sp) F(specials)(Ot, (size_t)maxD * FA_BR, 0.01, 1);
                for (int i = 0; i < FA_BR; i++) l[i] = (T)0.5 + (T)urand();
                if (sp) l[nr / 2] = 0;        /* a fully masked row */
                for (int i = 0; i < FA_BR * ld; i++) o[i] = sentinel;
                F(fa_store_ot)(Ot, l, nr, Dv, o, os);
                for (int i = 0; i < FA_BR; i++)
                    for (int d = 0; d < os; d++) {
                        T inv = l[i] == 0 ? (T)0 : (T)1 / l[i];
                        T want = (i >= nr || d >= Dv) ? sentinel : inv == 0 ? (T)0 : Ot[d * FA_BR + i] * inv;
                        CHECK(F(same)(o[(size_t)i * os + d], want), "store_ot Dv=%d nr=%d i=%d d=%d got %g want %g",
                              Dv, nr, i, d, (double)o[(size_t)i * os + d], (double)want);
                    }
                /* store_yt: o[i*os+n] = relu?(Yt[n][i] + bias[n]); bias may be NULL */
                const int nn = D;
                for (int n = 0; n < nn; n++) bias[n] = F(rnd)();
                for (int v = 0; v < 4; v++) {
                    const int relu = v & 1;
                    const T *b = v & 2 ? bias : NULL;
                    for (int i = 0; i < FA_BR * ld; i++) o[i] = sentinel;
                    F(fa_store_yt)(Ot, nr, nn, b, relu, o, os);
                    for (int i = 0; i < FA_BR; i++)
                        for (int n = 0; n < os; n++) {
                            T want = sentinel;
                            if (i < nr && n < nn) {
                                want = Ot[n * FA_BR + i] + (b ? b[n] : (T)0);
                                if (relu && want < 0) want = 0;
                            }
                            CHECK(F(same)(o[(size_t)i * os + n], want),
                                  "store_yt nn=%d nr=%d relu=%d bias=%d i=%d n=%d got %g want %g", nn, nr, relu,
                                  b != NULL, i, n, (double)o[(size_t)i * os + n], (double)want);
                        }
                }
            }
    free(q); free(Qt); free(Ot); free(l); free(o); free(bias);
    rng_state = saved_rng;
    return nfail_local;
}


/* fa_gemv: every output against a wider reference, and each row's result
 * equal bit for bit to the same row computed alone (M = 1) and with any
 * split of the W rows (the task split of the driver) */
static int F(test_gemv)(void)
{
    int nfail_local = 0;
    static const int Ms[] = {1, 2, 3, 4, 5, 7, 8, 13, 16};
    static const int Ks[] = {0, 1, 3, 15, 16, 17, 33, 64, 77, 129};
    static const int Ns[] = {1, 3, 7, 8, 9, 17, 33};
    const int xs_extra = 5, ws_extra = 3;
    T *X = xalloc(sizeof(T) * 16 * (129 + xs_extra));
    T *W = xalloc(sizeof(T) * 2 * 33 * (129 + ws_extra));
    T *b = xalloc(sizeof(T) * 2 * 33);
    T *Y = xalloc(sizeof(T) * 16 * 40), *Y1 = xalloc(sizeof(T) * 40), *Y2 = xalloc(sizeof(T) * 16 * 40);
    for (int mi = 0; mi < (int)(sizeof Ms / sizeof(int)); mi++)
        for (int ki = 0; ki < (int)(sizeof Ks / sizeof(int)); ki++)
            for (int ni = 0; ni < (int)(sizeof Ns / sizeof(int)); ni++)
                for (int act = 0; act <= FA_GV_SILU + 1; act++) {   /* SILU + 1: GLU */
                    int M = Ms[mi], K = Ks[ki], N = Ns[ni], glu = act > FA_GV_SILU;
                    ptrdiff_t xs = K + (mi % 2 ? xs_extra : 0), ws = K + (ni % 2 ? ws_extra : 0);
                    ptrdiff_t ys = N + 2;
                    for (ptrdiff_t i = 0; i < 16 * xs; i++) X[i] = F(rnd)();
                    for (ptrdiff_t i = 0; i < 2 * N * ws; i++) W[i] = F(rnd)();
                    for (int i = 0; i < 2 * N; i++) b[i] = F(rnd)();
                    for (int i = 0; i < 16 * 40; i++) Y[i] = Y2[i] = (T)777;
                    const T *Wu = glu ? W + N * ws : 0;
                    int a = glu ? 0 : act;
                    F(fa_gemv)(X, xs, M, W, ws, Wu, N, K, (ki % 2) ? b : 0, glu ? b + N : 0, a, Y, ys);
                    for (int m = 0; m < M; m++) {
                        for (int n = 0; n < N; n++) {
                            RT g = (ki % 2) ? (RT)b[n] : 0, u = (RT)b[N + n], aa = fabsl((long double)g);
                            for (int k = 0; k < K; k++) {
                                g += (RT)X[m * xs + k] * (RT)W[n * ws + k];
                                aa += fabsl((long double)X[m * xs + k] * W[n * ws + k]);
                                if (glu) u += (RT)X[m * xs + k] * (RT)W[(N + n) * ws + k];
                            }
                            RT ref = g;
                            double x = (double)g;
                            if (glu) ref = (RT)(x / (1.0 + exp(-x))) * u;
                            else if (act == FA_GV_RELU) ref = g < 0 ? 0 : g;
                            else if (act == FA_GV_GELU) ref = 0.5 * x * (1.0 + erf(x * 0.70710678118654752440));
                            else if (act == FA_GV_GELU_TANH) ref = 0.5 * x * (1.0 + tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
                            else if (act == FA_GV_SILU) ref = x / (1.0 + exp(-x));
                            RT tol = (K + 8) * TEPS * (aa + 1) * (glu ? 4 * (fabsl((long double)u) + 1) : 2) + TMIN;
                            CHECK(F(close)(Y[m * ys + n], ref, tol),
                                  "gemv M=%d N=%d K=%d act=%d m=%d n=%d got %.9g ref %.9Lg", M, N, K, act, m, n,
                                  (double)Y[m * ys + n], (long double)ref);
                        }
                        CHECK(Y[m * ys + N] == (T)777, "gemv wrote past nn (M=%d N=%d K=%d)", M, N, K);
                        /* the row alone gives the same bits */
                        F(fa_gemv)(X + m * xs, xs, 1, W, ws, Wu, N, K, (ki % 2) ? b : 0, glu ? b + N : 0, a, Y1, N);
                        CHECK(memcmp(Y1, Y + m * ys, sizeof(T) * N) == 0, "gemv row %d of M=%d differs alone (N=%d K=%d)", m, M, N, K);
                    }
                    /* W split in two tasks at an odd row: the same bits */
                    int h = N / 2 + (N > 2);
                    F(fa_gemv)(X, xs, M, W, ws, Wu, h, K, (ki % 2) ? b : 0, glu ? b + N : 0, a, Y2, ys);
                    F(fa_gemv)(X, xs, M, W + h * ws, ws, Wu ? Wu + h * ws : 0, N - h, K, (ki % 2) ? b + h : 0,
                               glu ? b + N + h : 0, a, Y2 + h, ys);
                    CHECK(memcmp(Y, Y2, sizeof(T) * ((M - 1) * ys + N)) == 0, "gemv split at %d differs (M=%d N=%d K=%d)", h, M, N, K);
                    for (int i = 0; i < 16 * 40; i++) Y[i] = (T)777;
                }
    free(X); free(W); free(b); free(Y); free(Y1); free(Y2);
    return nfail_local;
}

static int F(run_tests)(const char *tname, int *nrun)
{
    int tot = 0, n;
#define RUN(fn) n = F(fn)(); printf("  %-8s %-20s %s\n", tname, #fn, n ? "FAIL" : "ok"); tot += n != 0; (*nrun)++;
    RUN(test_qk) RUN(test_gemm_nt) RUN(test_pv) RUN(test_rescale_pv) RUN(test_softmax) RUN(test_rescale) RUN(test_rows) RUN(test_exp_sum_max)
    RUN(test_exp2_special) RUN(test_tile_io) RUN(test_gemv)
#undef RUN
    return tot;
}
#undef CHECK
#undef NDIMS
#undef NNKS
