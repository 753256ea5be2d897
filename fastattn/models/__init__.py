"""Pretrained model families (BERT-style encoders, GPT-style decoders)."""
