# The materialised path (what attention_weights / need_weights return):
# scores, softmax and weighted sum, built from the fused kernel's tiles.
# Included by _kernels.pxi.

# -- scores: out[n][i, j] = scale * sum_d q[n][i, d] k[n][j, d] -------------

ctypedef struct MatArgs:
    # scores: a = q, b = k, n = S keys, d = D features, scale
    # weighted sum: a = p, b = v, n = S keys, d = Dv features
    const char *a
    const int64_t *aoff
    Py_ssize_t as_
    const char *b
    const int64_t *boff
    Py_ssize_t bs
    char *o
    const int64_t *ooff
    Py_ssize_t os
    Py_ssize_t L, S, d, nqb
    double scale


cdef void _scores_task(const floating *q, Py_ssize_t qs, const floating *k,
                       Py_ssize_t ks, floating *o, Py_ssize_t os,
                       Py_ssize_t nr, Py_ssize_t S, Py_ssize_t D,
                       floating scale, floating *buf) noexcept nogil:
    cdef floating *Qt = buf
    cdef floating *St = buf + D * FA_BR
    cdef Py_ssize_t i, d, j, k0, nk, kb
    for d in range(D):
        for i in range(nr):
            Qt[d * FA_BR + i] = q[i * qs + d] * scale
        for i in range(nr, FA_BR):
            Qt[d * FA_BR + i] = 0
    for kb in range((S + FA_BC - 1) // FA_BC):
        k0 = kb * FA_BC
        nk = S - k0
        if nk > FA_BC:
            nk = FA_BC
        _qk(k + k0 * ks, ks, <int>nk, <int>D, Qt, St)
        for i in range(nr):
            for j in range(nk):
                o[i * os + k0 + j] = St[j * FA_BR + i]


cdef inline void _scores_t(const MatArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    cdef Py_ssize_t n = t // a.nqb
    cdef Py_ssize_t q0 = (t % a.nqb) * FA_BR
    cdef Py_ssize_t nr = a.L - q0
    if nr > FA_BR:
        nr = FA_BR
    _scores_task((<const floating *>a.a) + a.aoff[n] + q0 * a.as_, a.as_,
                 (<const floating *>a.b) + a.boff[n], a.bs,
                 (<floating *>a.o) + a.ooff[n] + q0 * a.os, a.os,
                 nr, a.S, a.d, <floating>a.scale, buf)

cdef void _scores_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _scores_t(<const MatArgs *>c, t, <float *>b)
cdef void _scores_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _scores_t(<const MatArgs *>c, t, <double *>b)


# -- weighted sum: out[n][i, :] = sum_j p[n][i, j] v[n][j, :] ---------------

cdef void _wsum_task(const floating *p, Py_ssize_t ps, const floating *v,
                     Py_ssize_t vs, floating *o, Py_ssize_t os, Py_ssize_t nr,
                     Py_ssize_t S, Py_ssize_t Dv, floating *buf) noexcept nogil:
    cdef floating *Pt = buf
    cdef floating *Ot = buf + FA_BC * FA_BR
    cdef Py_ssize_t i, d, j, k0, nk, kb
    for i in range(Dv * FA_BR):
        Ot[i] = 0
    for kb in range((S + FA_BC - 1) // FA_BC):
        k0 = kb * FA_BC
        nk = S - k0
        if nk > FA_BC:
            nk = FA_BC
        for j in range(nk):
            for i in range(nr):
                Pt[j * FA_BR + i] = p[i * ps + k0 + j]
            for i in range(nr, FA_BR):
                Pt[j * FA_BR + i] = 0
        _pv(v + k0 * vs, vs, <int>nk, <int>Dv, Pt, Ot)
    for i in range(nr):
        for d in range(Dv):
            o[i * os + d] = Ot[d * FA_BR + i]


cdef inline void _wsum_t(const MatArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    cdef Py_ssize_t n = t // a.nqb
    cdef Py_ssize_t q0 = (t % a.nqb) * FA_BR
    cdef Py_ssize_t nr = a.L - q0
    if nr > FA_BR:
        nr = FA_BR
    _wsum_task((<const floating *>a.a) + a.aoff[n] + q0 * a.as_, a.as_,
               (<const floating *>a.b) + a.boff[n], a.bs,
               (<floating *>a.o) + a.ooff[n] + q0 * a.os, a.os,
               nr, a.S, a.d, buf)

cdef void _wsum_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _wsum_t(<const MatArgs *>c, t, <float *>b)
cdef void _wsum_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _wsum_t(<const MatArgs *>c, t, <double *>b)


cdef class ScoresCall:
    """Operands of scores(), by name: ``q``/``k``/``out`` with int64 element
    offsets ``qoff``/``koff``/``ooff`` of the N = len(qoff) slices, element
    row strides ``qs``/``ks``/``os``, sizes ``L``, ``S``, ``D``, ``scale``."""
    cdef public cnp.ndarray q, qoff, k, koff, out, ooff
    cdef public Py_ssize_t qs, ks, os, L, S, D
    cdef public double scale
    cdef public int nthreads

    def __init__(self, *, cnp.ndarray q=None, cnp.ndarray qoff=None,
                 Py_ssize_t qs=-4611686018427387904,
                 cnp.ndarray k=None, cnp.ndarray koff=None,
                 Py_ssize_t ks=-4611686018427387904,
                 cnp.ndarray out=None, cnp.ndarray ooff=None,
                 Py_ssize_t os=-4611686018427387904,
                 Py_ssize_t L=-1, Py_ssize_t S=-1, Py_ssize_t D=-1,
                 double scale=NAN, int nthreads=0):
        self.q = q; self.qoff = qoff; self.qs = qs
        self.k = k; self.koff = koff; self.ks = ks
        self.out = out; self.ooff = ooff; self.os = os
        self.L = L; self.S = S; self.D = D; self.scale = scale
        self.nthreads = nthreads


cdef class WeightedSumCall:
    """Operands of weighted_sum(), by name: ``p``/``v``/``out`` with int64
    element offsets ``poff``/``voff``/``ooff`` of the N = len(poff) slices,
    element row strides ``ps``/``vs``/``os``, sizes ``L``, ``S``, ``Dv``."""
    cdef public cnp.ndarray p, poff, v, voff, out, ooff
    cdef public Py_ssize_t ps, vs, os, L, S, Dv
    cdef public int nthreads

    def __init__(self, *, cnp.ndarray p=None, cnp.ndarray poff=None,
                 Py_ssize_t ps=-4611686018427387904,
                 cnp.ndarray v=None, cnp.ndarray voff=None,
                 Py_ssize_t vs=-4611686018427387904,
                 cnp.ndarray out=None, cnp.ndarray ooff=None,
                 Py_ssize_t os=-4611686018427387904,
                 Py_ssize_t L=-1, Py_ssize_t S=-1, Py_ssize_t Dv=-1,
                 int nthreads=0):
        self.p = p; self.poff = poff; self.ps = ps
        self.v = v; self.voff = voff; self.vs = vs
        self.out = out; self.ooff = ooff; self.os = os
        self.L = L; self.S = S; self.Dv = Dv; self.nthreads = nthreads


cdef int _mat_args(MatArgs *m, cnp.ndarray a, cnp.ndarray aoff, Py_ssize_t as_,
                   cnp.ndarray b, cnp.ndarray boff, Py_ssize_t bs,
                   cnp.ndarray o, cnp.ndarray ooff, Py_ssize_t os,
                   Py_ssize_t L, Py_ssize_t S, Py_ssize_t d, int nthreads,
                   tuple names, Py_ssize_t *N, int *dt) except -1:
    _set(a is not None, names[0]); _set(b is not None, names[1])
    _set(o is not None, "out")
    _set(aoff is not None, names[0] + "off")
    dt[0] = _dtype_code(a)
    if dt[0] < 0 or _dtype_code(b) != dt[0] or _dtype_code(o) != dt[0]:
        raise TypeError("fastattn kernel call: operands must share one "
                        "float32/float64 dtype")
    if as_ == _UNSET or bs == _UNSET or os == _UNSET:
        for name, val in ((names[0] + "s", as_), (names[1] + "s", bs), ("os", os)):
            _set(val != _UNSET, name)
    _set(L >= 0, "L"); _set(S >= 0, "S"); _set(d >= 0, names[2])
    _set(nthreads >= 1, "nthreads")
    N[0] = cnp.PyArray_SIZE(aoff)
    m.a = _ptr(a); m.aoff = _offs(aoff, N[0], names[0] + "off"); m.as_ = as_
    m.b = _ptr(b); m.boff = _offs(boff, N[0], names[1] + "off"); m.bs = bs
    m.o = _ptr(o); m.ooff = _offs(ooff, N[0], "ooff"); m.os = os
    m.L = L; m.S = S; m.d = d
    m.nqb = (L + FA_BR - 1) // FA_BR
    return 0


def scores(ScoresCall call not None):
    """out[n][i, j] = scale * sum_d q[n][i, d] k[n][j, d] over the
    pre-validated slices of ``call`` (a ScoresCall); returns ``call.out``."""
    cdef MatArgs m
    cdef Py_ssize_t N
    cdef int dt
    _mat_args(&m, call.q, call.qoff, call.qs, call.k, call.koff, call.ks,
              call.out, call.ooff, call.os, call.L, call.S, call.D,
              call.nthreads, ("q", "k", "D"), &N, &dt)
    _set(call.scale == call.scale, "scale")
    m.scale = call.scale
    if N == 0 or m.L == 0 or m.S == 0:
        return call.out
    _run_tasks(N * m.nqb, (m.d * FA_BR + FA_BC * FA_BR) * (4 if dt == 0 else 8),
               _scores_f32 if dt == 0 else _scores_f64, &m, call.nthreads, False)
    return call.out


def weighted_sum(WeightedSumCall call not None):
    """out[n][i, :] = sum_j p[n][i, j] v[n][j, :] over the pre-validated
    slices of ``call`` (a WeightedSumCall); returns ``call.out``."""
    cdef MatArgs m
    cdef Py_ssize_t N
    cdef int dt
    _mat_args(&m, call.p, call.poff, call.ps, call.v, call.voff, call.vs,
              call.out, call.ooff, call.os, call.L, call.S, call.Dv,
              call.nthreads, ("p", "v", "Dv"), &N, &dt)
    if N == 0 or m.L == 0 or m.d == 0:
        return call.out
    _run_tasks(N * m.nqb, (FA_BC * FA_BR + m.d * FA_BR) * (4 if dt == 0 else 8),
               _wsum_f32 if dt == 0 else _wsum_f64, &m, call.nthreads, False)
    return call.out


# -- softmax of rows ----------------------------------------------------------

cdef void _softmax_row(const floating *x, Py_ssize_t xs, floating *o,
                       Py_ssize_t os, Py_ssize_t C) noexcept nogil:
    # Accurate libm exp here (not the exp2 of the fused path): this is the
    # public softmax, held to scipy.special.softmax within ~1 ulp per element.
    cdef Py_ssize_t j
    cdef floating mx = -INFINITY
    cdef double sm = 0          # double accumulator: error independent of C
    cdef floating e, inv
    cdef bint has_nan = False
    for j in range(C):
        e = x[j * xs]
        if e != e:
            has_nan = True
        elif e > mx:
            mx = e
    if has_nan:
        mx = x[0] * 0 + (<floating>INFINITY - <floating>INFINITY)  # NaN
    if mx == -INFINITY:
        # every entry masked: zeros, never NaN
        for j in range(C):
            o[j * os] = 0
        return
    for j in range(C):
        if floating is float:
            e = expf(x[j * xs] - mx)
        else:
            e = exp(x[j * xs] - mx)
        o[j * os] = e
        sm = sm + e
    inv = <floating>(1.0 / sm)
    for j in range(C):
        o[j * os] = o[j * os] * inv


ctypedef struct SoftArgs:
    const char *x
    const int64_t *xoff
    Py_ssize_t xs
    char *o
    const int64_t *ooff
    Py_ssize_t os, C


cdef void _softmax_f32(const void *c, Py_ssize_t r, void *b) noexcept nogil:
    cdef const SoftArgs *a = <const SoftArgs *>c
    _softmax_row((<const float *>a.x) + a.xoff[r], a.xs,
                 (<float *>a.o) + a.ooff[r], a.os, a.C)
cdef void _softmax_f64(const void *c, Py_ssize_t r, void *b) noexcept nogil:
    cdef const SoftArgs *a = <const SoftArgs *>c
    _softmax_row((<const double *>a.x) + a.xoff[r], a.xs,
                 (<double *>a.o) + a.ooff[r], a.os, a.C)


cdef class SoftmaxCall:
    """Operands of softmax(), by name: row r holds ``C`` elements at
    ``xoff[r] + j*xs`` of ``x`` (element units), written to
    ``ooff[r] + j*os`` of ``out`` (which may be ``x``)."""
    cdef public cnp.ndarray x, xoff, out, ooff
    cdef public Py_ssize_t xs, os, C
    cdef public int nthreads

    def __init__(self, *, cnp.ndarray x=None, cnp.ndarray xoff=None,
                 Py_ssize_t xs=-4611686018427387904,
                 cnp.ndarray out=None, cnp.ndarray ooff=None,
                 Py_ssize_t os=-4611686018427387904,
                 Py_ssize_t C=-1, int nthreads=0):
        self.x = x; self.xoff = xoff; self.xs = xs
        self.out = out; self.ooff = ooff; self.os = os
        self.C = C; self.nthreads = nthreads


def softmax(SoftmaxCall call not None):
    """Stable softmax of the rows of ``call`` (a SoftmaxCall); returns
    ``call.out``."""
    cdef SoftArgs a
    cdef int dt
    _set(call.x is not None, "x"); _set(call.out is not None, "out")
    _set(call.xoff is not None, "xoff")
    dt = _dtype_code(call.x)
    if dt < 0 or _dtype_code(call.out) != dt:
        raise TypeError("fastattn kernel call: x and out must share one "
                        "float32/float64 dtype")
    _set(call.xs != _UNSET, "xs")
    _set(call.os != _UNSET, "os")
    _set(call.C >= 0, "C"); _set(call.nthreads >= 1, "nthreads")
    cdef Py_ssize_t N = cnp.PyArray_SIZE(call.xoff)
    a.x = _ptr(call.x); a.xoff = _offs(call.xoff, N, "xoff"); a.xs = call.xs
    a.o = _ptr(call.out); a.ooff = _offs(call.ooff, N, "ooff"); a.os = call.os
    a.C = call.C
    if N == 0 or a.C == 0:
        return call.out
    _run_tasks(N, 0, _softmax_f32 if dt == 0 else _softmax_f64, &a,
               call.nthreads, False)
    return call.out
