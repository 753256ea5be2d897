"""Pretrained model families (BERT-style encoders, GPT-style decoders).

* :class:`AutoModel` ``.from_pretrained(folder, dtype="float32")``: a
  Hugging Face encoder checkpoint (``model_type`` bert, roberta,
  xlm-roberta, camembert or distilbert), run padding-free and batch-invariant
  (:mod:`fastattn.models.encoder`).
* :class:`BertModel`, :class:`RobertaModel`, :class:`DistilBertModel`: the
  same per family; :class:`EncoderConfig`: what a model was built from.
"""
from .encoder import (EncoderConfig, AutoModel, BertModel, RobertaModel,
                      DistilBertModel)

__all__ = ["EncoderConfig", "AutoModel", "BertModel", "RobertaModel",
           "DistilBertModel"]
from .sentence import SentenceEncoder  # noqa: F401,E402
