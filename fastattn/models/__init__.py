"""Pretrained model families (BERT-style encoders, GPT-style decoders)."""
from .sentence import SentenceEncoder  # noqa: F401
