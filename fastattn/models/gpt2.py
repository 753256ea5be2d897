"""GPT-2 checkpoints (``model_type`` gpt2).

Pre-norm blocks with LayerNorm, learned positions (``wpe``), a GELU MLP and
biases everywhere.  The checkpoint's Conv1D weights are ``[in, out]``
(``x @ W + b``): they are transposed once at load into the ``(out, in)``
layout of fastattn's GEMM.  ``attn.c_attn`` is already Q|K|V fused.
"""
import math
import os

import numpy as np

from ..nn.layers import check_activation
from ._checkpoint import Checkpoint
from ._validate import check_weight_budget
from .causal_lm import CausalLM, _Block, cfg_int, cfg_float

__all__ = ["GPT2LMHeadModel"]

# buffers some files carry (causal mask tables): not weights
_IGNORED = (".attn.bias", ".attn.masked_bias")


def _check_sizes_fit(path, V, E, L, F, P):
    """Hostile configs: the weights the sizes imply must fit in the files."""
    n = (V + P) * E + L * (4 * E * E + 2 * E * F)
    check_weight_budget(os.path.join(path, "config.json"), path, n,
                        dict(vocab_size=V, n_embd=E, n_layer=L, n_inner=F, n_positions=P),
                        layers=("n_layer", L))


class GPT2LMHeadModel(CausalLM):
    """GPT-2 with its language-model head (tied to ``wte`` unless the file
    has an ``lm_head.weight`` and ``tie_word_embeddings`` is false)."""

    model_type = "gpt2"
    _max_pos_name = "n_positions"

    @classmethod
    def _load(cls, path, config, gen, dtype):
        c = config
        if c.get("add_cross_attention"):
            raise ValueError("config.json field add_cross_attention = true is not "
                             "supported (decoder-only GPT-2 only)")
        E = cfg_int(c, "n_embd", 768)
        L = cfg_int(c, "n_layer", 12)
        H = cfg_int(c, "n_head", 12)
        if E % H:
            raise ValueError(f"config.json: n_embd ({E}) is not divisible by n_head ({H})")
        D = E // H
        inner = c.get("n_inner")
        F = 4 * E if inner is None else cfg_int(c, "n_inner")
        V = cfg_int(c, "vocab_size", 50257)
        P = cfg_int(c, "n_positions", 1024)
        eps = cfg_float(c, "layer_norm_epsilon", 1e-5)
        _check_sizes_fit(path, V, E, L, F, P)
        act_name = c.get("activation_function", "gelu_new")
        try:
            act = check_activation(act_name) if isinstance(act_name, str) else None
        except ValueError:
            act = None
        if act_name == "gelu_fast":
            act = "gelu_tanh"       # the same tanh formula, written differently
        if act not in ("relu", "gelu", "gelu_tanh", "silu"):
            raise ValueError(f"config.json field activation_function = {act_name!r} is "
                             f"not supported (gelu_new, gelu_pytorch_tanh, gelu_fast, "
                             f"gelu, relu, silu)")
        scale = 1.0 / math.sqrt(D) if c.get("scale_attn_weights", True) else 1.0
        by_layer = bool(c.get("scale_attn_by_inverse_layer_idx", False))
        m = cls.__new__(cls)
        m._init_common(c, gen, dtype, vocab_size=V, hidden=E, layers=L, heads=H,
                       kv_heads=H, head_dim=D, max_positions=P, norm="layer", eps=eps,
                       act=act)
        with Checkpoint(path) as ck:
            names = ck.names()
            pre = "transformer." if "transformer.wte.weight" in names else ""
            if pre + "wte.weight" not in names:
                raise ValueError(f"checkpoint in {path!r} has no wte.weight or "
                                 f"transformer.wte.weight: not a GPT-2 checkpoint")

            def get(name, shape):
                return ck.get(pre + name, dtype, shape)

            def conv1d(name, n_in, n_out):   # [in, out] -> (out, in), once
                return np.ascontiguousarray(get(name + ".weight", (n_in, n_out)).T)

            m.embed = get("wte.weight", (V, E))
            m.pos_embed = get("wpe.weight", (P, E))
            for i in range(L):
                b = _Block()
                p = f"h.{i}."
                b.n1w, b.n1b = get(p + "ln_1.weight", (E,)), get(p + "ln_1.bias", (E,))
                b.w_qkv = conv1d(p + "attn.c_attn", E, 3 * E)
                b.b_qkv = get(p + "attn.c_attn.bias", (3 * E,))
                b.w_o = conv1d(p + "attn.c_proj", E, E)
                b.b_o = get(p + "attn.c_proj.bias", (E,))
                b.n2w, b.n2b = get(p + "ln_2.weight", (E,)), get(p + "ln_2.bias", (E,))
                b.w_up = conv1d(p + "mlp.c_fc", E, F)
                b.b_up = get(p + "mlp.c_fc.bias", (F,))
                b.w_down = conv1d(p + "mlp.c_proj", F, E)
                b.b_down = get(p + "mlp.c_proj.bias", (E,))
                b.scale = scale / (i + 1) if by_layer else scale
                b.window = None
                m.blocks.append(b)
            m.final_w, m.final_b = get("ln_f.weight", (E,)), get("ln_f.bias", (E,))
            tie = c.get("tie_word_embeddings", True)
            if not tie and "lm_head.weight" in names:
                m.lm_head = ck.get("lm_head.weight", dtype, (V, E))
            else:
                m.lm_head = m.embed
                if "lm_head.weight" in names:     # a tied copy saved anyway
                    ck._used.add("lm_head.weight")
            left = [n for n in ck.unused() if not n.endswith(_IGNORED)]
            if left:
                raise ValueError(f"checkpoint in {path!r} has tensors this GPT-2 loader "
                                 f"does not know (unsupported variant): {left[:5]}")
        return m
