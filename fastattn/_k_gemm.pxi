# Linear layers: Y = X W^T (+ bias) (ReLU).  Included by _kernels.pxi.
#
# Two tile families, bit-identical element for element (see fa_gemm.h):
#   - packed weight panels (fa_gemm.h): W packed once into contiguous panels
#     of output features (pack_weight -> PackedWeight, or per call from
#     LIN_PACK_ROWS rows), rows of X broadcast against them, Y stored in
#     place.  The fast path.
#   - the lanes-layout tiles below (fa_gemm_nt, fa_narrow.h): W read in
#     place; kept for small calls with an unpacked W (packing W for them
#     would cost more than the product).
#
# The same register tile as the score matmul: a task packs a block of FA_BR
# rows of X transposed (LIN_KC features at a time) and runs fa_gemm_nt over
# LIN_NB rows of W, read in place; the transposing store adds the bias (and
# ReLU).  Running the projections on the same OpenMP team as the attention
# keeps a second thread pool (BLAS) from spinning on the cores that the next
# kernel needs (NOTES.md, "one thread pool").  Each Y element is summed in a
# fixed order (K slices in order), whatever the thread count.

cdef enum:
    LIN_KC = 256        # features per packed X^T slice
    LIN_NB = 384         # rows of W (output features) per task


ctypedef struct LinArgs:
    const char *x
    Py_ssize_t xs
    const char *w
    Py_ssize_t ws
    const char *bias         # (N,) or NULL
    int relu
    int act                  # LIN_GELU.. (float32 only; then relu is 0), or 0
    char *y
    Py_ssize_t ys
    Py_ssize_t M, N, K, nmb, nb
    # packed path: panels, their width, MR-row groups, row blocks, panel chunks
    const char *wp
    Py_ssize_t npan, pw, ng, nrb, ncb


cdef void _lin_task(const floating *x, Py_ssize_t xs, const floating *w, Py_ssize_t ws,
                    const floating *bias, int relu, floating *y, Py_ssize_t ys,
                    int nr, int nn, Py_ssize_t K, floating *Xt, floating *Yt) noexcept nogil:
    cdef Py_ssize_t k0 = 0, i
    cdef int kc
    if K == 0:
        for i in range(nn * FA_BR):
            Yt[i] = 0
    while k0 < K:
        kc = <int>(K - k0) if K - k0 < LIN_KC else LIN_KC
        _pack_qt(x + k0, xs, nr, kc, <floating>1.0, Xt)
        _gemm_nt(w + k0, ws, nn, kc, Xt, Yt, k0 > 0)
        k0 += kc
    _store_yt(Yt, nr, nn, bias, relu, y, ys)



# Narrow-lane tile (fa_narrow.h) for row blocks of fewer than FA_BR rows:
# decode steps, short sentences and the last block of every M that is no
# multiple of 64.  Every element is computed by the same floating-point
# operations in the same order as in the 64-lane tile (tested bit for bit in
# src/tests/fa_narrow_test.c and tests/test_gemm_narrow.py), so a row's
# result never depends on how many other rows share the call.  It packs the
# rows into whole vectors only (16 lanes per zmm for 12 rows instead of 64)
# and reuses the wide task's buffers (Xt: FA_NR_XN elements, Yt: nn*FA_BR).
cdef extern from "fa_narrow.h" nogil:
    int FA_NR_XN
    int fa_narrow_lanes_f32(int nr)
    int fa_narrow_lanes_f64(int nr)
    void fa_gemm_narrow_f32(const float *x, Py_ssize_t xs, int nr, const float *w, Py_ssize_t ws,
                            int nn, Py_ssize_t K, const float *bias, int relu, float *y,
                            Py_ssize_t ys, float *Xn, float *Yn)
    void fa_gemm_narrow_f64(const double *x, Py_ssize_t xs, int nr, const double *w, Py_ssize_t ws,
                            int nn, Py_ssize_t K, const double *bias, int relu, double *y,
                            Py_ssize_t ys, double *Xn, double *Yn)


if FA_NR_XN > LIN_KC * FA_BR:   # the narrow tile packs into the wide task's Xt
    raise ImportError("fastattn: fa_narrow.h's FA_NR_XN exceeds the linear tile buffer")


cdef inline bint _lin_narrow(floating *tag, int nr) noexcept nogil:
    """The narrow tile for this block: fewer vectors of lanes than FA_BR
    (blocks that would fill all 64 lanes anyway keep the wide tile)."""
    if floating is float:
        return fa_narrow_lanes_f32(nr) < FA_BR
    else:
        return fa_narrow_lanes_f64(nr) < FA_BR


cdef void _lin_task_narrow(const floating *x, Py_ssize_t xs, const floating *w, Py_ssize_t ws,
                           const floating *bias, int relu, floating *y, Py_ssize_t ys,
                           int nr, int nn, Py_ssize_t K, floating *Xt, floating *Yt) noexcept nogil:
    if floating is float:
        fa_gemm_narrow_f32(x, xs, nr, w, ws, nn, K, bias, relu, y, ys, Xt, Yt)
    else:
        fa_gemm_narrow_f64(x, xs, nr, w, ws, nn, K, bias, relu, y, ys, Xt, Yt)


cdef inline void _lin_t(const LinArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    # W-block-major order: consecutive tasks of a thread reuse W's block
    cdef int i
    cdef Py_ssize_t n0 = (t // a.nmb) * a.nb
    cdef Py_ssize_t m0 = (t % a.nmb) * FA_BR
    cdef int nr = <int>(a.M - m0) if a.M - m0 < FA_BR else FA_BR
    cdef int nn = <int>(a.N - n0) if a.N - n0 < a.nb else <int>a.nb
    cdef const floating *bias = <const floating *>a.bias
    if _lin_narrow(buf, nr):
        _lin_task_narrow((<const floating *>a.x) + m0 * a.xs, a.xs,
                         (<const floating *>a.w) + n0 * a.ws, a.ws,
                         (bias + n0) if bias != NULL else NULL, a.relu,
                         (<floating *>a.y) + m0 * a.ys + n0, a.ys, nr, nn, a.K,
                         buf, buf + LIN_KC * FA_BR)
    else:
        _lin_task((<const floating *>a.x) + m0 * a.xs, a.xs,
                  (<const floating *>a.w) + n0 * a.ws, a.ws,
                  (bias + n0) if bias != NULL else NULL, a.relu,
                  (<floating *>a.y) + m0 * a.ys + n0, a.ys, nr, nn, a.K,
                  buf, buf + LIN_KC * FA_BR)
    if floating is float:
        if a.act != 0:      # the task's block is still in cache
            for i in range(nr):
                fa_gemm_act_f32((<float *>a.y) + (m0 + i) * a.ys + n0, nn, a.act)

cdef void _lin_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _lin_t(<const LinArgs *>c, t, <float *>b)
cdef void _lin_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _lin_t(<const LinArgs *>c, t, <double *>b)


# ---- packed weight panels (fa_gemm.h) --------------------------------------
cdef extern from "fa_gemm.h" nogil:
    int FA_GM_MB
    int FA_GM_MR
    int FA_GM_GELU, FA_GM_GELU_TANH, FA_GM_SILU
    void fa_gemm_act_f32(float *o, Py_ssize_t n, int act)
    int fa_gemm_panel_width_f32()
    int fa_gemm_panel_width_f64()
    Py_ssize_t fa_gemm_packed_size_f32(Py_ssize_t N, Py_ssize_t K)
    Py_ssize_t fa_gemm_packed_size_f64(Py_ssize_t N, Py_ssize_t K)
    Py_ssize_t fa_gemm_scratch_f32(Py_ssize_t rows)
    Py_ssize_t fa_gemm_scratch_f64(Py_ssize_t rows)
    void fa_gemm_pack_w_f32(const float *w, Py_ssize_t ws, Py_ssize_t N, Py_ssize_t K,
                            Py_ssize_t p0, Py_ssize_t p1, float *Wp)
    void fa_gemm_pack_w_f64(const double *w, Py_ssize_t ws, Py_ssize_t N, Py_ssize_t K,
                            Py_ssize_t p0, Py_ssize_t p1, double *Wp)
    void fa_gemm_packed_f32(const float *x, Py_ssize_t xs, int mr, const float *Wp,
                            Py_ssize_t K, int npan, int nlast, const float *bias, int act,
                            float *y, Py_ssize_t ys, float *buf)
    void fa_gemm_packed_f64(const double *x, Py_ssize_t xs, int mr, const double *Wp,
                            Py_ssize_t K, int npan, int nlast, const double *bias, int act,
                            double *y, Py_ssize_t ys, double *buf)

cdef enum:
    # an unpacked W is packed per call from this many rows of X on; measured
    # on a loaded Sapphire Rapids, per-call packing did not pay at 256 rows
    # (0.86x BLAS against the lanes tiles' 1.04x), so unpacked calls keep the
    # lanes-layout tiles up to very large M (the models pack at load instead)
    LIN_PACK_ROWS = 16384
    PACK_PANELS = 8          # panels per packing task


ctypedef struct PackArgs:
    const char *w
    Py_ssize_t ws, N, K, npan
    char *wp


cdef void _pack_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    cdef const PackArgs *a = <const PackArgs *>c
    cdef Py_ssize_t p0 = t * PACK_PANELS
    cdef Py_ssize_t p1 = p0 + PACK_PANELS if p0 + PACK_PANELS < a.npan else a.npan
    fa_gemm_pack_w_f32(<const float *>a.w, a.ws, a.N, a.K, p0, p1, <float *>a.wp)
cdef void _pack_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    cdef const PackArgs *a = <const PackArgs *>c
    cdef Py_ssize_t p0 = t * PACK_PANELS
    cdef Py_ssize_t p1 = p0 + PACK_PANELS if p0 + PACK_PANELS < a.npan else a.npan
    fa_gemm_pack_w_f64(<const double *>a.w, a.ws, a.N, a.K, p0, p1, <double *>a.wp)


cdef int _pack_run(const char *w, Py_ssize_t ws, Py_ssize_t N, Py_ssize_t K, int dt,
                   char *dst, int nthreads) except -1:
    cdef PackArgs p
    p.w = w; p.ws = ws; p.N = N; p.K = K; p.wp = dst
    p.npan = (N + _panel_width(dt) - 1) // _panel_width(dt)
    _run_tasks((p.npan + PACK_PANELS - 1) // PACK_PANELS, 0,
               _pack_f32 if dt == 0 else _pack_f64, &p, nthreads, False)
    return 0


cdef inline int _panel_width(int dt) noexcept nogil:
    return fa_gemm_panel_width_f32() if dt == 0 else fa_gemm_panel_width_f64()


cdef inline Py_ssize_t _packed_size(Py_ssize_t N, Py_ssize_t K, int dt) noexcept nogil:
    return fa_gemm_packed_size_f32(N, K) if dt == 0 else fa_gemm_packed_size_f64(N, K)


cdef void *_pack_into(const char *w, Py_ssize_t ws, Py_ssize_t N, Py_ssize_t K, int dt,
                      int nthreads) except NULL:
    """W packed into a fresh aligned buffer (fa_aligned_free it)."""
    cdef void *buf = fa_aligned_calloc(<size_t>_packed_size(N, K, dt) * (4 if dt == 0 else 8))
    if buf == NULL:
        raise MemoryError("fastattn: could not allocate the packed weight panels")
    try:
        _pack_run(w, ws, N, K, dt, <char *>buf, nthreads)
    except BaseException:
        fa_aligned_free(buf)
        raise
    return buf


cdef class PackedWeight:
    """A weight matrix ``W (N, K)`` (torch layout: ``Y = X W^T``) packed
    into this kernel build's contiguous panels of output features, once, for
    ``linear`` (``LinearCall(wp=...)``).  Build it with :func:`pack_weight`;
    the original array is not referenced.  Results are bit-identical to the
    same call with the unpacked ``W``.  Read-only; not picklable (pack the
    weights again where they are needed)."""
    cdef readonly cnp.ndarray storage     # the bytes (over-allocated for alignment)
    cdef const char *data                 # 64-byte aligned start of the panels
    cdef readonly Py_ssize_t N, K
    cdef readonly int panel_width
    cdef int dt

    def __cinit__(self):
        self.data = NULL

    @property
    def shape(self):
        return (self.N, self.K)

    @property
    def dtype(self):
        return np.dtype(np.float32 if self.dt == 0 else np.float64)

    @property
    def isa(self):
        """The kernel build whose panel layout this is."""
        return ISA

    @property
    def nbytes(self):
        return self.storage.nbytes

    def unpack(self):
        """A new (N, K) array equal to the weight that was packed."""
        cdef Py_ssize_t it = self.storage.itemsize
        cdef Py_ssize_t off = (self.data - _ptr(self.storage)) // it
        cdef Py_ssize_t npan = (self.N + self.panel_width - 1) // self.panel_width
        cdef Py_ssize_t kk = self.K if self.K > 0 else 1
        p = self.storage[off:off + npan * kk * self.panel_width].reshape(
            npan, kk, self.panel_width)
        return np.ascontiguousarray(p.transpose(0, 2, 1).reshape(
            npan * self.panel_width, kk)[:self.N, :self.K])

    def __reduce__(self):
        raise TypeError("fastattn PackedWeight cannot be pickled: pickle the weight "
                        "array and pack it again where it is used")

    def __repr__(self):
        return (f"PackedWeight(shape=({self.N}, {self.K}), dtype={self.dtype}, "
                f"panel_width={self.panel_width}, isa={ISA!r})")


def pack_weight(cnp.ndarray w not None, int nthreads=1, alloc=None):
    """Pack ``w`` (N, K), float32 or float64, 2-D with a contiguous last axis,
    into a :class:`PackedWeight` of this kernel build (``nthreads`` pack it).
    ``alloc(n, dtype)``, if given, provides the panels' memory: a 1-D,
    64-byte-aligned array of ``n`` elements of ``w``'s dtype (e.g.
    ``fastattn._memory.WeightArena().empty``, huge pages); the default is a
    fresh NumPy array."""
    cdef int dt = _dtype_code(w)
    cdef PackedWeight p
    cdef Py_ssize_t it, size, off
    if dt < 0:
        raise TypeError(f"pack_weight: w must be float32 or float64, not {w.dtype}")
    if cnp.PyArray_NDIM(w) != 2:
        raise ValueError(f"pack_weight: w must be 2-D (N, K), got shape {(<object>w).shape}")
    it = 4 if dt == 0 else 8
    # (an empty w has no layout to check: NumPy gives it strides 0)
    if w.shape[0] > 0 and w.shape[1] > 1 and w.strides[1] != it:
        raise ValueError("pack_weight: w's last axis must be contiguous")
    if w.strides[0] % it != 0:
        raise ValueError("pack_weight: w's row stride must be a multiple of its itemsize")
    if nthreads < 1:
        raise ValueError(f"pack_weight: nthreads must be >= 1, got {nthreads}")
    p = PackedWeight.__new__(PackedWeight)
    p.N = w.shape[0]; p.K = w.shape[1]; p.dt = dt
    p.panel_width = _panel_width(dt)
    size = _packed_size(p.N, p.K, dt)
    if alloc is None:
        p.storage = np.empty(size + 64 // it, dtype=w.dtype)
        off = <Py_ssize_t>((64 - <size_t>cnp.PyArray_DATA(p.storage) % 64) % 64) // it
    else:
        p.storage = _alloc_out(alloc, size, w.dtype, "pack_weight")
        off = 0
    p.data = _ptr(p.storage) + off * it
    if p.N > 0:
        _pack_run(_ptr(w), w.strides[0] // it, p.N, p.K, dt, <char *>p.data, nthreads)
    return p


cdef inline void _lin_p(const LinArgs *a, Py_ssize_t t, floating *buf) noexcept nogil:
    # task t: panel chunk c (major: each thread's static share is whole
    # chunks), row block b; row blocks are whole MR-row groups, split evenly
    cdef Py_ssize_t c = t // a.nrb, b = t % a.nrb
    cdef Py_ssize_t m0 = (b * a.ng // a.nrb) * FA_GM_MR
    cdef Py_ssize_t m1 = ((b + 1) * a.ng // a.nrb) * FA_GM_MR
    cdef Py_ssize_t p0 = c * a.npan // a.ncb, p1 = (c + 1) * a.npan // a.ncb
    cdef Py_ssize_t pst = (a.K if a.K > 0 else 1) * a.pw
    cdef int nlast = <int>(a.N - (a.npan - 1) * a.pw) if p1 == a.npan else <int>a.pw
    cdef const floating *bias = <const floating *>a.bias
    if m1 > a.M:
        m1 = a.M
    if m1 <= m0 or p1 <= p0:
        return
    if floating is float:
        fa_gemm_packed_f32((<const float *>a.x) + m0 * a.xs, a.xs, <int>(m1 - m0),
                           (<const float *>a.wp) + p0 * pst, a.K, <int>(p1 - p0), nlast,
                           (bias + p0 * a.pw) if bias != NULL else NULL,
                           a.act if a.act != 0 else a.relu,
                           (<float *>a.y) + m0 * a.ys + p0 * a.pw, a.ys, buf)
    else:
        fa_gemm_packed_f64((<const double *>a.x) + m0 * a.xs, a.xs, <int>(m1 - m0),
                           (<const double *>a.wp) + p0 * pst, a.K, <int>(p1 - p0), nlast,
                           (bias + p0 * a.pw) if bias != NULL else NULL, a.relu,
                           (<double *>a.y) + m0 * a.ys + p0 * a.pw, a.ys, buf)

cdef void _linp_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _lin_p(<const LinArgs *>c, t, <float *>b)
cdef void _linp_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _lin_p(<const LinArgs *>c, t, <double *>b)


cdef int _linear_packed(LinArgs *a, int dt, int nthreads) except -1:
    """The packed GEMM over a's operands (a.wp set).  The split into tasks
    changes no result (fa_gemm.h): it only balances the threads."""
    cdef Py_ssize_t gb = FA_GM_MB // FA_GM_MR, rows
    a.pw = _panel_width(dt)
    a.npan = (a.N + a.pw - 1) // a.pw
    a.ng = (a.M + FA_GM_MR - 1) // FA_GM_MR
    a.nrb = (a.ng + gb - 1) // gb
    a.ncb = 1
    if nthreads > 1:
        if a.nrb >= 2 * nthreads:
            # many rows: equal row blocks, a whole multiple per thread
            a.nrb = (a.nrb + nthreads - 1) // nthreads * nthreads
            if a.nrb > a.ng:
                a.nrb = a.ng
        else:
            # few rows: each thread a chunk of the panels over all the rows
            a.ncb = nthreads if nthreads < a.npan else a.npan
    # the largest row block of a task: ceil(ng / nrb) groups, at most M rows
    # (its scratch is cleared per call: sized by it, not by FA_GM_MB)
    rows = (a.ng + a.nrb - 1) // a.nrb * FA_GM_MR
    if rows > a.M:
        rows = a.M
    _run_tasks(a.nrb * a.ncb, <size_t>(fa_gemm_scratch_f32(rows) * 4 if dt == 0
                                       else fa_gemm_scratch_f64(rows) * 8),
               _linp_f32 if dt == 0 else _linp_f64, a, nthreads, False)
    return 0


cdef class LinearCall:
    """Operands of linear(), by name: ``x`` (M, K), ``w`` (N, K), ``out``
    (M, N), ``bias`` (N,) contiguous or None, each 2-D with a contiguous last
    axis and element row strides ``xs``/``ws``/``ys``; one dtype; ``relu``.
    Instead of ``w``/``ws``: ``wp``, a PackedWeight of this build.  ``act``:
    0, or (float32 only, not with ``relu``) ``LIN_GELU`` / ``LIN_GELU_TANH``
    / ``LIN_SILU``, applied to each tile right after its last store (the
    formulas of the row kernels, vectorised for this build)."""
    cdef public cnp.ndarray x, w, bias, out
    cdef public PackedWeight wp
    cdef public Py_ssize_t xs, ws, ys
    cdef public bint relu
    cdef public int nthreads, act

    def __init__(self, *, cnp.ndarray x=None, Py_ssize_t xs=-4611686018427387904,
                 cnp.ndarray w=None, Py_ssize_t ws=-4611686018427387904,
                 PackedWeight wp=None,
                 cnp.ndarray bias=None, bint relu=False, cnp.ndarray out=None,
                 Py_ssize_t ys=-4611686018427387904, int nthreads=0, int act=0):
        self.x = x; self.xs = xs; self.w = w; self.ws = ws; self.wp = wp
        self.bias = bias; self.relu = relu; self.out = out; self.ys = ys
        self.nthreads = nthreads; self.act = act


#: activation codes of LinearCall(act=...) (fa_gemm.h; the same numbers as ACT_*)
LIN_GELU = FA_GM_GELU
LIN_GELU_TANH = FA_GM_GELU_TANH
LIN_SILU = FA_GM_SILU


def linear(LinearCall call not None):
    """out[m, :] = relu?(x[m, :] @ w.T + bias) over the pre-validated 2-D
    operands of ``call`` (a LinearCall); returns ``call.out``."""
    cdef LinArgs a
    cdef int dt, nthreads = call.nthreads
    cdef Py_ssize_t nb = LIN_NB, nnb
    cdef PackedWeight wp = call.wp
    cdef void *tmp = NULL
    _set(call.x is not None and cnp.PyArray_NDIM(call.x) == 2, "x (2-D)")
    _set(call.out is not None and cnp.PyArray_NDIM(call.out) == 2, "out (2-D)")
    dt = _dtype_code(call.x)
    if wp is not None:
        _set(call.w is None, "w (not with wp)")
        if dt != wp.dt:
            raise TypeError("fastattn kernel call: x, wp, bias and out must share one "
                            "float32/float64 dtype")
    else:
        _set(call.w is not None and cnp.PyArray_NDIM(call.w) == 2, "w (2-D)")
        _set(call.ws != _UNSET, "ws")
        if _dtype_code(call.w) != dt:
            dt = -1
    if (dt < 0 or _dtype_code(call.out) != dt
            or (call.bias is not None and _dtype_code(call.bias) != dt)):
        raise TypeError("fastattn kernel call: x, w, bias and out must share one "
                        "float32/float64 dtype")
    _set(call.xs != _UNSET, "xs")
    _set(call.ys != _UNSET, "ys")
    _set(nthreads >= 1, "nthreads")
    _set(call.act == 0 or ((call.act == FA_GM_GELU or call.act == FA_GM_GELU_TANH
                            or call.act == FA_GM_SILU) and not call.relu), "act")
    if call.act != 0 and dt != 0:
        raise TypeError("fastattn kernel call: a fused activation (act) is float32 only")
    a.M = call.x.shape[0]; a.K = call.x.shape[1]
    if wp is not None:
        a.N = wp.N
        _set(wp.K == a.K, "wp (N, K)")
    else:
        a.N = call.w.shape[0]
        _set(call.w.shape[1] == a.K, "w (N, K)")
    _set(call.out.shape[0] >= a.M and call.out.shape[1] >= a.N, "out (M, N)")
    if call.bias is not None:
        _set(cnp.PyArray_IS_C_CONTIGUOUS(call.bias)
             and cnp.PyArray_SIZE(call.bias) >= a.N, "bias (N,)")
    if a.M == 0 or a.N == 0:
        return call.out
    a.x = _ptr(call.x); a.xs = call.xs
    a.bias = _ptr(call.bias) if call.bias is not None else NULL
    a.relu = call.relu; a.act = call.act; a.y = _ptr(call.out); a.ys = call.ys
    if wp is not None or a.M >= LIN_PACK_ROWS:
        if wp is not None:
            a.wp = wp.data
        else:   # pack W for this call (parallel), then the packed GEMM
            tmp = _pack_into(_ptr(call.w), call.ws, a.N, a.K, dt, nthreads)
            a.wp = <const char *>tmp
        try:
            _linear_packed(&a, dt, nthreads)
        finally:
            if tmp != NULL:
                fa_aligned_free(tmp)
        return call.out
    a.w = _ptr(call.w); a.ws = call.ws
    a.nmb = (a.M + FA_BR - 1) // FA_BR
    # few row blocks (short inputs): narrower W blocks, so every thread has
    # several tasks (widths stay multiples of the 6- and 8-key micro-tiles)
    while nb > 48 and a.nmb * ((a.N + nb - 1) // nb) < 4 * nthreads:
        nb = nb // 2
    # equal widths (multiples of 24, so of both micro-tiles) keep the
    # threads' static shares of the work equal when N is no multiple of nb
    nnb = (a.N + nb - 1) // nb
    nb = ((a.N + nnb - 1) // nnb + 23) // 24 * 24
    nnb = (a.N + nb - 1) // nb
    a.nb = nb
    _run_tasks(a.nmb * nnb, (LIN_KC + LIN_NB) * FA_BR * (4 if dt == 0 else 8),
               _lin_f32 if dt == 0 else _lin_f64, &a, nthreads, False)
    return call.out
