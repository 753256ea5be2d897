"""Pretrained model families (BERT-style encoders, GPT-style decoders)."""
# encoders: AutoModel.from_pretrained(folder) for model_type bert, roberta,
# xlm-roberta, camembert, distilbert; padding-free and batch-invariant
# (see fastattn.models.encoder)
from .encoder import (EncoderConfig, AutoModel, BertModel, RobertaModel,  # noqa: E402
                      DistilBertModel)
from .causal_lm import CausalLM  # noqa: E402  (decoders)
from .auto_lm import AutoModelForCausalLM  # noqa: E402
from .gpt2 import GPT2LMHeadModel  # noqa: E402
from .llama import LlamaForCausalLM  # noqa: E402
from .sentence import SentenceEncoder  # noqa: F401,E402
