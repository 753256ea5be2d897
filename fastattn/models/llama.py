"""Llama-family checkpoints: ``model_type`` llama, mistral and qwen2.

Pre-norm blocks with RMSNorm, half-split rotary embeddings (``rotate_half``)
on queries and keys, a SwiGLU MLP (gate and up projections fused into one
GEMM at load, gate rows first), grouped-query attention through the
kernel's kv-head indexing (K/V are never repeated), optional sliding window
(Mistral; Qwen2's ``sliding_attention`` layers) and q/k/v biases (Qwen2,
``attention_bias``).
"""
import math
import os
import numbers

import numpy as np

from ._checkpoint import Checkpoint
from ._validate import check_weight_budget
from .causal_lm import CausalLM, _Block, cfg_int, cfg_float

__all__ = ["LlamaForCausalLM", "rope_inv_freq"]

_IGNORED = ("rotary_emb.inv_freq",)
_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def _param(rp, key, default=None, positive=True):
    v = rp.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
            or (positive and v <= 0):
        raise ValueError(f"config.json rope_scaling/rope_parameters field {key} = {v!r} "
                         f"must be a {'positive ' if positive else ''}number")
    return float(v)


def rope_inv_freq(config, head_dim):
    """RoPE inverse frequencies (float64, ``(head_dim // 2,)``) and the
    attention factor multiplying cos/sin, from a Llama-style config
    (``rope_theta`` and ``rope_scaling`` or ``rope_parameters``), following
    the formulas of ``transformers``' ``modeling_rope_utils``."""
    rp = config.get("rope_parameters")
    if rp is None:
        rp = config.get("rope_scaling")
    if rp is None:
        rp = {}
    if not isinstance(rp, dict):
        raise ValueError(f"config.json field rope_scaling/rope_parameters = {rp!r} must be "
                         f"an object or null")
    if any(isinstance(v, dict) for v in rp.values()):
        raise ValueError("config.json field rope_parameters holds per-layer-type RoPE "
                         "settings, which are not supported")
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype not in _ROPE_TYPES:
        raise ValueError(f"config.json field rope_scaling.rope_type = {rtype!r} is not "
                         f"supported (supported: {', '.join(_ROPE_TYPES)})")
    base = rp.get("rope_theta", config.get("rope_theta", 10000.0))
    base = _param({"rope_theta": base}, "rope_theta")
    prf = rp.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if prf not in (None, 1, 1.0):
        raise ValueError(f"config.json field partial_rotary_factor = {prf!r} is not "
                         f"supported by the Llama family (only 1.0)")
    dim = head_dim
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    attn = 1.0
    max_pos = config.get("max_position_embeddings", 2048)
    if rtype == "linear":
        inv = inv / _param(rp, "factor")
    elif rtype == "dynamic":
        # NTK scaling only changes the base once a sequence grows beyond
        # max_position_embeddings; generation here never goes beyond it
        factor = _param(rp, "factor")
        seq = max_pos
        b = base * ((factor * seq / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        inv = 1.0 / b ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    elif rtype == "llama3":
        factor = _param(rp, "factor")
        lo = _param(rp, "low_freq_factor")
        hi = _param(rp, "high_freq_factor")
        old = _param(rp, "original_max_position_embeddings", max_pos)
        if hi == lo:
            raise ValueError("config.json rope_scaling: llama3 needs high_freq_factor != "
                             "low_freq_factor")
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled)
    elif rtype == "yarn":
        old = _param(rp, "original_max_position_embeddings", max_pos)
        factor = rp.get("factor")
        factor = max_pos / old if factor is None else _param(rp, "factor")

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        af = rp.get("attention_factor")
        if af is None:
            ms, msa = rp.get("mscale"), rp.get("mscale_all_dim")
            attn = (mscale(factor, ms) / mscale(factor, msa)) if (ms and msa) else mscale(factor)
        else:
            attn = _param(rp, "attention_factor")
        beta_fast = rp.get("beta_fast") or 32
        beta_slow = rp.get("beta_slow") or 1

        def corr_dim(rot):
            return dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(base))

        low, high = corr_dim(beta_fast), corr_dim(beta_slow)
        if rp.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        inv = (1.0 / (factor * pos_freqs)) * (1 - extra) + (1.0 / pos_freqs) * extra
    return inv, float(attn)


def _check_sizes_fit(path, V, E, L, H, Hkv, D, F):
    """Hostile configs: the weights the sizes imply must fit in the files
    (before the per-layer tables and RoPE frequencies are built from them)."""
    n = V * E + L * (2 * E * (H + Hkv) * D + 3 * E * F)
    check_weight_budget(os.path.join(path, "config.json"), path, n,
                        dict(vocab_size=V, hidden_size=E, num_hidden_layers=L,
                             num_attention_heads=H, num_key_value_heads=Hkv, head_dim=D,
                             intermediate_size=F),
                        layers=("num_hidden_layers", L))


class LlamaForCausalLM(CausalLM):
    """Llama, Mistral and Qwen2 causal language models."""

    model_type = "llama"
    _MODEL_TYPES = ("llama", "mistral", "qwen2")

    @classmethod
    def _load(cls, path, config, gen, dtype):
        c = config
        mt = c.get("model_type")
        E = cfg_int(c, "hidden_size", 4096)
        L = cfg_int(c, "num_hidden_layers", 32)
        H = cfg_int(c, "num_attention_heads", 32)
        Hkv = c.get("num_key_value_heads")
        Hkv = H if Hkv is None else cfg_int(c, "num_key_value_heads")
        if H % Hkv:
            raise ValueError(f"config.json: num_attention_heads ({H}) is not a multiple of "
                             f"num_key_value_heads ({Hkv})")
        D = c.get("head_dim")
        if D is None:
            if E % H:
                raise ValueError(f"config.json: hidden_size ({E}) is not divisible by "
                                 f"num_attention_heads ({H}) and head_dim is not set")
            D = E // H
        else:
            D = cfg_int(c, "head_dim")
        if D % 2:
            raise ValueError(f"config.json: head_dim = {D} must be even for rotary embeddings")
        F = cfg_int(c, "intermediate_size", 11008)
        V = cfg_int(c, "vocab_size", 32000)
        P = cfg_int(c, "max_position_embeddings", 2048)
        eps = cfg_float(c, "rms_norm_eps", 1e-6)
        _check_sizes_fit(path, V, E, L, H, Hkv, D, F)
        act = c.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"config.json field hidden_act = {act!r} is not supported "
                             f"(the gated MLP runs silu only)")
        if mt == "qwen2":
            qkv_bias, o_bias, mlp_bias = True, False, False
        elif mt == "mistral":
            qkv_bias = o_bias = mlp_bias = False
        else:
            qkv_bias = o_bias = bool(c.get("attention_bias", False))
            mlp_bias = bool(c.get("mlp_bias", False))
        windows = [None] * L
        sw = c.get("sliding_window")
        if mt == "mistral" and sw is not None:
            sw = cfg_int(c, "sliding_window")
            windows = [(sw - 1, None)] * L
        elif mt == "qwen2":
            types = c.get("layer_types")
            if types is None:
                types = ["full_attention"] * L
                if c.get("use_sliding_window") and sw is not None:
                    mwl = c.get("max_window_layers", 28)
                    types = ["sliding_attention" if i >= mwl else "full_attention"
                             for i in range(L)]
            if not isinstance(types, list) or len(types) != L:
                raise ValueError(f"config.json field layer_types = {types!r} must list "
                                 f"{L} layer types")
            for i, t in enumerate(types):
                if t == "sliding_attention":
                    if sw is None:
                        raise ValueError("config.json: a sliding_attention layer needs "
                                         "sliding_window")
                    windows[i] = (cfg_int(c, "sliding_window") - 1, None)
                elif t != "full_attention":
                    raise ValueError(f"config.json field layer_types[{i}] = {t!r} is not "
                                     f"supported (full_attention, sliding_attention)")
        elif mt == "llama" and sw is not None:
            raise ValueError(f"config.json field sliding_window = {sw!r} is not supported "
                             f"for model_type 'llama'")
        inv, attn_factor = rope_inv_freq(c, D)
        m = cls.__new__(cls)
        m.model_type = mt
        m._init_common(c, gen, dtype, vocab_size=V, hidden=E, layers=L, heads=H,
                       kv_heads=Hkv, head_dim=D, max_positions=P, norm="rms", eps=eps,
                       act="swiglu")
        m.inv_freq = inv
        m.rope_scale = attn_factor
        scale = 1.0 / math.sqrt(D)
        with Checkpoint(path) as ck:
            names = ck.names()
            pre = "model." if "model.embed_tokens.weight" in names else ""
            if pre + "embed_tokens.weight" not in names:
                raise ValueError(f"checkpoint in {path!r} has no model.embed_tokens.weight: "
                                 f"not a {mt} checkpoint")

            def get(name, shape):
                return ck.get(pre + name, dtype, shape)

            def opt(name, shape, present):
                return get(name, shape) if present else None

            m.embed = get("embed_tokens.weight", (V, E))
            qd, kd = H * D, Hkv * D
            for i in range(L):
                b = _Block()
                p = f"layers.{i}."
                a = p + "self_attn."
                b.n1w, b.n1b = get(p + "input_layernorm.weight", (E,)), None
                b.w_qkv = np.concatenate([get(a + "q_proj.weight", (qd, E)),
                                          get(a + "k_proj.weight", (kd, E)),
                                          get(a + "v_proj.weight", (kd, E))])
                b.b_qkv = None
                if qkv_bias:
                    b.b_qkv = np.concatenate([get(a + "q_proj.bias", (qd,)),
                                              get(a + "k_proj.bias", (kd,)),
                                              get(a + "v_proj.bias", (kd,))])
                b.w_o = get(a + "o_proj.weight", (E, qd))
                b.b_o = opt(a + "o_proj.bias", (E,), o_bias)
                b.n2w, b.n2b = get(p + "post_attention_layernorm.weight", (E,)), None
                mp = p + "mlp."
                b.w_up = np.concatenate([get(mp + "gate_proj.weight", (F, E)),
                                         get(mp + "up_proj.weight", (F, E))])
                b.b_up = None
                if mlp_bias:
                    b.b_up = np.concatenate([get(mp + "gate_proj.bias", (F,)),
                                             get(mp + "up_proj.bias", (F,))])
                b.w_down = get(mp + "down_proj.weight", (E, F))
                b.b_down = opt(mp + "down_proj.bias", (E,), mlp_bias)
                b.scale = scale
                b.window = windows[i]
                m.blocks.append(b)
            m.final_w, m.final_b = get("norm.weight", (E,)), None
            tie = c.get("tie_word_embeddings", False)
            if "lm_head.weight" in names and not tie:
                m.lm_head = ck.get("lm_head.weight", dtype, (V, E))
            elif tie:
                m.lm_head = m.embed
                if "lm_head.weight" in names:
                    ck._used.add("lm_head.weight")
            else:
                raise ValueError(f"checkpoint in {path!r} has no lm_head.weight and "
                                 f"config.json field tie_word_embeddings = {tie!r}")
            left = [n for n in ck.unused() if not n.endswith(_IGNORED)]
            if left:
                raise ValueError(f"checkpoint in {path!r} has tensors this {mt} loader does "
                                 f"not know (unsupported variant): {left[:5]}")
        return m
