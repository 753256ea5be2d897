"""Every kernel call of the models, in one place.

The encoders never call a kernel directly: their GEMMs go through
:func:`dense`, their fused row passes through :func:`add_norm` and
:func:`bias_act`, their attention through :func:`attention`.  When a kernel's
calling convention changes, this module is the one place to adapt.

Batch invariance (a token's result never depends on which other tokens are
in the call, nor on the thread count) is a property of the kernels chosen
here:

* :func:`dense` always runs fastattn's tiled GEMM (``kernels.linear``), for
  any number of rows, on weights packed once at load (:func:`pack`) or on
  plain arrays (the same bits either way).  Each output element is one FMA chain over the input
  features in a fixed order (fixed 256-feature slices), whatever the number
  of rows, the tile shapes chosen for them or the thread count.  BLAS is not
  used: its blocking, and so its rounding, can depend on the row count.
* the row kernels (``fastattn.nn._ops``) process each row start to finish on
  one thread, in a fixed order.
* attention runs per sequence (``fastattn.varlen_attention``), never over
  padding.

The callers (the models) have shaped and checked every array already:
float32/float64 C-contiguous rows of one dtype; nothing is re-validated
here.

bfloat16 (``dtype="bfloat16"``)
-------------------------------
:func:`resolve_dtype` turns the models' ``dtype=`` argument into a NumPy
dtype (``ml_dtypes.bfloat16`` for ``"bfloat16"``; ml_dtypes is imported only
then).  A bf16 model keeps the residual stream, the norms and every
accumulation in float32 and stores in bfloat16 exactly what a GEMM reads:

* weights: :func:`pack` (``fastattn.bf16.pack_weight``), once at load;
* GEMM inputs: written as bf16 by the pass that makes them anyway: the
  norm passes (:func:`add_norm`'s ``nb``), the GEMM before (its bias and
  activation fused into its bf16 store, :func:`dense_bf16`), the SwiGLU
  pass (:func:`swiglu`'s ``outb``), the attention (bf16 output);
* attention: :func:`attention`, the same call as in float32 (bf16 q/k/v
  straight out of the fused QKV GEMM, bf16 output for the output
  projection: ``varlen_attention`` follows its inputs' dtype).

``fastattn.bf16.linear`` is batch invariant like the float32 tile (one
accumulation scheme per build for every row count, work split over rows and
output features only), the row kernels process a row alone, and attention
runs per sequence: bf16 encoders keep the bit-identical-in-any-batch
promise.
"""
import numpy as np

import fastattn as _fa
from ..functional import _varlen_prepare
from .._dispatch import kernels as _kern
from ..threads import for_flops, for_stream
from ..nn import _ops as _row
from ..positional import apply_rotary as _rotary

__all__ = ["dense", "dense_plan", "pack", "add_norm", "bias_act", "attention", "attention_plan", "ACTIVATIONS",
           "resolve_dtype", "is_bf16", "bf16", "pack_bf16", "dense_bf16",
           "decoder_attention_bf16"]

#: activation names :func:`dense` / :func:`bias_act` accept
ACTIVATIONS = ("identity", "relu", "gelu", "gelu_tanh", "silu", "quick_gelu")
# the ones the float32 GEMM applies in its store (kernels.LinearCall act codes)
_LIN_ACT = {"gelu": "LIN_GELU", "gelu_tanh": "LIN_GELU_TANH", "silu": "LIN_SILU"}

def pack(w, alloc=None):
    """``w`` (M, K) float32/float64 packed into the GEMM's weight panels
    (``kernels.pack_weight``), for :func:`dense`; anything else (another
    dtype, an already packed weight) is returned as it is.  The packed
    object replaces the array (same memory, plus at most one panel).
    ``alloc``: where the panels go (a ``WeightArena``'s ``empty``)."""
    if isinstance(w, np.ndarray) and w.ndim == 2 and w.dtype in (np.float32, np.float64):
        return _kern.pack_weight(w, alloc=alloc)
    return w


def dense(x, w, b=None, act=None, out=None):
    """``act(x @ w.T + b)`` on fastattn's tiled GEMM, for any row count.

    Parameters
    ----------
    x : ndarray, shape (N, K), contiguous rows
    w : ndarray, shape (M, K), C-contiguous (torch layout), or its
        :func:`pack` (faster: the panels are laid out once, at load)
    b : ndarray, shape (M,), optional
    act : None or one of :data:`ACTIVATIONS`
        ``"relu"`` is fused into the GEMM's store; in float32 ``"gelu"``,
        ``"gelu_tanh"`` and ``"silu"`` too (applied to each output tile
        right after its last store, while it is in L1: no second pass over
        the result); the others run as one fused row pass
        (:func:`bias_act`) over the result.
    out : ndarray, shape (N, M), optional; must not overlap ``x`` or ``w``.
    """
    N = x.shape[0]
    M = w.N if isinstance(w, _kern.PackedWeight) else w.shape[0]
    if out is None:
        out = np.empty((N, M), dtype=x.dtype)
    dense_plan(x, w, act, out)(w, b)
    return out


def dense_plan(x, w, act=None, out=None):
    """``run(w, b)``, doing :func:`dense` ``(x, w, b, act, out=out)`` (or,
    for bf16 ``x``, :func:`dense_bf16`) for any weight of ``w``'s shape and
    kind: the thread count, activation code and kernel call object are
    worked out once.  An encoder's layers all run the same four GEMM shapes
    over the same scratch arrays, so a forward pass builds four plans and
    runs each once per layer; a short query's projection costs more in
    the per-call set-up than in the kernel.  ``out`` is required (rows
    with a contiguous last axis, not overlapping ``x``).  :func:`dense` is
    a plan run once: the same bits."""
    if is_bf16(x.dtype):
        return bf16()._linear_plan(x, w, None if act == "identity" else act, out)
    N, K = x.shape
    packed = isinstance(w, _kern.PackedWeight)
    M = w.N if packed else w.shape[0]
    if N == 0:
        return lambda w, b: None
    code = 0
    if act is None or act == "identity" or act == "relu":
        fused = True
    elif x.dtype == np.float32 and act in _LIN_ACT:
        fused, code = True, getattr(_kern, _LIN_ACT[act])
    else:
        fused = False
    # fewer threads for small calls (the policy in fastattn.threads), but
    # never fewer than streaming the weight needs: a call of few rows (a
    # short query) is bound by reading W, not by its flops.  The results do
    # not depend on the thread count (the GEMM splits rows and output
    # features, never K)
    nt = max(for_flops(None, 2 * N * M * K), for_stream(None, M * K * x.itemsize))
    it = x.itemsize
    relu = act == "relu"
    if packed:
        call = _kern.LinearCall(x=x, xs=x.strides[0] // it, wp=w, relu=relu, out=out,
                                ys=out.strides[0] // it, nthreads=nt, act=code)
    else:
        call = _kern.LinearCall(x=x, xs=x.strides[0] // it, w=w, ws=w.strides[0] // it,
                                relu=relu, out=out, ys=out.strides[0] // it, nthreads=nt,
                                act=code)
    lin = _kern.linear

    def run(w, b):
        if packed:
            call.wp = w
        else:
            call.w = w
            call.ws = w.strides[0] // it
        call.bias = b if fused else None
        lin(call)
        if not fused:
            bias_act(out, b, act, out=out)
    return run


def add_norm(a, a_bias, r, w, b, eps, n, nb=None, nthreads=None):
    """``n = LayerNorm(a + a_bias + r) * w + b`` in one fused row pass;
    ``a_bias`` and ``r`` may be None; ``n`` may be ``a`` or ``r``.  ``nb``
    (bfloat16, optional): ``n`` rounded to bf16 in the same pass.
    ``nthreads``: the row kernels' thread count (default: its policy for
    this call; a forward pass works it out once for all its norms)."""
    _row.add_norm(a, a_bias, r, "layer", w, b, eps, n=n, nb=nb, nthreads=nthreads)
    return n


def bias_act(h, bias, act, out):
    """``out = act(h + bias)`` row by row (``out`` may be ``h``)."""
    if act == "quick_gelu":     # x * sigmoid(1.702 x): elementwise NumPy
        if bias is not None:
            np.add(h, bias, out=out)
        elif out is not h:
            out[...] = h
        t = np.multiply(out, -1.702)
        np.exp(t, out=t)
        t += 1.0
        np.divide(out, t, out=out)
        return out
    _row.bias_act(h, bias, act, out=out)
    return out


def attention(qkv, cu_seqlens, num_heads, scale, out, plan=None):
    """Self-attention of packed sequences straight out of a fused QKV
    projection.

    Parameters
    ----------
    qkv : ndarray, shape (total, 3 * num_heads * head_dim)
        Rows ``[q | k | v]``; read in place through views.  float32, or
        bf16 (then ``out`` is bf16 too: softmax statistics and
        accumulation in float32, the output rounded once).
    cu_seqlens : int64 ndarray, shape (nseq + 1,)
    num_heads : int
    scale : float
    out : ndarray, shape (total, num_heads * head_dim)
    plan : optional, :func:`attention_plan` of these same arguments
        Skips the per-call argument handling of ``varlen_attention`` (a
        layer's attention of a short query costs more in Python than in the
        kernel); the same kernel call, so the same bits.
    """
    if plan is not None:
        if plan.qkv is not qkv or plan.out is not out:
            raise ValueError("attention: the plan was made for other arrays")
        plan.run(plan.call)
        return out
    T = qkv.shape[0]
    D = qkv.shape[1] // (3 * num_heads)
    q3 = qkv.reshape(T, 3, num_heads, D)
    o3 = out.reshape(T, num_heads, D)
    _fa.varlen_attention(q3[:, 0], q3[:, 1], q3[:, 2], cu_seqlens, scale=scale, out=o3)
    return out


class _AttentionPlan:
    __slots__ = ("qkv", "out", "call", "run")


def attention_plan(qkv, cu_seqlens, num_heads, scale, out):
    """The kernel call :func:`attention` makes for these arguments, checked
    and built once: an encoder's layers all attend over the same ``qkv`` and
    ``out`` scratch with the same ``cu_seqlens``, so a forward pass builds it
    once and passes it as ``attention(..., plan=)`` to every layer.  It is
    ``fastattn.varlen_attention``'s own preparation (the same checks, kernel
    arguments and thread count), so the results are its bits."""
    T = qkv.shape[0]
    D = qkv.shape[1] // (3 * num_heads)
    q3 = qkv.reshape(T, 3, num_heads, D)
    o3 = out.reshape(T, num_heads, D)
    _, call, run = _varlen_prepare(q3[:, 0], q3[:, 1], q3[:, 2], cu_seqlens, None, False,
                                   scale, None, None, "top_left", o3, None, None)
    plan = _AttentionPlan()
    plan.qkv, plan.out = qkv, out
    plan.call = call
    plan.run = run if call is not None else (lambda c: None)
    return plan


def qkv_heads(qkv, B, T, H, Hkv, D, rope, cache, p0, S):
    """A decoder layer's fused projection ``qkv`` (B*T, (H + 2*Hkv)*D) as
    head views ``q`` (B, H, T, D), ``k``, ``v`` (B, Hkv, S, D): RoPE
    (``rope`` = (cos, sin) or None) rotates q and k in place (their heads
    are adjacent: one call); with a ``cache`` (its (k, v) buffers of this
    layer) the new keys and values are written at positions ``p0:S`` and
    k, v are the cache's first ``S`` positions (rounded to its dtype)."""
    v5 = qkv.reshape(B, T, H + 2 * Hkv, D)
    if rope is not None:
        qk = v5[:, :, :H + Hkv].transpose(0, 2, 1, 3)
        _rotary(qk, rope[0], rope[1], out=qk)
    q = v5[:, :, :H].transpose(0, 2, 1, 3)
    k = v5[:, :, H:H + Hkv].transpose(0, 2, 1, 3)
    v = v5[:, :, H + Hkv:].transpose(0, 2, 1, 3)
    if cache is not None:
        ck, cv = cache
        ck[:, :, p0:S] = k
        cv[:, :, p0:S] = v
        k, v = ck[:, :, :S], cv[:, :, :S]
    return q, k, v


# ---------------------------------------------------------------------------
# bfloat16
# ---------------------------------------------------------------------------

#: the dtype names the models accept
DTYPES = ("float32", "float64", "bfloat16")

_BF16_HINT = ('dtype="bfloat16" needs the ml_dtypes package: pip install "fastattn[bf16]" '
              '(or pip install ml_dtypes)')


def bf16():
    """The ``fastattn.bf16`` module (imports ml_dtypes), or ImportError
    with the install hint."""
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        raise ImportError(_BF16_HINT) from None
    from .. import bf16 as mod
    return mod


def resolve_dtype(dtype, name="dtype"):
    """A models' ``dtype=`` argument as a NumPy dtype: ``"float32"``,
    ``"float64"``, ``"bfloat16"`` (or those dtypes themselves).  Anything
    else: ValueError naming ``name`` and the allowed values; bfloat16
    without ml_dtypes: ImportError saying how to install it."""
    if isinstance(dtype, str):
        key = dtype
    else:
        key = None
        try:
            if dtype is not None and not isinstance(dtype, bool):
                key = np.dtype(dtype).name
        except TypeError:
            pass
    if key == "bfloat16":
        return np.dtype(bf16().bfloat16)
    if key in ("float32", "float64"):
        return np.dtype(key)
    raise ValueError(f"{name}={dtype!r} is not supported; allowed: "
                     f"{', '.join(repr(d) for d in DTYPES)}")


def is_bf16(dt):
    """True for the bfloat16 dtype (never imports ml_dtypes)."""
    return dt is not None and np.dtype(dt).name == "bfloat16"


def pack_bf16(w, alloc=None):
    """A float32 (or bf16) ``(N, K)`` weight in torch layout, rounded to
    bfloat16 and packed once for this build's bf16 GEMM (``alloc``: as for
    :func:`pack`)."""
    return bf16().pack_weight(w, alloc)


def dense_bf16(x, w, b=None, act=None, out=None, out_dtype=np.float32):
    """``act(x @ w.T + b)`` with ``x`` bf16 rows and ``w`` a packed bf16
    weight; accumulation, bias and activation in float32, stored once as
    ``out_dtype`` (float32, or bf16 when the result feeds the next GEMM).

    Parameters
    ----------
    x : bfloat16 ndarray, shape (N, K), contiguous rows
    w : PackedWeight of shape (M, K)
    b : float32 ndarray, shape (M,), optional
    act : None or one of :data:`ACTIVATIONS`, fused into the store
    out : ndarray, shape (N, M), optional (its dtype wins over ``out_dtype``)
    """
    N, K = x.shape
    M = w.shape[0]
    if out is None:
        out = np.empty((N, M), dtype=out_dtype)
    if N == 0:
        return out
    mod = bf16()
    # threads: fastattn.bf16.linear's policy (flops, and the weight's bytes
    # at decode-sized row counts); the results do not depend on it
    mod.linear(x, w, b, activation=None if act == "identity" else act,
               out_dtype=out.dtype, out=out)
    return out


def decoder_attention_bf16(q, k, v, mask, scale, enable_gqa, window, out, num_threads):
    """The decoders' causal (bottom-right aligned) attention: ``q`` float32
    (B, H, T, D) after RoPE, rounded to bf16 here; ``k``, ``v`` views of the
    bf16 KV cache; ``out`` a bf16 (B, H, T, D) view (the output
    projection's input)."""
    qb = bf16().to_bfloat16(q) if q.flags.c_contiguous else q.astype(out.dtype)
    _fa.scaled_dot_product_attention(qb, k, v, mask, 0.0, True, scale, enable_gqa,
                                     causal_alignment="bottom_right", window=window,
                                     out=out, num_threads=num_threads)
    return out
