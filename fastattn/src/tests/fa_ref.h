/*
 * fa_ref.h: VERBATIM copy of the original scalar specification of fa_tiles.h,
 * functions renamed fa_* -> ref_*, used as the reference and as the "spec"
 * side of the benchmark.  (Only change since: the pointer to a design note
 * outside the repository is dropped from the layout paragraph.)
 *
 * (original header follows) fa_tiles.h -- tile arithmetic for fastattn's fused attention kernel.
 *
 * THIS FILE IS THE INTERFACE CONTRACT. The version below is the plain scalar
 * specification; an optimised version keeps every signature and semantic.
 *
 * Layout ("queries in lanes", see docs/architecture.md): the kernel keeps a block of FA_BR
 * query rows transposed, so that every per-query quantity is a vector over the
 * FA_BR lanes.  All tile buffers are 64-byte aligned, leading dimension FA_BR.
 *   Qt[d*FA_BR + i]  query i, feature d, pre-multiplied by scale*log2(e);
 *                    lanes i >= valid rows are zero.
 *   St[j*FA_BR + i]  score of query i against key j (log2 units), j < nk.
 *   Ot[d*FA_BR + i]  output accumulator for query i, feature d (unnormalised).
 *   m[i], l[i]       running max (log2 units) and running sum of the softmax.
 * K and V are read in place: row j of the key block starts at K + j*ks, and its
 * D features are contiguous.  Every function computes all FA_BR lanes.
 */
#ifndef FASTATTN_FA_REF_H
#define FASTATTN_FA_REF_H

#include <stddef.h>
#include <math.h>

#ifndef FA_BR
#define FA_BR 64
#define FA_BC 64
#endif

/* St[j][i] = sum_{d<D} K[j*ks+d] * Qt[d][i]   for j < nk (nk <= FA_BC) */
static inline void ref_qk_f32(const float *K, ptrdiff_t ks, int nk, int D,
                             const float *Qt, float *St)
{
    for (int j = 0; j < nk; j++) {
        float *s = St + (size_t)j * FA_BR;
        for (int i = 0; i < FA_BR; i++) s[i] = 0.0f;
        for (int d = 0; d < D; d++) {
            float kv = K[j * ks + d];
            const float *q = Qt + (size_t)d * FA_BR;
            for (int i = 0; i < FA_BR; i++) s[i] += kv * q[i];
        }
    }
}

/* Ot[d][i] += sum_{j<nk} V[j*vs+d] * Pt[j][i]   for d < Dv */
static inline void ref_pv_f32(const float *V, ptrdiff_t vs, int nk, int Dv,
                             const float *Pt, float *Ot)
{
    for (int d = 0; d < Dv; d++) {
        float *o = Ot + (size_t)d * FA_BR;
        for (int j = 0; j < nk; j++) {
            float vv = V[j * vs + d];
            const float *p = Pt + (size_t)j * FA_BR;
            for (int i = 0; i < FA_BR; i++) o[i] += vv * p[i];
        }
    }
}

/* Online-softmax step over nk score rows (log2 units), lane-wise:
 *   mnew     = max(m, max_j St[j])
 *   alpha    = exp2(m - mnew)          (0 where mnew == -inf)
 *   St[j]    = exp2(St[j] - mnew)      (0 where St[j] == -inf or mnew == -inf)
 *   l        = l*alpha + sum_j St[j]   (j summed in increasing order)
 *   m        = mnew
 * NaN anywhere in a lane keeps that lane's l NaN (propagates like the reference).
 * exp2 arguments below -126 flush to exactly 0 (no denormals).
 */
static inline float ref_exp2_f32(float x)
{
    if (x < -126.0f) return 0.0f;   /* NaN compares false: stays NaN below */
    return exp2f(x);
}

static inline void ref_softmax_f32(float *St, int nk, float *m, float *l,
                                  float *alpha)
{
    for (int i = 0; i < FA_BR; i++) {
        float mx = m[i];
        for (int j = 0; j < nk; j++) {
            float s = St[(size_t)j * FA_BR + i];
            mx = (s > mx) ? s : mx;
        }
        float a = (mx == -INFINITY) ? 0.0f : ref_exp2_f32(m[i] - mx);
        float sum = 0.0f;
        for (int j = 0; j < nk; j++) {
            float *s = St + (size_t)j * FA_BR + i;
            float p = (mx == -INFINITY) ? 0.0f : ref_exp2_f32(*s - mx);
            *s = p;
            sum += p;
        }
        alpha[i] = a;
        l[i] = l[i] * a + sum;
        m[i] = mx;
    }
}

/* Ot[d][i] *= alpha[i] for d < Dv */
static inline void ref_rescale_f32(float *Ot, int Dv, const float *alpha)
{
    for (int d = 0; d < Dv; d++)
        for (int i = 0; i < FA_BR; i++) Ot[(size_t)d * FA_BR + i] *= alpha[i];
}

/* ---- row layout, for few query rows against many keys (decode) ---------- */

/* s[r*lds + j] = sum_d Q[r*D + d] * K[j*ks + d]   for r < R, j < nk.
 * Q rows are contiguous and pre-scaled by scale*log2(e). */
static inline void ref_dot_rows_f32(const float *Q, int R, const float *K,
                                   ptrdiff_t ks, int nk, int D, float *s,
                                   int lds)
{
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nk; j++) {
            float acc = 0.0f;
            for (int d = 0; d < D; d++) acc += Q[(size_t)r * D + d] * K[j * ks + d];
            s[(size_t)r * lds + j] = acc;
        }
}

/* O[r*Dv + d] += sum_{j<nk} P[r*ldp + j] * V[j*vs + d]   for r < R */
static inline void ref_axpy_rows_f32(const float *P, int R, int ldp,
                                    const float *V, ptrdiff_t vs, int nk,
                                    int Dv, float *O)
{
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nk; j++) {
            float p = P[(size_t)r * ldp + j];
            for (int d = 0; d < Dv; d++) O[(size_t)r * Dv + d] += p * V[j * vs + d];
        }
}

/* x[j] = exp2(x[j] - mx) for j < n (same flushing rules as ref_softmax_f32,
 * mx == -inf gives zeros); returns the sum in a fixed order. */
static inline float ref_exp2_sub_sum_f32(float *x, int n, float mx)
{
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        float p = (mx == -INFINITY) ? 0.0f : ref_exp2_f32(x[j] - mx);
        x[j] = p;
        sum += p;
    }
    return sum;
}

/* max over x[0..n) (NaN-propagating is not required; -inf for n == 0) */
static inline float ref_max_f32(const float *x, int n)
{
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = (x[j] > mx) ? x[j] : mx;
    return mx;
}

#endif
