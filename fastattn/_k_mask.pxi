# The tile classifier: summarises each (mask slice, FA_BR x FA_BC tile) as
# hidden, visible (all True / all 0.0) or partial, over the mask's own,
# un-broadcast shape; the fused kernel skips hidden tiles and the masking
# arithmetic of visible ones.  Included by _kernels.pxi.

ctypedef fused mask_t:
    uint8_t
    float
    double


ctypedef struct MaskArgs:
    const char *m
    const int64_t *moff      # per mask slice
    Py_ssize_t msq, msk, Lm, Sm, nq, nk
    uint8_t *tab             # [nslices, nq, nk]


cdef void _classify_rows(const mask_t *m, int64_t off, Py_ssize_t msq,
                         Py_ssize_t msk, Py_ssize_t qb, Py_ssize_t Lm,
                         Py_ssize_t Sm, Py_ssize_t nk, uint8_t *out) noexcept nogil:
    cdef Py_ssize_t q0 = qb * FA_BR if Lm > 1 else 0
    cdef Py_ssize_t q1 = q0 + FA_BR if Lm > 1 else 1
    cdef Py_ssize_t kb, i, j, k0, k1
    cdef int nvis, nhid
    cdef mask_t x
    if q1 > Lm:
        q1 = Lm
    for kb in range(nk):
        k0 = kb * FA_BC if Sm > 1 else 0
        k1 = k0 + FA_BC if Sm > 1 else 1
        if k1 > Sm:
            k1 = Sm
        nvis = 0
        nhid = 0
        for i in range(q0, q1):
            for j in range(k0, k1):
                x = m[off + i * msq + j * msk]
                if mask_t is uint8_t:
                    if x:
                        nvis = nvis + 1
                    else:
                        nhid = nhid + 1
                else:
                    if x == 0:
                        nvis = nvis + 1
                    elif x == -INFINITY:
                        nhid = nhid + 1
        if nhid == (q1 - q0) * (k1 - k0):
            out[kb] = T_HIDDEN
        elif nvis == (q1 - q0) * (k1 - k0):
            out[kb] = T_VISIBLE
        else:
            out[kb] = T_PARTIAL


cdef inline void _classify_task(const MaskArgs *a, const mask_t *m, Py_ssize_t t) noexcept nogil:
    cdef Py_ssize_t s = t // a.nq, qb = t % a.nq
    _classify_rows(m, a.moff[s], a.msq, a.msk, qb, a.Lm, a.Sm, a.nk,
                   a.tab + (s * a.nq + qb) * a.nk)

cdef void _classify_u8(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _classify_task(<const MaskArgs *>c, <const uint8_t *>(<const MaskArgs *>c).m, t)
cdef void _classify_f32(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _classify_task(<const MaskArgs *>c, <const float *>(<const MaskArgs *>c).m, t)
cdef void _classify_f64(const void *c, Py_ssize_t t, void *b) noexcept nogil:
    _classify_task(<const MaskArgs *>c, <const double *>(<const MaskArgs *>c).m, t)


cdef class MaskCall:
    """Operands of classify_mask(), by name: ``mask`` (bool, float32 or
    float64) with ``moff`` (int64 element offsets of its ``ntab`` own
    slices), element strides ``msq``/``msk`` over its ``Lm`` rows and ``Sm``
    columns (0 along a broadcast axis of size 1), and the uint8 output
    ``tab`` [ntab, nq, nk]; ``kind`` is MASK_BOOL or MASK_FLOAT."""
    cdef public cnp.ndarray mask, moff, tab
    cdef public int kind
    cdef public Py_ssize_t msq, msk, Lm, Sm
    cdef public int nthreads

    def __init__(self, *, cnp.ndarray mask=None, int kind=M_NONE,
                 cnp.ndarray moff=None, Py_ssize_t msq=0, Py_ssize_t msk=0,
                 Py_ssize_t Lm=-1, Py_ssize_t Sm=-1, cnp.ndarray tab=None,
                 int nthreads=0):
        self.mask = mask; self.kind = kind; self.moff = moff
        self.msq = msq; self.msk = msk; self.Lm = Lm; self.Sm = Sm
        self.tab = tab; self.nthreads = nthreads


def classify_mask(MaskCall call not None):
    """Summarise each (mask slice, FA_BR x FA_BC tile) of ``call.mask`` as
    TILE_HIDDEN, TILE_VISIBLE (all True / all 0.0) or TILE_PARTIAL into
    ``call.tab``; returns it."""
    cdef MaskArgs a
    cdef task_fn fn
    _set(call.mask is not None, "mask")
    _set(call.kind == M_BOOL or call.kind == M_FLOAT, "kind")
    _set(call.Lm >= 0, "Lm"); _set(call.Sm >= 0, "Sm")
    _set(call.nthreads >= 1, "nthreads")
    _set(call.tab is not None and cnp.PyArray_NDIM(call.tab) == 3
         and cnp.PyArray_TYPE(call.tab) == cnp.NPY_UINT8
         and cnp.PyArray_IS_C_CONTIGUOUS(call.tab), "tab (uint8 [ntab, nq, nk])")
    cdef Py_ssize_t ntab = call.tab.shape[0]
    a.nq = call.tab.shape[1]
    a.nk = call.tab.shape[2]
    if ntab * a.nq * a.nk == 0:
        return call.tab
    a.m = _ptr(call.mask)
    a.moff = _offs(call.moff, ntab, "moff")
    a.msq = call.msq; a.msk = call.msk; a.Lm = call.Lm; a.Sm = call.Sm
    a.tab = <uint8_t *>cnp.PyArray_DATA(call.tab)
    if call.kind == M_BOOL:
        _set(cnp.PyArray_ITEMSIZE(call.mask) == 1, "mask (1-byte bool)")
        fn = _classify_u8
    elif _dtype_code(call.mask) == 0:
        fn = _classify_f32
    else:
        _set(_dtype_code(call.mask) == 1, "mask (float32/float64)")
        fn = _classify_f64
    _run_tasks(ntab * a.nq, 0, fn, &a, call.nthreads, False)
    return call.tab
