"""Pretrained model families (BERT-style encoders, GPT-style decoders)."""
from .causal_lm import AutoModelForCausalLM, CausalLM  # noqa: E402  (decoders)
from .gpt2 import GPT2LMHeadModel  # noqa: E402
from .llama import LlamaForCausalLM  # noqa: E402
