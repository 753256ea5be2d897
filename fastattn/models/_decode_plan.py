"""One decoding step of a generate() call, planned once.

A decode step of ``n`` active sequences (one new token each) makes the same
kernel calls with the same shapes at every step; only the cache length, the
new tokens, their positions and their RoPE rows change.  ``CausalLM._run``
re-derives and re-validates all of it per call (shapes, strides, dtypes,
thread counts, attention bounds, offsets into the cache), which at batch 1
costs about as much as streaming a tenth of GPT-2's weights in bf16.
:class:`DecodePlan` does that work once per ``(model, n, cache)``:

* every buffer of the step (residual, norm outputs, QKV, attention output,
  MLP activations, logits) is allocated once and written in place;
* every projection is a prebuilt kernel call object (``GemvCall`` for the
  float32/float64 GEMV, the bf16 GEMM's arguments for bf16) entered
  directly, with the thread count the public wrappers would choose;
* the attention of each layer is a :func:`fastattn.functional.attention_plan`
  over the layer's whole cache rows, validated once; a step passes only the
  new length;
* the row kernels (add + norm, SwiGLU) are entered directly.

Each kernel receives exactly the operands the unplanned path gives it (the
same arrays' values, offsets, strides, flags and the same thread policy), so
the logits are bit-identical to ``CausalLM._run`` (tested in
``tests/test_decode_plan.py``), and, the kernels being deterministic, for
any thread count.  A step with a padding mask calls the public attention
(the mask changes every step); everything else stays planned.
"""
import numpy as np

from .. import _layers as _rowk
from .._dispatch import kernels as _kern
from ..functional import attention_plan, scaled_dot_product_attention
from ..threads import for_rows, for_stream, for_flops, get_num_threads

__all__ = ["DecodePlan"]


def _fwd(w):
    """``w`` as the GEMV reads it (nn.layers.gemv's ``_fwd_rows``: a copy
    only if its rows are not forward and contiguous), once."""
    from ..nn.layers import _fwd_rows
    return _fwd_rows(w, "weight")


def _gemv_call(x, w, bias, out, act=None, glu=False):
    """The GemvCall ``nn.layers.gemv(x, w, bias, act, glu, out=out)`` makes
    (x: <= GEMV_MAX_ROWS rows)."""
    it = x.itemsize
    M, K = x.shape
    N = out.shape[1]
    w = _fwd(w)
    if bias is not None:
        bias = np.ascontiguousarray(bias)
    return _kern.GemvCall(x=x, xs=x.strides[0] // it if M > 1 else K, w=w,
                          ws=w.strides[0] // it, bias=bias, act=_kern.GEMV_ACTS[act],
                          glu=bool(glu), out=out, ys=out.strides[0] // it if M > 1 else N,
                          nthreads=for_stream(None, w.nbytes))


class DecodePlan:
    """A planned decode step for ``n`` active rows of the cache arrays
    ``kv = (k, v)`` (each ``(layers, B, Hkv, max_len, D)``, rows ``:n``).

    ``plan.step(ids, positions, p0, mask, rope)`` equals
    ``model._run(ids, positions, (k[:, :n], v[:, :n]), p0, mask, True,
    rope)`` for ``ids``/``positions`` of shape ``(n, 1)``; it returns the
    plan's own ``(n, vocab)`` logits buffer (overwritten by the next step).
    """

    def __init__(self, model, n, kv):
        m = model
        from ..nn.layers import GEMV_MAX_ROWS
        if not (isinstance(n, int) and 1 <= n <= kv[0].shape[1]):
            raise ValueError(f"DecodePlan: n = {n!r} must be an int in [1, {kv[0].shape[1]}]")
        if not m._bf16 and n > GEMV_MAX_ROWS:
            raise ValueError(f"DecodePlan: float32/float64 steps are planned up to "
                             f"{GEMV_MAX_ROWS} rows (the GEMV), got n = {n}")
        want = (m.num_layers, kv[0].shape[1], m.num_kv_heads, kv[0].shape[3], m.head_dim)
        for name, c in zip(("k", "v"), kv):
            if not isinstance(c, np.ndarray) or c.shape != want or c.dtype != m._cache_dtype:
                raise ValueError(f"DecodePlan: cache {name} must be a {np.dtype(m._cache_dtype)} "
                                 f"array of shape (layers, B, Hkv, max_len, D) = {want}, got "
                                 f"{getattr(c, 'shape', type(c))}")
        self.model, self.n, self.kv = m, n, kv
        self.nthreads_setting = get_num_threads()
        self.bf16 = bool(m._bf16)
        H, Hkv, D, E = m.num_heads, m.num_kv_heads, m.head_dim, m.hidden_size
        self.H, self.Hkv, self.D = H, Hkv, D
        fdt = m._float_dtype            # residual stream, QKV (RoPE) dtype
        self.x = np.empty((n, E), fdt)
        self.norm_code = _rowk.NORMS[m.norm]
        self.eps = float(m.eps)
        self.nt_norm = for_rows(n * E, 3)
        qkv = np.empty((n, (H + 2 * Hkv) * D), fdt)
        v5 = qkv.reshape(n, 1, H + 2 * Hkv, D)
        self.qkv = qkv
        qk = v5[:, :, :H + Hkv].transpose(0, 2, 1, 3)
        self.q = v5[:, :, :H].transpose(0, 2, 1, 3)
        self.k_new = v5[:, :, H:H + Hkv].transpose(0, 2, 1, 3)
        self.v_new = v5[:, :, H + Hkv:].transpose(0, 2, 1, 3)
        self.rope = None
        if m.inv_freq is not None:
            h = m.inv_freq.shape[0]
            if 2 * h > D:
                raise ValueError(f"rotary tables cover {2 * h} features but heads have {D}")
            t = [np.empty((n, H + Hkv, 1, h), fdt) for _ in range(2)]
            self.rope = (qk[..., :h], qk[..., h:2 * h], t[0], t[1])
        adt = m.dtype                   # the attention output's dtype
        buf = np.empty((n, 1, H, D), dtype=adt)
        o4 = buf.transpose(0, 2, 1, 3)
        a2 = buf.reshape(n, H * D)
        self.o4 = o4
        ck_all, cv_all = kv[0][:, :n], kv[1][:, :n]
        self.ck = [ck_all[li] for li in range(m.num_layers)]
        self.cv = [cv_all[li] for li in range(m.num_layers)]
        gqa = Hkv != H
        self.gqa = gqa
        if self.bf16:
            self.qb = np.empty((n, H, 1, D), dtype=adt)
            qsrc = self.qb
            self.nt_cvt = for_flops(None, self.qb.size * 8)   # fastattn.bf16.to_bfloat16's
        else:
            qsrc = self.q
        self.att = [attention_plan(qsrc, ck, cv, is_causal=True, scale=blk.scale,
                                   enable_gqa=gqa, causal_alignment="bottom_right",
                                   window=blk.window, out=o4)
                    for blk, ck, cv in zip(m.blocks, self.ck, self.cv)]
        self.att_item = np.dtype(fdt).itemsize
        self.y = np.empty((n, E), fdt)
        blocks = m.blocks
        self.logits = np.empty((n, m.vocab_size), np.float32 if self.bf16 else m.dtype)
        # per block: (norm weights after attention, after the MLP)
        self.norms = []
        for li, blk in enumerate(blocks):
            if li + 1 < len(blocks):
                nw, nb = blocks[li + 1].n1w, blocks[li + 1].n1b
            else:
                nw, nb = m.final_w, m.final_b
            self.norms.append(((blk.n2w, blk.n2b), (nw, nb)))
        swiglu = m.act == "swiglu"
        self.swiglu = swiglu
        if self.bf16:
            self._init_bf16(m, n, a2, swiglu)
        else:
            h = np.empty((n, E), adt)
            self.h = h
            F = blocks[0].w_up.shape[0] // (2 if swiglu else 1)
            g = np.empty((n, F), adt)
            self.calls = []
            for blk in blocks:
                up = (_gemv_call(h, blk.w_up, blk.b_up, g, glu=True) if swiglu
                      else _gemv_call(h, blk.w_up, blk.b_up, g, act=m.act))
                self.calls.append((_gemv_call(h, blk.w_qkv, blk.b_qkv, qkv),
                                   _gemv_call(a2, blk.w_o, None, self.y), up,
                                   _gemv_call(g, blk.w_down, None, self.y)))
            self.head = _gemv_call(h, m.lm_head, None, self.logits)

    def _init_bf16(self, m, n, a2, swiglu):
        from .. import bf16 as b16mod
        from ..threads import for_flops as ff
        E = m.hidden_size
        adt = m.dtype
        self.hb = np.empty((n, E), adt)
        hbu = self.hb.view(np.uint16)
        blocks = m.blocks
        F = blocks[0].w_up.shape[0] // (2 if swiglu else 1)
        self.gb = np.empty((n, F), adt)
        gbu = self.gb.view(np.uint16)
        a2u = a2.view(np.uint16)
        code = {a: getattr(_kern, c) for a, c in b16mod._ACT_CODE.items()}

        def lin(xu, w, bias, act, ou):
            """fastattn.bf16.linear's kernel call (its thread rule)."""
            M, K = xu.shape
            N = w.shape[0]
            if bias is not None:
                bias = np.ascontiguousarray(bias, dtype=np.float32)
            nt = max(ff(None, 2 * M * N * max(K, 1)), for_stream(None, w.nbytes))
            return (xu, w._data, bias, code[None if act == "identity" else act], ou, nt)
        self.u = np.empty((n, 2 * F), np.float32) if swiglu else None
        self.nt_swiglu = for_rows(n * F, 16)
        self.calls = []
        for blk in blocks:
            up = (lin(hbu, blk.w_up, None, None, self.u) if swiglu
                  else lin(hbu, blk.w_up, blk.b_up, m.act, gbu))
            self.calls.append((lin(hbu, blk.w_qkv, blk.b_qkv, None, self.qkv),
                               lin(a2u, blk.w_o, None, None, self.y), up,
                               lin(gbu, blk.w_down, None, None, self.y)))
        self.head = lin(hbu, m.lm_head, None, None, self.logits)

    # -- one step ---------------------------------------------------------------
    def step(self, ids, positions, p0, mask, rope):
        m = self.model
        n = self.n
        x = self.x
        np.take(m.embed, ids.reshape(-1), axis=0, out=x)
        if m.pos_embed is not None:
            x += m.pos_embed[positions.reshape(-1)]
        S = p0 + 1
        bf16 = self.bf16
        code, eps, ntn = self.norm_code, self.eps, self.nt_norm
        addn = _rowk.add_norm
        b0 = m.blocks[0]
        if bf16:
            hb = self.hb
            addn(x, None, None, code, b0.n1w, b0.n1b, eps, None, None, ntn, hb)
            lin = _kern.bf16_linear
            att_nt = None       # _decoder_bf16.run: the kernel's own flops rule
        else:
            h = self.h
            addn(x, None, None, code, b0.n1w, b0.n1b, eps, None, h, ntn, None)
            gemv = _kern.gemv
            att_nt = for_stream(None, 2 * n * self.Hkv * S * self.D * self.att_item)
        rp = self.rope
        if rp is not None:
            cos, sin = rope
            a, b, t1, t2 = rp
        q, kn, vn, o4 = self.q, self.k_new, self.v_new, self.o4
        for li, blk in enumerate(m.blocks):
            c_qkv, c_o, c_up, c_down = self.calls[li]
            if bf16:
                lin(*c_qkv)
            else:
                gemv(c_qkv)
            if rp is not None:      # positional.apply_rotary(qk, cos, sin, out=qk)
                np.multiply(a, cos, out=t1)         # a_cos
                np.multiply(b, sin, out=t2)         # b_sin
                np.subtract(t1, t2, out=t1)         # a_cos - b_sin (a is still needed)
                np.multiply(b, cos, out=t2)         # b_cos
                np.multiply(a, sin, out=a)          # a_sin
                np.add(t2, a, out=b)
                np.copyto(a, t1)
            ck, cv = self.ck[li], self.cv[li]
            ck[:, :, p0:S] = kn
            cv[:, :, p0:S] = vn
            if bf16:
                qb = self.qb
                if q.flags.c_contiguous:        # decoder_attention_bf16's rounding
                    _kern.bf16_from_f32(q.reshape(-1), qb.view(np.uint16).reshape(-1),
                                        self.nt_cvt)
                else:
                    qb[...] = q
                qa = qb
            else:
                qa = q
            if mask is None:
                self.att[li](S, att_nt)
            else:
                scaled_dot_product_attention(qa, ck[:, :, :S], cv[:, :, :S], mask, 0.0, True,
                                             blk.scale, self.gqa,
                                             causal_alignment="bottom_right",
                                             window=blk.window, out=o4, num_threads=att_nt)
            (n2w, n2b), (nw, nbias) = self.norms[li]
            if bf16:
                lin(*c_o)
                addn(self.y, blk.b_o, x, code, n2w, n2b, eps, x, None, ntn, hb)
                lin(*c_up)
                if self.swiglu:
                    _rowk.swiglu(self.u, blk.b_up, None, self.nt_swiglu, self.gb)
                lin(*c_down)
                addn(self.y, blk.b_down, x, code, nw, nbias, eps, x, None, ntn, hb)
            else:
                gemv(c_o)
                addn(self.y, blk.b_o, x, code, n2w, n2b, eps, x, h, ntn, None)
                gemv(c_up)
                gemv(c_down)
                addn(self.y, blk.b_down, x, code, nw, nbias, eps, x, h, ntn, None)
        if bf16:
            lin(*self.head)
        else:
            gemv(self.head)
        return self.logits
