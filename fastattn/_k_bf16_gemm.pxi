# bfloat16 storage kernels (issue 12): fp32 <-> bf16 conversion, weight
# packing and the bf16 x bf16 -> fp32 GEMM with a fused bias + activation +
# fp32-or-bf16 store.  Included by _kernels.pxi, so compiled in every build;
# fastattn/src/fa_bf16.h picks the microkernel (amx / dp / widen) from the
# build's target flags.  bf16 arrays are seen here as uint16 (the public
# module fastattn/bf16.py passes uint16 views of ml_dtypes.bfloat16 arrays,
# after validating everything).
#
# GEMM tasks (amx, dp): blocks of BF16_MB (32) rows x nb output features (a multiple of
# 32), ordered row-block-major for packed weights up to 1.5 MiB (the weight
# stays in L2, a thread's consecutive tasks share a block of x) and
# feature-block-major above (consecutive tasks reuse one weight panel).  Every output element is summed over all of
# K inside one task in an order fixed by K alone, so nb (which follows the
# thread count) and the block a row falls in never change its bits.
# The widening builds (FA_BF16_PANELS) run fa_gemm.h's fp32 microkernel on
# widened panels and split like the fp32 packed GEMM (_linear_packed): row
# blocks of whole MR-row groups (up to BF16_MB rows) x even chunks of the
# PW-wide panels.

cdef extern from "fa_bf16.h" nogil:
    const char *FA_BF16_PATH
    int FA_BF16_MB
    int FA_ACT_NONE, FA_ACT_RELU, FA_ACT_GELU, FA_ACT_GELU_TANH, FA_ACT_SILU, FA_ACT_QUICK_GELU
    int fa_amx_request(const char **reason)
    Py_ssize_t fa_bf16_np(Py_ssize_t N)
    Py_ssize_t fa_bf16_kp(Py_ssize_t K)
    size_t FA_BF16_SCRATCH(Py_ssize_t K)
    int FA_BF16_PANELS, FA_BF16_PW, FA_BF16_MR
    size_t fa_bf16_scratch(Py_ssize_t rows, int out_bf16, Py_ssize_t K)
    void fa_bf16_from_f32_n(const float *src, unsigned short *dst, Py_ssize_t n)
    void fa_bf16_to_f32_n(const unsigned short *src, float *dst, Py_ssize_t n)
    void fa_bf16_pack_groups(const unsigned short *W, Py_ssize_t ws, Py_ssize_t N, Py_ssize_t K,
                             unsigned short *P, Py_ssize_t g0, Py_ssize_t g1)
    void fa_bf16_unpack(const unsigned short *P, Py_ssize_t N, Py_ssize_t K, unsigned short *W)
    void fa_bf16_gemm_task(const unsigned short *x, Py_ssize_t xs, int nr, const unsigned short *P,
                           Py_ssize_t K, Py_ssize_t n0, int nn, const float *bias, int act,
                           void *y, Py_ssize_t ys, int out_bf16, void *scratch)
    int FA_BF16_PREPACK
    size_t fa_bf16_prepack_bytes(Py_ssize_t K)
    void fa_bf16_prepack(const unsigned short *x, Py_ssize_t xs, int nr, Py_ssize_t K, void *dst)
    void fa_bf16_gemm_task_pre(const void *pre, int nr, const unsigned short *P, Py_ssize_t K,
                               Py_ssize_t n0, int nn, const float *bias, int act, void *y,
                               Py_ssize_t ys, int out_bf16, void *scratch)
    size_t fa_bf16_pre_scratch(Py_ssize_t rows, int out_bf16, Py_ssize_t K)

BF16_PATH = (<bytes>FA_BF16_PATH).decode()
BF16_ROWS_PER_TASK = FA_BF16_MB
ACT_NONE = FA_ACT_NONE
ACT_RELU = FA_ACT_RELU
ACT_GELU = FA_ACT_GELU
ACT_GELU_TANH = FA_ACT_GELU_TANH
ACT_SILU = FA_ACT_SILU
ACT_QUICK_GELU = FA_ACT_QUICK_GELU


def amx_request():
    """(ok, reason): whether this CPU has AMX-BF16 and the OS granted this
    process the tile state (asks Linux for it: once per process is enough,
    asking again is harmless).  Uses no tile instruction itself."""
    cdef const char *reason = NULL
    cdef int ok = fa_amx_request(&reason)
    return bool(ok), (<bytes>reason).decode()


cdef enum:
    CVT_CHUNK = 65536       # elements per conversion task
    FA_BF16_NB_TASK = 256   # features per GEMM task unless few row blocks narrow it

cdef Py_ssize_t BF16_MMAJOR_BYTES = 3 << 19   # packed weights up to 1.5 MiB: row-block-major tasks


ctypedef struct CvtArgs:
    const char *src
    char *dst
    Py_ssize_t n
    int to_bf16


cdef void _cvt_task(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    cdef const CvtArgs *a = <const CvtArgs *>c
    cdef Py_ssize_t i0 = t * CVT_CHUNK
    cdef Py_ssize_t n = a.n - i0 if a.n - i0 < CVT_CHUNK else CVT_CHUNK
    if a.to_bf16:
        fa_bf16_from_f32_n((<const float *>a.src) + i0, (<unsigned short *>a.dst) + i0, n)
    else:
        fa_bf16_to_f32_n((<const unsigned short *>a.src) + i0, (<float *>a.dst) + i0, n)


cdef _convert(cnp.ndarray src, cnp.ndarray dst, int nthreads, int to_bf16):
    cdef CvtArgs a
    _set(cnp.PyArray_IS_C_CONTIGUOUS(src) and cnp.PyArray_IS_C_CONTIGUOUS(dst), "contiguous")
    _set(cnp.PyArray_SIZE(src) == cnp.PyArray_SIZE(dst), "sizes")
    _set(nthreads >= 1, "nthreads")
    a.src = _ptr(src); a.dst = _ptr(dst); a.n = cnp.PyArray_SIZE(src); a.to_bf16 = to_bf16
    _run_tasks((a.n + CVT_CHUNK - 1) // CVT_CHUNK, 0, _cvt_task, &a, nthreads, False)
    return dst


def bf16_from_f32(cnp.ndarray src not None, cnp.ndarray dst not None, int nthreads):
    """dst (uint16, the bf16 bits) = src (float32) rounded to nearest even;
    both C-contiguous with the same number of elements."""
    _set(cnp.PyArray_TYPE(src) == cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(dst) == cnp.NPY_UINT16,
         "dtypes (float32 -> uint16)")
    return _convert(src, dst, nthreads, 1)


def bf16_to_f32(cnp.ndarray src not None, cnp.ndarray dst not None, int nthreads):
    """dst (float32) = src (uint16 bf16 bits), exactly."""
    _set(cnp.PyArray_TYPE(src) == cnp.NPY_UINT16 and cnp.PyArray_TYPE(dst) == cnp.NPY_FLOAT32,
         "dtypes (uint16 -> float32)")
    return _convert(src, dst, nthreads, 0)


cdef inline cnp.ndarray _u16_2d(cnp.ndarray a, str name):
    _set(a is not None and cnp.PyArray_NDIM(a) == 2 and cnp.PyArray_TYPE(a) == cnp.NPY_UINT16,
         f"{name} (2-D uint16)")
    _set(cnp.PyArray_SIZE(a) == 0 or (a.strides[1] == 2 and a.strides[0] % 2 == 0),
         f"{name} (contiguous last axis)")
    return a


def bf16_pack(cnp.ndarray w not None, alloc=None):
    """The packed ("vnni16") copy of w (N, K) bf16 bits, shape
    (ceil(N/16), Kp/2, 32) uint16 with Kp = K rounded up to 32, zero-padded,
    64-byte aligned (fa_bf16.h describes the layout).  ``alloc(n, dtype)``,
    if given, provides the memory (as for ``pack_weight``)."""
    _u16_2d(w, "w")
    cdef Py_ssize_t N = w.shape[0], K = w.shape[1]
    cdef Py_ssize_t G = fa_bf16_np(N) // 16, Kp = fa_bf16_kp(K)
    cdef Py_ssize_t n = G * (Kp // 2) * 32
    cdef size_t addr
    cdef Py_ssize_t off
    if alloc is None:
        raw = np.empty(n + 32, np.uint16)      # every group is written whole
        addr = <size_t>cnp.PyArray_DATA(raw)
        off = <Py_ssize_t>(((64 - addr % 64) % 64) // 2)
    else:
        raw = _alloc_out(alloc, n, np.uint16, "bf16_pack")
        off = 0
    cdef cnp.ndarray P = raw[off:off + n].reshape(G, Kp // 2, 32)
    cdef Py_ssize_t ws = w.strides[0] // 2
    with nogil:
        fa_bf16_pack_groups(<const unsigned short *>cnp.PyArray_DATA(w), ws, N, K,
                            <unsigned short *>cnp.PyArray_DATA(P), 0, G)
    return P


cdef inline void _check_packed(cnp.ndarray P, Py_ssize_t N, Py_ssize_t K) except *:
    _set(P is not None and cnp.PyArray_NDIM(P) == 3 and cnp.PyArray_TYPE(P) == cnp.NPY_UINT16
         and cnp.PyArray_IS_C_CONTIGUOUS(P), "packed (3-D contiguous uint16)")
    _set(P.shape[0] == fa_bf16_np(N) // 16 and P.shape[1] == fa_bf16_kp(K) // 2
         and P.shape[2] == 32, f"packed shape for N={N}, K={K}")


def bf16_unpack(cnp.ndarray P not None, Py_ssize_t N, Py_ssize_t K):
    """W (N, K) uint16 back from its packed copy (tests)."""
    _check_packed(P, N, K)
    out = np.empty((N, K), np.uint16)
    fa_bf16_unpack(<const unsigned short *>cnp.PyArray_DATA(P), N, K,
                   <unsigned short *>cnp.PyArray_DATA(out))
    return out


ctypedef struct Bf16LinArgs:
    const unsigned short *x
    Py_ssize_t xs
    const unsigned short *P
    const float *bias
    int act
    char *y
    Py_ssize_t ys
    int out_bf16
    Py_ssize_t M, N, K, nmb, nb, nnb
    int mmajor
    Py_ssize_t ng, nrb, ncb, npan      # the panel split (widening builds)
    char *pre                          # x packed once per call (or NULL)
    size_t preb                        # bytes per row block of pre


cdef void _bf16_lin_task(const void *c, Py_ssize_t t, void *buf) noexcept nogil:
    cdef const Bf16LinArgs *a = <const Bf16LinArgs *>c
    cdef Py_ssize_t n0, m0
    if a.mmajor:
        m0 = (t // a.nnb) * FA_BF16_MB
        n0 = (t % a.nnb) * a.nb
    else:
        n0 = (t // a.nmb) * a.nb
        m0 = (t % a.nmb) * FA_BF16_MB
    cdef int nr = <int>(a.M - m0) if a.M - m0 < FA_BF16_MB else FA_BF16_MB
    cdef int nn = <int>(a.N - n0) if a.N - n0 < a.nb else <int>a.nb
    cdef size_t esz = 2 if a.out_bf16 else 4
    if a.pre != NULL:
        fa_bf16_gemm_task_pre(a.pre + (m0 // FA_BF16_MB) * a.preb, nr, a.P, a.K, n0, nn,
                              (a.bias + n0) if a.bias != NULL else NULL, a.act,
                              <void *>(a.y + (m0 * a.ys + n0) * esz), a.ys, a.out_bf16, buf)
        return
    fa_bf16_gemm_task(a.x + m0 * a.xs, a.xs, nr, a.P, a.K, n0, nn,
                      (a.bias + n0) if a.bias != NULL else NULL, a.act,
                      <void *>(a.y + (m0 * a.ys + n0) * esz), a.ys, a.out_bf16, buf)


cdef void _bf16_prepack_task(const void *c, Py_ssize_t t, void *buf) noexcept nogil:
    # row block t of x into its slot of a.pre
    cdef const Bf16LinArgs *a = <const Bf16LinArgs *>c
    cdef Py_ssize_t m0 = t * FA_BF16_MB
    cdef int nr = <int>(a.M - m0) if a.M - m0 < FA_BF16_MB else FA_BF16_MB
    fa_bf16_prepack(a.x + m0 * a.xs, a.xs, nr, a.K, a.pre + t * a.preb)


cdef void _bf16_lin_ptask(const void *c, Py_ssize_t t, void *buf) noexcept nogil:
    # task t: panel chunk t // nrb, row block t % nrb (as _lin_p in _k_gemm.pxi)
    cdef const Bf16LinArgs *a = <const Bf16LinArgs *>c
    cdef Py_ssize_t ch = t // a.nrb, b = t % a.nrb
    cdef Py_ssize_t m0 = (b * a.ng // a.nrb) * FA_BF16_MR
    cdef Py_ssize_t m1 = ((b + 1) * a.ng // a.nrb) * FA_BF16_MR
    cdef Py_ssize_t n0 = (ch * a.npan // a.ncb) * FA_BF16_PW
    cdef Py_ssize_t n1 = ((ch + 1) * a.npan // a.ncb) * FA_BF16_PW
    cdef size_t esz = 2 if a.out_bf16 else 4
    if m1 > a.M:
        m1 = a.M
    if n1 > a.N:
        n1 = a.N
    if m1 <= m0 or n1 <= n0:
        return
    fa_bf16_gemm_task(a.x + m0 * a.xs, a.xs, <int>(m1 - m0), a.P, a.K, n0, <int>(n1 - n0),
                      (a.bias + n0) if a.bias != NULL else NULL, a.act,
                      <void *>(a.y + (m0 * a.ys + n0) * esz), a.ys, a.out_bf16, buf)


cdef int _bf16_linear_panels(Bf16LinArgs *a, int nthreads) except -1:
    """The widening builds' split (speed only: every element is one task's)."""
    cdef Py_ssize_t gb = FA_BF16_MB // FA_BF16_MR, rows
    a.npan = (a.N + FA_BF16_PW - 1) // FA_BF16_PW
    a.ng = (a.M + FA_BF16_MR - 1) // FA_BF16_MR
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
    # the largest row block sizes the per-thread scratch
    rows = (a.ng + a.nrb - 1) // a.nrb * FA_BF16_MR
    if rows > a.M:
        rows = a.M
    _run_tasks(a.nrb * a.ncb, fa_bf16_scratch(rows, a.out_bf16, a.K), _bf16_lin_ptask, a,
               nthreads, False)
    return 0


def bf16_linear(cnp.ndarray x not None, cnp.ndarray P not None, cnp.ndarray bias,
                int act, cnp.ndarray out not None, int nthreads):
    """out (M, N) = act(x (M, K) bf16 @ W.T + bias) over pre-validated operands:
    P = bf16_pack(W), bias float32 (N,) contiguous or None, out float32 or
    uint16 (bf16 bits) with a contiguous last axis; returns ``out``."""
    cdef Bf16LinArgs a
    cdef Py_ssize_t nb = FA_BF16_NB_TASK, nnb
    _u16_2d(x, "x")
    _set(cnp.PyArray_NDIM(out) == 2 and out.strides[1] == out.itemsize
         and out.strides[0] % out.itemsize == 0, "out (2-D, contiguous last axis)")
    _set(cnp.PyArray_TYPE(out) in (cnp.NPY_FLOAT32, cnp.NPY_UINT16), "out dtype")
    _set(act >= FA_ACT_NONE and act <= FA_ACT_QUICK_GELU, "act")
    _set(nthreads >= 1, "nthreads")
    a.M = x.shape[0]; a.K = x.shape[1]; a.N = out.shape[1]
    _set(out.shape[0] == a.M, "out (M, N)")
    _check_packed(P, a.N, a.K)
    if bias is not None:
        _set(cnp.PyArray_TYPE(bias) == cnp.NPY_FLOAT32 and cnp.PyArray_IS_C_CONTIGUOUS(bias)
             and cnp.PyArray_SIZE(bias) == a.N, "bias (N,) float32")
    if a.M == 0 or a.N == 0:
        return out
    a.x = <const unsigned short *>cnp.PyArray_DATA(x); a.xs = x.strides[0] // 2
    a.P = <const unsigned short *>cnp.PyArray_DATA(P)
    a.bias = <const float *>cnp.PyArray_DATA(bias) if bias is not None else NULL
    a.act = act
    a.y = _ptr(out); a.out_bf16 = cnp.PyArray_TYPE(out) == cnp.NPY_UINT16
    a.ys = out.strides[0] // out.itemsize
    if FA_BF16_PANELS:
        _bf16_linear_panels(&a, nthreads)
        return out
    a.nmb = (a.M + FA_BF16_MB - 1) // FA_BF16_MB
    # few row blocks: narrower feature blocks so every thread has several
    # tasks (the split never changes a result: each element is one task's)
    while nb > 32 and a.nmb * ((a.N + nb - 1) // nb) < 4 * nthreads:
        nb = nb // 2
    nnb = (a.N + nb - 1) // nb
    a.nb = nb
    a.nnb = nnb
    # task order (speed only: every element is one task's either way): a
    # packed weight that fits in L2 with room to spare is cycled through
    # there while a thread's consecutive tasks keep one block of x hot
    # (row-block-major); a bigger one is streamed once, each panel reused by
    # consecutive tasks over the row blocks (feature-block-major)
    a.mmajor = cnp.PyArray_NBYTES(P) <= BF16_MMAJOR_BYTES
    a.pre = NULL
    a.preb = 0
    cdef Py_ssize_t rows = a.M if a.M < FA_BF16_MB else FA_BF16_MB
    # (a call of fewer rows than an AMX tile needs only a small scratch)
    cdef size_t scratch = fa_bf16_scratch(rows, a.out_bf16, a.K)
    if FA_BF16_PREPACK and nb < FA_BF16_NB_TASK:
        # few row blocks cut into narrow feature blocks: every task would pack
        # the same rows of x again; pack them once (in parallel by row block)
        a.preb = fa_bf16_prepack_bytes(a.K)
        a.pre = <char *>fa_aligned_calloc(a.preb * a.nmb)
        if a.pre == NULL:
            raise MemoryError("fastattn: could not allocate the packed rows of x")
        scratch = fa_bf16_pre_scratch(rows, a.out_bf16, a.K)
    try:
        if a.pre != NULL:
            _run_tasks(a.nmb, 0, _bf16_prepack_task, &a, nthreads, False)
        _run_tasks(a.nmb * nnb, scratch, _bf16_lin_task, &a, nthreads, False)
    finally:
        if a.pre != NULL:
            fa_aligned_free(a.pre)
    return out
