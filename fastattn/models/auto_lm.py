"""``AutoModelForCausalLM``: the decoder class for a checkpoint's
``model_type`` (kept apart from ``causal_lm.py``, which the model classes
build on, so that no module imports one that imports it back)."""
from ._checkpoint import read_config
from .causal_lm import _resolve_dtype
from .gpt2 import GPT2LMHeadModel
from .llama import LlamaForCausalLM

__all__ = ["AutoModelForCausalLM"]


class AutoModelForCausalLM:
    """Pick the model class from ``config.json``'s ``model_type``."""

    @staticmethod
    def from_pretrained(folder, dtype="float32"):
        """Load a decoder checkpoint folder.

        Parameters
        ----------
        folder : path
            ``config.json`` and ``model.safetensors`` (or a sharded
            ``model.safetensors.index.json``); ``generation_config.json`` is
            read when present.
        dtype : "float32" (default), "float64" or "bfloat16"
            bfloat16 (needs ml_dtypes): the projection weights and the
            output head rounded to bf16 and packed once; residual stream,
            norms, accumulation, RoPE and logits in float32 (see
            ``fastattn/models/_decoder_bf16.py`` and docs/models.md).

        Supported ``model_type``: gpt2, llama, mistral, qwen2.
        """
        dt = _resolve_dtype(dtype)
        path, config, gen = read_config(folder)
        mt = config.get("model_type")
        if mt == "gpt2":
            return GPT2LMHeadModel._load_as(path, config, gen, dt)
        if mt in LlamaForCausalLM._MODEL_TYPES:
            return LlamaForCausalLM._load_as(path, config, gen, dt)
        raise ValueError(f"config.json field model_type = {mt!r} is not supported "
                         f"(supported: 'gpt2', 'llama', 'mistral', 'qwen2')")
