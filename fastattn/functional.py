"""Validated public functions over fastattn's kernels.

Every argument is checked here, before any C code runs; the kernels trust
what they are given.  Arrays are never copied silently, with one documented
exception: an operand whose last axis is not contiguous (or whose strides are
not multiples of its item size) is copied once, because the SIMD tiles read
feature vectors as contiguous runs.

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``:
``query (..., L, E)``, ``key (..., S, E)``, ``value (..., S, Ev)``, any number
of leading dimensions, broadcast against each other like ``numpy.matmul``.
When present, axis ``-3`` is the head axis (what ``enable_gqa`` and
``alibi_slopes`` refer to).
"""
import math
import numbers

import numpy as np

from ._dispatch import kernels as _k
from .threads import for_flops as _n_threads
from .threads import for_stream as _for_stream
from .threads import resolve as _resolve_threads

__all__ = ["scaled_dot_product_attention", "varlen_attention", "attention_scores",
           "softmax", "weighted_sum", "attention_weights", "attention_plan", "AttentionPlan"]

def _attn_threads(num_threads, flops, kv_bytes):
    """Threads for a fused attention call: what its flops need, but never
    fewer than streaming K and V needs (a decode step over a cache of a few
    MB has few flops per byte and is bound by the read, like a GEMV).  The
    kernels' results do not depend on the thread count."""
    n = _n_threads(num_threads, flops)
    m = _for_stream(num_threads, kv_bytes)
    return n if n >= m else m


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INT_MAX = 2**31 - 1


# ---------------------------------------------------------------------------
# argument checking helpers
# ---------------------------------------------------------------------------

def _bf16():
    """The ``ml_dtypes.bfloat16`` dtype (ml_dtypes is optional: imported only
    when bfloat16 is asked for)."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError('bfloat16 needs the ml_dtypes package: pip install '
                          '"fastattn[bf16]"') from None
    return np.dtype(ml_dtypes.bfloat16)


_BF16_DTYPE = []      # ml_dtypes.bfloat16 once it was asked for


def _is_bf16(dtype):
    # a bfloat16 array exists only if ml_dtypes is installed: no import needed
    # to say no.  The kind and item size first: dtype.name is a slow Python
    # property, and float32/float64 (kind "f") never need it.
    if dtype.kind != "V" or dtype.itemsize != 2:
        return False
    if _BF16_DTYPE:
        return dtype == _BF16_DTYPE[0]
    if dtype.name != "bfloat16":
        return False
    _BF16_DTYPE.append(_bf16())
    return dtype == _BF16_DTYPE[0]


def _as_float_array(x, name, bf16=False):
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as e:  # ragged lists, odd objects
            raise TypeError(f"{name} could not be converted to a NumPy array: "
                            f"{e}") from None
    if x.dtype not in _FLOATS and not (bf16 and _is_bf16(x.dtype)):
        raise TypeError(f"{name} must be float32 or float64"
                        f"{' or bfloat16' if bf16 else ''}, got dtype "
                        f"{x.dtype} (shape {x.shape})")
    return x


def _same_dtype(arrays, bf16=False):
    d0 = arrays[0][1].dtype
    if all(a.dtype == d0 for _, a in arrays):
        return d0
    dt = {a.dtype for _, a in arrays}
    if len(dt) > 1:
        desc = ", ".join(f"{n}: {a.dtype}" for n, a in arrays)
        raise TypeError(f"mixed dtypes are not supported ({desc}); convert "
                        "them to one of float32" + (", float64 or bfloat16" if bf16
                                                    else " or float64"))
    return dt.pop()


def _out_dtype(out_dtype, dtype, out):
    """The output dtype of an attention call on inputs of ``dtype``: the
    inputs' own dtype, or for bfloat16 inputs float32 or bfloat16 (the
    ``out_dtype=`` keyword, else ``out``'s dtype, else bfloat16)."""
    bf16_in = _is_bf16(dtype)
    if out_dtype is None:
        if bf16_in and isinstance(out, np.ndarray) and out.dtype == np.float32:
            return np.dtype(np.float32)
        return dtype
    if isinstance(out_dtype, str) and out_dtype in ("bfloat16", "bf16"):
        od = _bf16()
    else:
        try:
            od = np.dtype(out_dtype)
        except TypeError:
            raise TypeError(f"out_dtype must be a dtype (float32 or bfloat16) or "
                            f"None, got {out_dtype!r}") from None
    if bf16_in:
        if od != np.float32 and not _is_bf16(od):
            raise TypeError(f"out_dtype for bfloat16 inputs must be float32 or "
                            f"bfloat16, got {od}")
    elif od != dtype:
        raise TypeError(f"out_dtype={od} is not supported for {dtype} inputs (the "
                        f"output has the inputs' dtype; out_dtype chooses float32 "
                        f"or bfloat16 for bfloat16 inputs)")
    return od


def _u16(x):
    """The bit pattern of a bfloat16 array (a view, no copy) for the kernels."""
    return x.view(np.uint16)


def _needs_copy(x):
    """True when the kernels cannot read ``x`` in place: a last axis that is
    not contiguous, or strides that are not whole elements."""
    its = x.itemsize
    st = x.strides
    if x.ndim and x.shape[-1] > 1 and st[-1] != its:
        return True
    for s in st:
        if s % its:
            return True
    return False


def _readable(x):
    """A view whose last axis is contiguous and whose strides are whole
    elements; copies once (C order) only when that is impossible."""
    return np.ascontiguousarray(x) if _needs_copy(x) else x


def _check_threads(num_threads):
    """Reject a bad ``num_threads`` even on the early exits (empty output,
    no keys) that never reach a kernel."""
    if num_threads is not None:
        _resolve_threads(num_threads)


def _check_size(name, n):
    if n > _INT_MAX:
        raise ValueError(f"{name} = {n} is too large (the kernels take "
                         f"feature sizes below 2**31)")


def _too_large(shapes, desc):
    """numpy.broadcast_shapes also fails when the shapes broadcast but the
    result has too many elements: say that, not "do not broadcast"."""
    nd = max((len(s) for s in shapes), default=0)
    full = []
    for i in range(nd):
        sizes = {s[len(s) - nd + i] for s in shapes if len(s) - nd + i >= 0} - {1}
        if len(sizes) > 1:
            return
        full.append(sizes.pop() if sizes else 1)
    raise ValueError(f"the broadcast shape {tuple(full)} of {desc} is too large "
                     f"({math.prod(full)} elements)") from None


def _broadcast(name_shapes, what):
    try:
        return tuple(np.broadcast_shapes(*[s for _, s in name_shapes]))
    except ValueError:
        desc = ", ".join(f"{n} {s}" for n, s in name_shapes)
        _too_large([s for _, s in name_shapes], f"{what} ({desc})")
        raise ValueError(f"{what} do not broadcast: {desc}") from None


_OFFSETS_CACHE = {}    # (lead shape, lead strides, itemsize, batch) -> read-only offsets
_OFFSETS_CACHE_MAX = 512


def _offsets(x, batch_shape):
    """int64 element offsets of every (broadcast) leading index of ``x``
    against ``batch_shape`` (C order), as a flat contiguous array.  Small
    ones (the decode-step case: the same few shapes at every call) are
    memoised, read-only: the kernels only read them."""
    key = (x.shape[:-2], x.strides[:-2], x.itemsize, batch_shape)
    off = _OFFSETS_CACHE.get(key)
    if off is None:
        off = _offsets_of(x, batch_shape)
        if off.size <= 256:
            off.setflags(write=False)
            if len(_OFFSETS_CACHE) >= _OFFSETS_CACHE_MAX:
                _OFFSETS_CACHE.clear()
            _OFFSETS_CACHE[key] = off
    return off


def _offsets_of(x, batch_shape):
    nlead = x.ndim - 2
    pad = len(batch_shape) - nlead
    axes = []
    for axis, m in enumerate(batch_shape):
        n = x.shape[axis - pad] if axis >= pad else 1
        axes.append((m, x.strides[axis - pad] // x.itemsize if (axis >= pad and n > 1) else 0))
    if math.prod(batch_shape) <= 256:      # plain Python: cheaper for few slices
        offs = [0]
        for m, st in axes:
            offs = [o + i * st for o in offs for i in range(m)]
        return np.array(offs, dtype=np.int64)
    off = np.zeros(1, dtype=np.int64)
    for m, st in axes:
        # C order: the running offsets vary slowest, this axis fastest
        off = (off[:, None] + np.arange(m, dtype=np.int64) * st).reshape(-1)
    return off


def _row_stride(x):
    return x.strides[-2] // x.itemsize if x.shape[-2] > 1 else 0


def _internal_overlap(a):
    """True when two different indices of ``a`` may address the same memory
    (a sufficient test: sorted strides must each clear the previous extent)."""
    dims = sorted((abs(s), n) for s, n in zip(a.strides, a.shape) if n > 1)
    extent = a.itemsize
    for s, n in dims:
        if s < extent:
            return True
        extent = s * (n - 1) + extent
    return False


def _check_out(out, shape, dtype, inputs, contiguous_last=True,
               overlap_hint="pass a separate array"):
    """Validate an ``out=`` array: type, shape, dtype, writeable, whole-element
    strides (and a contiguous last axis for the tile kernels unless
    ``contiguous_last`` is False), no internal overlap, and no memory shared
    with any of ``inputs`` (``(name, array or None)`` pairs)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"out has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if contiguous_last:
        if out.size and ((out.shape[-1] > 1 and out.strides[-1] != out.itemsize)
                         or any(s % out.itemsize for s in out.strides)):
            raise ValueError(f"out must have a contiguous last axis (strides "
                             f"{out.strides}, item size {out.itemsize})")
    elif any(s % out.itemsize for s in out.strides):
        raise ValueError(f"out has strides {out.strides} that are not whole elements")
    if out.size and _internal_overlap(out):
        raise ValueError(f"out has overlapping strides {out.strides} for "
                         f"shape {out.shape}")
    for name, x in inputs:
        if x is None or not out.size or not x.size:
            continue
        if not np.may_share_memory(out, x):      # disjoint bounds: cheap and exact
            continue
        try:
            shared = np.shares_memory(out, x, max_work=100_000)
        except np.exceptions.TooHardError:
            shared = True
        if shared:
            raise ValueError(f"out overlaps {name}; {overlap_hint}")
    return out


def _check_scale(scale, E):
    if scale is None:
        return 1.0 / math.sqrt(E)
    if type(scale) is float and math.isfinite(scale):       # the common case, cheaply
        return scale
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got "
                        f"{type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


# ---------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------

def _window_bounds(is_causal, causal_alignment, window, L, S):
    if causal_alignment not in ("top_left", "bottom_right"):
        raise ValueError("causal_alignment must be 'top_left' or "
                         f"'bottom_right', got {causal_alignment!r}")
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    left = right = None
    if window is not None:
        try:
            left, right = window
        except (TypeError, ValueError):
            raise ValueError("window must be a pair (left, right) of "
                             f"non-negative ints or None, got {window!r}") from None
        vals = []
        for side, w in (("left", left), ("right", right)):
            if w is None or (isinstance(w, numbers.Integral) and
                             not isinstance(w, (bool, np.bool_)) and w == -1):
                vals.append(None)
            elif (isinstance(w, numbers.Integral) and
                  not isinstance(w, (bool, np.bool_)) and w >= 0):
                # a side reaching past both sequences bounds nothing; treating
                # it as unbounded also keeps the kernel's index sums in range
                vals.append(int(w) if w <= L + S else None)
            else:
                raise ValueError(f"window {side} must be a non-negative int, "
                                 f"-1 or None (unbounded), got {w!r}")
        left, right = vals
    if is_causal:
        right = 0 if right is None else min(right, 0)
    off = S - L if causal_alignment == "bottom_right" else 0
    return left, right, off


def _check_mask(attn_mask, dtype, batch_shape, L, S):
    """Validated mask, reshaped (no copy) to the attention's number of dims."""
    m = attn_mask
    if not isinstance(m, np.ndarray):
        try:
            m = np.asarray(m)
        except Exception as e:
            raise TypeError(f"attn_mask could not be converted to an array: {e}") from None
    if _is_bf16(dtype):
        if m.dtype != np.bool_ and m.dtype != np.float32:
            raise TypeError(f"attn_mask for bfloat16 inputs must be bool or float32 "
                            f"(additive), got {m.dtype} (shape {m.shape})")
    elif m.dtype != np.bool_ and m.dtype != dtype:
        raise TypeError(f"attn_mask must be bool or the query's dtype "
                        f"({dtype}), got {m.dtype} (shape {m.shape})")
    target = tuple(batch_shape) + (L, S)
    try:
        ok = 1 <= m.ndim <= len(target) and np.broadcast_shapes(m.shape, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"attn_mask of shape {m.shape} does not broadcast to "
                         f"the attention shape {target}")
    if any(s % m.itemsize for s in m.strides):
        m = np.ascontiguousarray(m)
    return m.reshape((1,) * (len(target) - m.ndim) + m.shape)


def _mask_tiles(call, m, batch_shape, num_threads):
    """Set the mask fields of a FlashCall: kind, element offsets per
    (batch, head), strides, and the per-tile summary over the mask's own
    shape (classify_mask)."""
    kind = _k.MASK_BOOL if m.dtype == np.bool_ else _k.MASK_FLOAT
    own_batch = m.shape[:-2]
    Lm, Sm = m.shape[-2], m.shape[-1]
    msq = m.strides[-2] // m.itemsize if Lm > 1 else 0
    msk = m.strides[-1] // m.itemsize if Sm > 1 else 0
    own = _offsets(m, own_batch)
    ntab = own.size
    nq = -(-Lm // _k.TILE_ROWS) if Lm > 1 else 1
    nk = -(-Sm // _k.TILE_KEYS) if Sm > 1 else 1
    tab = np.empty((ntab, nq, nk), dtype=np.uint8)
    _k.classify_mask(_k.MaskCall(mask=m, kind=kind, moff=own, msq=msq, msk=msk,
                                 Lm=Lm, Sm=Sm, tab=tab,
                                 nthreads=_n_threads(num_threads, m.size * 64)))
    call.mask_kind = kind
    call.mask = m
    call.moff = _offsets(m, tuple(batch_shape))
    call.msq, call.msk = msq, msk
    call.tab = tab
    call.tidx = np.ascontiguousarray(np.broadcast_to(
        np.arange(ntab, dtype=np.int64).reshape(own_batch), batch_shape).reshape(-1))


def _check_slopes(alibi_slopes, H):
    if alibi_slopes is None:
        return None
    slopes = np.asarray(alibi_slopes)
    if slopes.dtype.kind not in "fiu":
        raise TypeError(f"alibi_slopes must be real numbers, got dtype {slopes.dtype}")
    if slopes.ndim > 1 or slopes.size != H:
        raise ValueError(f"alibi_slopes must have shape ({H},) (one per head), "
                         f"got {slopes.shape}")
    slopes = np.ascontiguousarray(slopes, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(slopes)):
        raise ValueError("alibi_slopes must be finite")
    return slopes


class _Plan:
    """Everything validated about one attention call (no C code has run)."""
    __slots__ = ("q", "k", "v", "dtype", "L", "S", "E", "Ev", "prefix", "Hout",
                 "Hkv", "batch_out", "scale", "left", "right", "off", "slopes",
                 "mask")


def _plan(query, key, value, attn_mask, dropout_p, is_causal, scale,
          enable_gqa, causal_alignment, window, alibi_slopes, bf16=False):
    """Validate the arguments shared by scaled_dot_product_attention and
    attention_weights (``value`` may be None for the latter; ``bf16``
    accepts bfloat16 operands)."""
    p = _Plan()
    q = _as_float_array(query, "query", bf16)
    k = _as_float_array(key, "key", bf16)
    named = [("query", q), ("key", k)]
    v = None
    if value is not None:
        v = _as_float_array(value, "value", bf16)
        named.append(("value", v))
    p.dtype = _same_dtype(named, bf16)
    for name, x in named:
        if x.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions "
                             f"(..., seq, features), got shape {x.shape}")
    if type(dropout_p) is not float and (isinstance(dropout_p, (bool, np.bool_))
                                         or not isinstance(dropout_p, numbers.Real)):
        raise TypeError(f"dropout_p must be a number, got {type(dropout_p).__name__}")
    if dropout_p != 0:
        raise NotImplementedError("dropout_p != 0 is not supported: fastattn "
                                  "is an inference library")
    L, E = q.shape[-2:]
    S, Ek = k.shape[-2:]
    if Ek != E:
        raise ValueError(f"query and key embedding sizes differ: query "
                         f"{q.shape}, key {k.shape}")
    Ev = None
    if v is not None:
        Sv, Ev = v.shape[-2:]
        if Sv != S:
            raise ValueError(f"key and value lengths differ: key {k.shape}, "
                             f"value {v.shape}")
        _check_size("value size Ev", Ev)
    if E == 0:
        raise ValueError(f"query/key embedding size must be >= 1, got shapes "
                         f"query {q.shape}, key {k.shape}")
    _check_size("embedding size E", E)
    if not isinstance(enable_gqa, (bool, np.bool_)):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    vv = v if v is not None else k
    qb, kb, vb = q.shape[:-2], k.shape[:-2], vv.shape[:-2]
    desc = f"query {q.shape}, key {k.shape}" + (f", value {v.shape}" if v is not None else "")
    if enable_gqa:
        if min(len(qb), len(kb), len(vb)) < 1:
            raise ValueError(f"enable_gqa needs a head axis (-3) on every input; got {desc}")
        Hq, Hk, Hv = qb[-1], kb[-1], vb[-1]
        if Hk != Hv:
            raise ValueError(f"key and value head counts differ: {desc}")
        if Hk == 0 or Hq % Hk:
            raise ValueError(f"enable_gqa: query heads ({Hq}) must be a "
                             f"multiple of key/value heads ({Hk}); {desc}")
        prefix = (qb[:-1] if qb[:-1] == kb[:-1] == vb[:-1] else
                  _broadcast([("query", qb[:-1]), ("key", kb[:-1]),
                              ("value", vb[:-1])], "batch dimensions"))
        Hout, Hkv = Hq, Hk
    else:
        try:
            full = qb if qb == kb == vb else tuple(np.broadcast_shapes(qb, kb, vb))
        except ValueError:
            _too_large([qb, kb, vb], f"the batch dimensions ({desc})")
            hint = ""
            if min(len(qb), len(kb), len(vb)) >= 1 and len({qb[-1], kb[-1], vb[-1]}) > 1:
                hint = " (head counts differ: pass enable_gqa=True for grouped-query attention)"
            raise ValueError(f"batch dimensions {qb}, {kb}, {vb} do not broadcast "
                             f"({desc}){hint}") from None
        if full:
            prefix, Hout = full[:-1], full[-1]
            # batch dims align on the right: the head axis is each one's last
            Hk = kb[-1] if kb else 1
            Hv = vb[-1] if vb else 1
            # K/V broadcast over heads (MQA by broadcasting): group the heads
            Hkv = Hk if (Hk == Hv and Hk >= 1 and Hout % Hk == 0) else Hout
        else:
            prefix, Hout, Hkv = (), 1, 1
    p.batch_out = tuple(prefix) + ((Hout,) if (enable_gqa or qb or kb or vb) else ())
    p.scale = _check_scale(scale, E)
    p.left, p.right, p.off = _window_bounds(is_causal, causal_alignment, window, L, S)
    p.slopes = _check_slopes(alibi_slopes, Hout)
    p.mask = None if attn_mask is None else _check_mask(attn_mask, p.dtype, p.batch_out, L, S)
    p.q, p.k, p.v = q, k, v
    p.L, p.S, p.E, p.Ev = L, S, E, Ev
    p.prefix, p.Hout, p.Hkv = tuple(prefix), Hout, Hkv
    return p


def _dense_call(p, q, k, v, out, S, slopes, nthreads):
    """The flash kernel's call for a checked :func:`_plan` ``p`` over its
    (readable) ``q``, ``k``, ``v`` and ``out``, ``S`` keys: what
    :func:`scaled_dot_product_attention` runs and an :class:`AttentionPlan`
    keeps (it then updates ``S`` and the thread count per call)."""
    nb = math.prod(p.prefix)
    bshape_q = p.prefix + (p.Hout,)
    bshape_kv = p.prefix + (p.Hkv,)
    if not p.batch_out:   # plain (L, E) inputs
        bshape_q = bshape_kv = (1,)
    bf16 = _is_bf16(p.dtype)
    kq, kk, kv = (_u16(q), _u16(k), _u16(v)) if bf16 else (q, k, v)
    return _k.FlashCall(
        q=kq, qoff=_offsets(q, bshape_q), qs=_row_stride(q),
        k=kk, koff=_offsets(k, bshape_kv), ks=_row_stride(k),
        v=kv, voff=_offsets(v, bshape_kv), vs=_row_stride(v),
        out=_u16(out) if _is_bf16(out.dtype) else out,
        ooff=_offsets(out, bshape_q), os=_row_stride(out),
        L=p.L, S=S, D=p.E, Dv=p.Ev, nb=nb, Hq=p.Hout, Hkv=p.Hkv, scale=p.scale,
        left=p.left, right=p.right, off=p.off, slopes=slopes, nthreads=nthreads)


def scaled_dot_product_attention(query, key, value, attn_mask=None,
                                 dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, causal_alignment="top_left",
                                 window=None, alibi_slopes=None, out=None,
                                 out_dtype=None, num_threads=None):
    """Attention ``softmax(scale * query @ key^T + bias) @ value``, fused.

    Same semantics as ``torch.nn.functional.scaled_dot_product_attention``
    on NumPy arrays, computed by a tiled online-softmax kernel that never
    materialises the ``(L, S)`` score matrix.

    Parameters
    ----------
    query : ndarray, shape (..., L, E)
    key : ndarray, shape (..., S, E)
    value : ndarray, shape (..., S, Ev)
        float32, float64 or bfloat16 (``ml_dtypes.bfloat16``), all the same
        dtype.  Leading dimensions broadcast against each other; axis -3
        (when present) is the head axis.  bfloat16 is computed in float32
        (scores, softmax statistics, accumulators) from the bf16 values.
    attn_mask : ndarray, optional
        Broadcastable to ``(..., L, S)``; never expanded in memory.  Boolean:
        True means the key takes part.  Float (the query's dtype; float32 for
        bfloat16 inputs): added to the scaled scores (``-inf`` hides a key).
    dropout_p : float
        Must be 0: fastattn is an inference library (``NotImplementedError``
        otherwise).
    is_causal : bool
        Query i sees keys ``j <= i`` (top-left alignment, PyTorch's) or
        ``j <= i + S - L`` with ``causal_alignment="bottom_right"`` (what
        decoding with a KV cache needs).  Unlike PyTorch it may be combined
        with ``attn_mask``: both apply.
    scale : float, optional
        Defaults to ``1 / sqrt(E)``; must be finite.
    enable_gqa : bool
        Let key/value have fewer heads (axis -3) than query; query head ``h``
        uses kv head ``h // (Hq // Hkv)``.  K and V are not copied.
    causal_alignment : {"top_left", "bottom_right"}
        Alignment of ``is_causal`` and ``window`` when ``L != S``.
    window : (left, right), optional
        Sliding-window (local) attention: query i sees keys
        ``i' - left <= j <= i' + right`` with ``i'`` the aligned position
        (``i`` or ``i + S - L``); ``None`` or ``-1`` leaves a side unbounded.
        Tiles outside the window are skipped.
    alibi_slopes : array_like, shape (H,), optional
        ALiBi: adds ``-slope[h] * |i' - j|`` to head h's scores inside the
        kernel (no bias tensor is built).  H is the size of the head axis.
    out : ndarray, optional
        Written in place and returned; shape ``(..., L, Ev)``, the output
        dtype, writeable, contiguous last axis, not overlapping any input.
    out_dtype : dtype or {"float32", "bfloat16"}, optional
        The output's dtype: the inputs' dtype (the default), or for
        bfloat16 inputs float32 (the float32 result, unrounded) or bfloat16
        (it rounded once to nearest even, the default).  With ``out=`` of
        float32 and bfloat16 inputs, float32 is implied.
    num_threads : int, optional
        Threads for this call (default: ``fastattn.get_num_threads()``).

    Returns
    -------
    ndarray, shape (..., L, Ev)
        A query row that sees no key (fully masked) is all zeros, never NaN.

    Notes
    -----
    The checks of a call without a mask, window, ALiBi or ``out_dtype`` are
    remembered per layout (the operands' shapes, strides and dtypes, ``out``'s
    layout and the options; at most 256 layouts, holding no operand): a later
    call of the same layout skips them, except those on ``out``'s
    writeability and overlap and on ``num_threads``, which run every time.
    The result is the same bits either way.
    """
    sig = None
    if attn_mask is None and window is None and alibi_slopes is None and out_dtype is None:
        sig = _sdpa_sig(query, key, value, dropout_p, is_causal, scale, enable_gqa,
                        causal_alignment, out)
    done = _SDPA_MEMO.run(sig, query, key, value, out, num_threads)
    if done is not None:
        return done
    p = _plan(query, key, value, attn_mask, dropout_p, is_causal, scale,
              enable_gqa, causal_alignment, window, alibi_slopes, bf16=True)
    L, S, E, Ev, Hout, Hkv = p.L, p.S, p.E, p.Ev, p.Hout, p.Hkv
    out_shape = p.batch_out + (L, Ev)
    odt = _out_dtype(out_dtype, p.dtype, out)
    if out is None:
        out = np.empty(out_shape, dtype=odt)
    else:
        _check_out(out, out_shape, odt, [("query", p.q), ("key", p.k),
                                         ("value", p.v), ("attn_mask", p.mask)])
    _check_threads(num_threads)
    if out.size == 0:
        return out
    if S == 0:
        out[...] = 0
        return out

    q, k, v = _readable(p.q), _readable(p.k), _readable(p.v)
    nb = math.prod(p.prefix)
    flops = 4 * nb * Hout * L * S * max(E, Ev)
    kv_bytes = nb * Hkv * S * (E + Ev) * q.itemsize
    call = _dense_call(p, q, k, v, out, S, p.slopes,
                       _attn_threads(num_threads, flops, kv_bytes))
    if p.mask is not None:
        _mask_tiles(call, p.mask, p.batch_out or (1,), num_threads)
    bf16 = _is_bf16(p.dtype)
    if sig is not None and q is p.q and k is p.k and v is p.v:
        _SDPA_MEMO.put(sig, call, out_shape, odt, flops, kv_bytes, bf16)
    if bf16:
        _k.flash_bf16(call)
    else:
        _k.flash(call)
    return out


# Calls of the same shapes, strides and options (the common case: a model's
# layers, a server's requests) are validated once.  A memo's key holds
# everything the validation reads except the arrays' addresses and the out=
# array's writeability, which are checked again at every call (an out= that
# may overlap an input takes the full path, which says so); a call whose
# operands would need the readable copy, or with a mask, a window, ALiBi or
# out_dtype, is never memoised.  The entries hold no operand: the kernel call
# template is rebound to each call's arrays (FlashCall.rebind).
_NO_ARRAY = np.empty(0, dtype=np.float32)


class _CallMemo:
    """Kernel call templates by call layout, at most ``maxsize`` (then
    emptied).  An entry remembers the kernel module that built it (the tests
    switch builds) and the call's flops and K/V bytes (for the thread
    choice, made at every call)."""
    __slots__ = ("entries", "maxsize")

    def __init__(self, maxsize=256):
        self.entries = {}
        self.maxsize = maxsize

    def __len__(self):
        return len(self.entries)

    def clear(self):
        self.entries.clear()

    def put(self, key, call, out_shape, odt, flops, kv_bytes, bf16):
        if len(self.entries) >= self.maxsize:
            self.entries.clear()
        tmpl = call.rebind(_NO_ARRAY, _NO_ARRAY, _NO_ARRAY, _NO_ARRAY, 0)
        # varlen offsets may be the caller's own arrays: the entry keeps a
        # private, read-only copy of what its key says they held
        for name in ("cu_q", "cu_k"):
            cu = getattr(tmpl, name)
            if cu is not None:
                cu = cu.copy()
                cu.setflags(write=False)
                setattr(tmpl, name, cu)
        self.entries[key] = (_k, tmpl, out_shape, odt, flops, kv_bytes, bf16, _is_bf16(odt))

    def run(self, key, q, k, v, out, num_threads):
        """The call through the memo: ``out`` (allocated when None), or None
        when ``key`` is None or not memoised, or ``out`` needs the full
        checks."""
        if key is None:
            return None
        ent = self.entries.get(key)
        if ent is None or ent[0] is not _k:
            return None
        _, tmpl, out_shape, odt, flops, kv_bytes, bf16, out16 = ent
        if out is None:
            out = np.empty(out_shape, dtype=odt)
        elif (not out.flags.writeable or np.may_share_memory(out, q)
              or np.may_share_memory(out, k) or np.may_share_memory(out, v)):
            return None
        nt = _attn_threads(num_threads, flops, kv_bytes)
        if bf16:
            _k.flash_bf16(tmpl.rebind(_u16(q), _u16(k), _u16(v), _u16(out) if out16 else out, nt))
        else:
            _k.flash(tmpl.rebind(q, k, v, out, nt))
        return out


_SDPA_MEMO = _CallMemo()
_VARLEN_MEMO = _CallMemo()
_VARLEN_MEMO_MAX_SEQS = 4096     # longer offset arrays are not keyed


def _plain(is_causal, scale, causal_alignment, out, *arrays):
    """``out``'s layout key (``()`` for None), or None when an argument is
    not of the plain kinds the memos take."""
    if not (type(is_causal) is bool and type(causal_alignment) is str
            and (scale is None or type(scale) is float)
            and all(type(a) is np.ndarray for a in arrays)):
        return None
    if out is None:
        return ()
    if type(out) is np.ndarray:
        return (out.shape, out.strides, out.dtype)
    return None


def _layout(x):
    return (x.shape, x.strides, x.dtype)


def _sdpa_sig(query, key, value, dropout_p, is_causal, scale, enable_gqa,
              causal_alignment, out):
    """The memo key of a scaled_dot_product_attention call, or None when its
    arguments are not of the plain kinds the memo takes."""
    o = _plain(is_causal, scale, causal_alignment, out, query, key, value)
    if (o is None or type(enable_gqa) is not bool
            or type(dropout_p) not in (float, int) or dropout_p != 0):
        return None
    return (_layout(query), _layout(key), _layout(value), is_causal, scale, enable_gqa,
            causal_alignment, o)


def _varlen_sig(q, k, v, cu_q, cu_k, is_causal, scale, causal_alignment, out):
    """The memo key of a varlen_attention call (the offsets by value), or
    None."""
    o = _plain(is_causal, scale, causal_alignment, out, q, k, v, cu_q)
    if o is None or cu_q.size > _VARLEN_MEMO_MAX_SEQS:
        return None
    if cu_k is None:
        ck = None
    elif type(cu_k) is np.ndarray and cu_k.size <= _VARLEN_MEMO_MAX_SEQS:
        ck = (cu_k.dtype, cu_k.shape, cu_k.tobytes())
    else:
        return None
    return (_layout(q), _layout(k), _layout(v), cu_q.dtype, cu_q.shape, cu_q.tobytes(), ck,
            is_causal, scale, causal_alignment, o)


# ---------------------------------------------------------------------------
# a plan: one validation for many calls over a growing key buffer (decoding)
# ---------------------------------------------------------------------------

class AttentionPlan:
    """:func:`scaled_dot_product_attention` over the first ``length`` keys of
    fixed query, key/value and output buffers, validated once (see
    :func:`attention_plan`).  ``plan(length, num_threads=None)`` computes
    ``scaled_dot_product_attention(query, key[..., :length, :],
    value[..., :length, :], ...)`` into the plan's ``out`` and returns it,
    bit for bit the public call's result."""
    __slots__ = ("out", "capacity", "L", "_call", "_entry", "_k", "_v",
                 "_causal", "_align", "_window", "_num_threads", "_fl", "_by", "_kst", "_vst")

    def __call__(self, length, num_threads=None):
        if type(length) is not int:
            if not isinstance(length, numbers.Integral) or isinstance(length, (bool, np.bool_)):
                raise TypeError(f"length must be an int, got {type(length).__name__}")
            length = int(length)
        if not 0 <= length <= self.capacity:
            raise ValueError(f"length must be in [0, {self.capacity}] (the key buffer's "
                             f"length), got {length}")
        if num_threads is None:
            num_threads = self._num_threads
        elif type(num_threads) is not int or num_threads < 1:
            _resolve_threads(num_threads)       # the ValueError/TypeError naming it
        out = self.out
        call = self._call
        if call is None:                         # an empty output
            return out
        if length == 0:
            out[...] = 0
            return out
        L = self.L
        if self._window is None:
            left, right = None, (0 if self._causal else None)
            off = length - L if self._align == "bottom_right" else 0
        else:
            left, right, off = _window_bounds(self._causal, self._align, self._window,
                                              L, length)
        call.S = length
        call.left, call.right, call.off = left, right, off
        call.ks = self._kst if length > 1 else 0
        call.vs = self._vst if length > 1 else 0
        call.nthreads = _attn_threads(num_threads, self._fl * length, self._by * length)
        self._entry(call)
        return out


def attention_plan(query, key, value, *, is_causal=False, scale=None, enable_gqa=False,
                   causal_alignment="top_left", window=None, out=None, out_dtype=None,
                   num_threads=None):
    """Validate a :func:`scaled_dot_product_attention` call once for many
    calls that differ only in how many keys they read: decoding, where each
    step attends to one more row of a preallocated KV cache.

    ``key``/``value`` are the whole buffers ``(..., capacity, E)`` (e.g. the
    cache); the returned :class:`AttentionPlan` ``plan(length)`` attends to
    their first ``length`` rows, writing ``out`` (allocated here when not
    given) in place.  Every argument is checked here as the public call
    checks it (with ``capacity`` keys); a call then checks only ``length``
    (an int in ``[0, capacity]``) and ``num_threads``.  The buffers are read
    in place at every call, so they must not need the public call's one
    copy: a non-contiguous last axis is a ValueError here.  No mask and no
    ALiBi (use the public call for those).
    """
    p = _plan(query, key, value, None, 0.0, is_causal, scale, enable_gqa,
              causal_alignment, window, None, bf16=True)
    L, S, E, Ev, Hout, Hkv = p.L, p.S, p.E, p.Ev, p.Hout, p.Hkv
    for name, x in (("query", p.q), ("key", p.k), ("value", p.v)):
        if _readable(x) is not x:
            raise ValueError(f"attention_plan: {name} (strides {x.strides}) must have a "
                             f"contiguous last axis and whole-element strides: the plan "
                             f"reads it in place at every call")
    out_shape = p.batch_out + (L, Ev)
    odt = _out_dtype(out_dtype, p.dtype, out)
    if out is None:
        out = np.empty(out_shape, dtype=odt)
    else:
        _check_out(out, out_shape, odt, [("query", p.q), ("key", p.k), ("value", p.v)])
    _check_threads(num_threads)
    plan = AttentionPlan()
    plan.out, plan.capacity, plan.L = out, S, L
    plan._causal, plan._align = bool(is_causal), causal_alignment
    plan._window = window
    plan._num_threads = num_threads
    plan._call = None
    if out.size == 0:
        return plan
    q, k, v = p.q, p.k, p.v
    nb = math.prod(p.prefix)
    plan._fl = 4 * nb * Hout * L * max(E, Ev)       # flops per key
    plan._by = nb * Hkv * (E + Ev) * q.itemsize     # K and V bytes per key
    plan._kst = k.strides[-2] // k.itemsize
    plan._vst = v.strides[-2] // v.itemsize
    plan._call = _dense_call(p, q, k, v, out, S, None, 1)
    plan._entry = _k.flash_bf16 if _is_bf16(p.dtype) else _k.flash
    return plan


# ---------------------------------------------------------------------------
# variable-length (packed) batches
# ---------------------------------------------------------------------------

def _check_cu(cu, name, total, what):
    """Validated cumulative offsets as a contiguous int64 array."""
    if isinstance(cu, np.ndarray):
        c = cu
    else:
        try:
            c = np.asarray(cu)
        except Exception as e:
            raise TypeError(f"{name} could not be converted to an array: {e}") from None
    if c.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int32 or int64 "
                        f"cumulative offsets), got dtype {c.dtype}")
    if c.ndim != 1 or c.size < 1:
        raise ValueError(f"{name} must be 1-D with at least one entry "
                         f"[0, len0, len0+len1, ...], got shape {c.shape}")
    c = np.ascontiguousarray(c, dtype=np.int64) if c.dtype.kind == "i" else c
    if c.dtype.kind == "u":
        if c.size and int(c.max()) > 2**62:
            raise ValueError(f"{name} holds offsets beyond {what} ({total})")
        c = np.ascontiguousarray(c, dtype=np.int64)
    if c[0] != 0:
        raise ValueError(f"{name} must start at 0, got {int(c[0])}")
    if c.size > 1 and np.any(c[1:] < c[:-1]):
        i = int(np.argmax(c[1:] < c[:-1]))
        raise ValueError(f"{name} must be non-decreasing, got {int(c[i])} then "
                         f"{int(c[i + 1])} at positions {i}, {i + 1}")
    if c[-1] != total:
        raise ValueError(f"{name} must end at {what} ({total}), got {int(c[-1])}")
    return c


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k=None, *,
                     is_causal=False, scale=None, window=None,
                     alibi_slopes=None, causal_alignment="top_left", out=None,
                     out_dtype=None, num_threads=None):
    """Attention over a packed batch of variable-length sequences, fused.

    Like FlashAttention's varlen API: the sequences of a batch are packed
    along the token axis with no padding, and sequence ``i`` takes query
    rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]`` and key/value rows
    ``cu_seqlens_k[i]:cu_seqlens_k[i+1]``; it attends only to its own keys.
    The work is one kernel call whose tasks are (sequence, kv head, query
    block), longest sequences first.

    A sequence's result is bit-identical whatever else is in the batch, in
    any order, at any thread count: each sequence's tile layout and chunking
    depend only on its own lengths.

    Parameters
    ----------
    q : ndarray, shape (total_q, Hq, D)
    k : ndarray, shape (total_k, Hkv, D)
    v : ndarray, shape (total_k, Hkv, Dv)
        float32, float64 or bfloat16, all the same dtype (bfloat16 is
        computed in float32, as in :func:`scaled_dot_product_attention`;
        a sequence's bits still never depend on the rest of the batch).
        Grouped-query attention when
        ``Hkv < Hq`` (``Hq`` a multiple of ``Hkv``; query head ``h`` uses kv
        head ``h // (Hq // Hkv)``).  Views with a contiguous last axis are read
        in place, e.g. ``qkv[:, 0]`` of a fused ``(total, 3, H, D)``
        projection.
    cu_seqlens_q : array_like of int, shape (n + 1,)
        Cumulative query offsets ``[0, len0, len0 + len1, ..., total_q]``
        (int32 or int64, non-decreasing; empty sequences are allowed).
    cu_seqlens_k : array_like of int, shape (n + 1,), optional
        Cumulative key/value offsets; defaults to ``cu_seqlens_q`` (then
        ``total_k`` must equal ``total_q``).
    is_causal : bool
        Within each sequence, query i sees keys ``j <= i`` (top-left) or
        ``j <= i + S_i - L_i`` with ``causal_alignment="bottom_right"``.
    scale : float, optional
        Defaults to ``1 / sqrt(D)``; must be finite.
    window : (left, right), optional
        Sliding-window attention within each sequence, as in
        :func:`scaled_dot_product_attention`.
    alibi_slopes : array_like, shape (Hq,), optional
        ALiBi slopes per query head, distances within each sequence.
    causal_alignment : {"top_left", "bottom_right"}
        Per-sequence alignment of ``is_causal`` and ``window`` when a
        sequence has ``L_i != S_i``.
    out : ndarray, optional
        Written in place and returned; shape ``(total_q, Hq, Dv)``, the
        output dtype, writeable, contiguous last axis, not overlapping any
        input.
    out_dtype : dtype or {"float32", "bfloat16"}, optional
        As in :func:`scaled_dot_product_attention`: for bfloat16 inputs,
        float32 or bfloat16 (the default).
    num_threads : int, optional
        Threads for this call (default: ``fastattn.get_num_threads()``).

    Returns
    -------
    ndarray, shape (total_q, Hq, Dv)
        A query row that sees no key (fully masked, or a sequence with no
        keys) is all zeros.

    Notes
    -----
    As in :func:`scaled_dot_product_attention`, the checks of a call without
    a window, ALiBi or ``out_dtype`` are remembered per layout, here with the
    offsets' values (up to 4096 sequences; the memo keeps its own copy, so
    refilling an offsets array is safe): a later call with the same layout and
    offsets (the next layer of a model) skips them, except those on ``out``
    and ``num_threads``.  The result is the same bits either way.

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> lens = [3, 5]
    >>> cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 2, 4), dtype=np.float32)
    >>> o = fastattn.varlen_attention(x[:, 0], x[:, 1], x[:, 2], cu, is_causal=True)
    >>> o.shape
    (8, 2, 4)
    """
    sig = None
    if window is None and alibi_slopes is None and out_dtype is None:
        sig = _varlen_sig(q, k, v, cu_seqlens_q, cu_seqlens_k, is_causal, scale,
                          causal_alignment, out)
    done = _VARLEN_MEMO.run(sig, q, k, v, out, num_threads)
    if done is not None:
        return done
    out, call, entry = _varlen_prepare(q, k, v, cu_seqlens_q, cu_seqlens_k, is_causal,
                                       scale, window, alibi_slopes, causal_alignment,
                                       out, out_dtype, num_threads)
    if call is not None:
        if sig is not None and not (_needs_copy(q) or _needs_copy(k) or _needs_copy(v)):
            _VARLEN_MEMO.put(sig, call, out.shape, out.dtype,
                             *_varlen_cost(call.cu_q, call.cu_k, call.Hq, call.Hkv, call.D,
                                           call.Dv, q.itemsize), _is_bf16(q.dtype))
        entry(call)
    return out


def _varlen_prepare(q, k, v, cu_seqlens_q, cu_seqlens_k, is_causal, scale, window,
                    alibi_slopes, causal_alignment, out, out_dtype, num_threads):
    """Everything :func:`varlen_attention` does before the kernel runs: the
    checks, the output, and the kernel call with its entry point, returned
    as ``(out, call, entry)`` (``call`` None for an empty output).  Running
    ``entry(call)`` again recomputes the same result from the arrays' current
    contents (a model's layers reuse one call over the same scratch)."""
    q = _as_float_array(q, "q", True)
    k = _as_float_array(k, "k", True)
    v = _as_float_array(v, "v", True)
    dtype = _same_dtype([("q", q), ("k", k), ("v", v)], True)
    for name, x, dims in (("q", q, "(total_q, Hq, D)"), ("k", k, "(total_k, Hkv, D)"),
                          ("v", v, "(total_k, Hkv, Dv)")):
        if x.ndim != 3:
            raise ValueError(f"{name} must have shape {dims}, got shape {x.shape}")
    total_q, Hq, D = q.shape
    total_k, Hkv, Dk = k.shape
    desc = f"q {q.shape}, k {k.shape}, v {v.shape}"
    if v.shape[:2] != (total_k, Hkv):
        raise ValueError(f"k and v must have the same tokens and heads: {desc}")
    Dv = v.shape[2]
    if Dk != D:
        raise ValueError(f"q and k feature sizes differ: {desc}")
    if D == 0:
        raise ValueError(f"q/k feature size must be >= 1: {desc}")
    _check_size("feature size D", D)
    _check_size("value size Dv", Dv)
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value "
                         f"heads ({Hkv}): {desc}")
    cu_q = _check_cu(cu_seqlens_q, "cu_seqlens_q", total_q, "total_q = q.shape[0]")
    if cu_seqlens_k is None:
        if total_k != total_q:
            raise ValueError(f"cu_seqlens_k is required when k has a different "
                             f"number of tokens than q: {desc}")
        cu_k = cu_q
    else:
        cu_k = _check_cu(cu_seqlens_k, "cu_seqlens_k", total_k, "total_k = k.shape[0]")
        if cu_k.size != cu_q.size:
            raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same "
                             f"number of sequences, got {cu_q.size - 1} and "
                             f"{cu_k.size - 1}")
    scale = _check_scale(scale, D)
    left, right, _ = _window_bounds(is_causal, causal_alignment, window,
                                    total_q, total_k)
    slopes = _check_slopes(alibi_slopes, Hq)
    shape = (total_q, Hq, Dv)
    odt = _out_dtype(out_dtype, dtype, out)
    if out is None:
        out = np.empty(shape, dtype=odt)
    else:
        _check_out(out, shape, odt, [("q", q), ("k", k), ("v", v)])
    _check_threads(num_threads)
    if out.size == 0:
        return out, None, None
    q, k, v = _readable(q), _readable(k), _readable(v)
    nseq = cu_q.size - 1
    it, ito = q.itemsize, out.itemsize
    flops, kv_bytes = _varlen_cost(cu_q, cu_k, Hq, Hkv, D, Dv, it)
    bf16 = _is_bf16(dtype)
    call = _k.FlashCall(
        q=_u16(q) if bf16 else q, qoff=np.arange(Hq, dtype=np.int64) * (q.strides[1] // it),
        qs=q.strides[0] // it,
        k=_u16(k) if bf16 else k, koff=np.arange(Hkv, dtype=np.int64) * (k.strides[1] // it),
        ks=k.strides[0] // it,
        v=_u16(v) if bf16 else v, voff=np.arange(Hkv, dtype=np.int64) * (v.strides[1] // it),
        vs=v.strides[0] // it,
        out=_u16(out) if _is_bf16(out.dtype) else out,
        ooff=np.arange(Hq, dtype=np.int64) * (out.strides[1] // ito),
        os=out.strides[0] // ito, D=D, Dv=Dv, nb=nseq, Hq=Hq, Hkv=Hkv, scale=scale,
        left=left, right=right, slopes=slopes, cu_q=cu_q, cu_k=cu_k,
        bottom_right=causal_alignment == "bottom_right",
        nthreads=_attn_threads(num_threads, flops, kv_bytes))
    return out, call, (_k.flash_bf16 if bf16 else _k.flash)


def _varlen_cost(cu_q, cu_k, Hq, Hkv, D, Dv, itemsize):
    """``(flops, K/V bytes)`` of a packed batch, for the thread choice."""
    lq, lk = np.diff(cu_q), np.diff(cu_k)
    return (4 * Hq * int(np.dot(lq, lk)) * max(D, Dv),
            int(cu_k[-1]) * Hkv * (D + Dv) * itemsize)


# ---------------------------------------------------------------------------
# materialised path
# ---------------------------------------------------------------------------

def attention_scores(q, k, scale=None, *, out=None, num_threads=None):
    """``scale * q @ k^T`` over broadcast leading dimensions.

    Parameters
    ----------
    q : ndarray, shape (..., L, E)
    k : ndarray, shape (..., S, E)
    scale : float, optional
        Defaults to ``1 / sqrt(E)``; must be finite.
    out : ndarray, optional, shape (..., L, S)

    Returns
    -------
    ndarray, shape (..., L, S)
    """
    q = _as_float_array(q, "q")
    k = _as_float_array(k, "k")
    dtype = _same_dtype([("q", q), ("k", k)])
    for name, x in (("q", q), ("k", k)):
        if x.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions, got shape {x.shape}")
    L, E = q.shape[-2:]
    S, Ek = k.shape[-2:]
    if E != Ek:
        raise ValueError(f"q and k embedding sizes differ: q {q.shape}, k {k.shape}")
    if E == 0:
        raise ValueError(f"embedding size must be >= 1, got q {q.shape}, k {k.shape}")
    _check_size("embedding size E", E)
    batch = _broadcast([("q", q.shape[:-2]), ("k", k.shape[:-2])], "batch dimensions")
    scale = _check_scale(scale, E)
    shape = batch + (L, S)
    if out is None:
        out = np.empty(shape, dtype=dtype)
    else:
        _check_out(out, shape, dtype, [("q", q), ("k", k)])
    _check_threads(num_threads)
    if out.size == 0:
        return out
    q, k = _readable(q), _readable(k)
    bs = batch if batch else (1,)
    _k.scores(_k.ScoresCall(
        q=q, qoff=_offsets(q, bs), qs=_row_stride(q),
        k=k, koff=_offsets(k, bs), ks=_row_stride(k),
        out=out, ooff=_offsets(out, bs), os=_row_stride(out),
        L=L, S=S, D=E, scale=scale, nthreads=_n_threads(num_threads, 2 * out.size * E)))
    return out


def softmax(x, axis=-1, *, out=None, num_threads=None):
    """Numerically stable softmax along ``axis`` (row max subtracted).

    Matches ``scipy.special.softmax``; rows of ``-inf`` (fully masked) give
    zeros instead of NaN; a NaN in a row makes the row NaN.

    Parameters
    ----------
    x : ndarray, float32 or float64, any strides (never copied)
    axis : int
    out : ndarray, optional
        Same shape and dtype; may be ``x`` itself (in place), must not
        otherwise overlap it.
    """
    x = _as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a scalar")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
    axis = axis % x.ndim
    if out is None:
        out = np.empty(x.shape, dtype=x.dtype)
    elif out is x:
        if not x.flags.writeable:
            raise ValueError("out (= x) is read-only")
    else:
        _check_out(out, x.shape, x.dtype, [("x", x)], contiguous_last=False,
                   overlap_hint="pass out=x for in place, or a separate array")
    _check_threads(num_threads)
    if x.size == 0:
        return out
    if any(s % x.itemsize for s in x.strides):
        raise ValueError("x has strides that are not whole elements")
    xr = np.moveaxis(x, axis, -1)
    orr = np.moveaxis(out, axis, -1)
    rows = xr.shape[:-1]
    xoff = _offsets(xr[..., None], rows) if rows else np.zeros(1, np.int64)
    ooff = _offsets(orr[..., None], rows) if rows else np.zeros(1, np.int64)
    C = x.shape[axis]
    _k.softmax(_k.SoftmaxCall(
        x=x, xoff=xoff, xs=xr.strides[-1] // x.itemsize,
        out=out, ooff=ooff, os=orr.strides[-1] // out.itemsize,
        C=C, nthreads=_n_threads(num_threads, 16 * x.size)))
    return out


def weighted_sum(p, v, *, out=None, num_threads=None):
    """``p @ v`` over broadcast leading dimensions (attention weights times
    values).

    Parameters
    ----------
    p : ndarray, shape (..., L, S)
    v : ndarray, shape (..., S, Ev)
    out : ndarray, optional, shape (..., L, Ev)
    """
    p = _as_float_array(p, "p")
    v = _as_float_array(v, "v")
    dtype = _same_dtype([("p", p), ("v", v)])
    for name, x in (("p", p), ("v", v)):
        if x.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions, got shape {x.shape}")
    L, S = p.shape[-2:]
    Sv, Ev = v.shape[-2:]
    if S != Sv:
        raise ValueError(f"p has {S} columns but v has {Sv} rows: p {p.shape}, v {v.shape}")
    _check_size("value size Ev", Ev)
    batch = _broadcast([("p", p.shape[:-2]), ("v", v.shape[:-2])], "batch dimensions")
    shape = batch + (L, Ev)
    if out is None:
        out = np.empty(shape, dtype=dtype)
    else:
        _check_out(out, shape, dtype, [("p", p), ("v", v)])
    _check_threads(num_threads)
    if out.size == 0:
        return out
    if S == 0:
        out[...] = 0
        return out
    p, v = _readable(p), _readable(v)
    bs = batch if batch else (1,)
    _k.weighted_sum(_k.WeightedSumCall(
        p=p, poff=_offsets(p, bs), ps=_row_stride(p),
        v=v, voff=_offsets(v, bs), vs=_row_stride(v),
        out=out, ooff=_offsets(out, bs), os=_row_stride(out),
        L=L, S=S, Dv=Ev, nthreads=_n_threads(num_threads, 2 * out.size * S)))
    return out


def attention_weights(query, key, attn_mask=None, is_causal=False, scale=None,
                      enable_gqa=False, *, causal_alignment="top_left",
                      window=None, alibi_slopes=None, num_threads=None):
    """The attention probabilities ``softmax(scale * q @ k^T + bias)``,
    materialised, shape ``(..., L, S)`` (what ``need_weights`` returns).

    Same arguments and masking rules as :func:`scaled_dot_product_attention`;
    fully masked rows are zeros.  Uses O(L*S) memory per head by design.
    """
    p = _plan(query, key, None, attn_mask, 0.0, is_causal, scale, enable_gqa,
              causal_alignment, window, alibi_slopes)
    q, k, L, S, E = p.q, p.k, p.L, p.S, p.E
    if enable_gqa and p.Hout != p.Hkv:
        Hq, Hk = p.Hout, p.Hkv
        G = Hq // Hk
        # (..., Hkv, G*L, E) against (..., Hkv, S, E): K is not repeated
        qg = np.reshape(q, q.shape[:-3] + (Hk, G * L, E))
        sc = attention_scores(qg, k, p.scale, num_threads=num_threads)
        sc = sc.reshape(sc.shape[:-3] + (Hq, L, S))
    else:
        sc = attention_scores(q, k, p.scale, num_threads=num_threads)
    if sc.shape[:-2] != p.batch_out:   # a head-less key/query pair
        sc = np.ascontiguousarray(np.broadcast_to(sc, p.batch_out + (L, S)))
    if p.left is not None or p.right is not None:
        i = np.arange(L)[:, None] + p.off
        j = np.arange(S)[None, :]
        vis = np.ones((L, S), dtype=bool)
        if p.left is not None:
            vis &= j >= i - p.left
        if p.right is not None:
            vis &= j <= i + p.right
        np.copyto(sc, -np.inf, where=~vis)
    if p.slopes is not None:
        dist = np.abs(np.arange(L)[:, None] + p.off - np.arange(S)[None, :])
        bias = p.slopes[:, None, None] * dist if sc.ndim >= 3 else p.slopes[0] * dist
        sc -= bias.astype(p.dtype)
    if p.mask is not None:
        m = p.mask       # _check_mask gave it exactly sc.ndim dimensions
        if m.dtype == np.bool_:
            np.copyto(sc, -np.inf, where=~m)
        else:   # -inf hides the key outright, other values are added
            with np.errstate(invalid="ignore"):   # +inf + -inf: replaced just below
                sc += m
            np.copyto(sc, -np.inf, where=np.isneginf(m))
    return softmax(sc, axis=-1, out=sc, num_threads=num_threads)
