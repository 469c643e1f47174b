"""A tiny random sentence-transformers model (BERT, 2 layers, 48 dims) with MiniLM's tokenizer, built offline.

Training tests need a model whose steps and checkpoints take milliseconds, not MiniLM's 90 MB of weights
plus 180 MB of optimizer state per epoch; what they check (the loss falls, the folder loads in
sentence-transformers and in our encoder with identical vectors, prompts survive, resume works) does
not depend on the weights being pretrained.
"""

from __future__ import annotations

import os

HIDDEN = 48
LAYERS = 2
HEADS = 4
INTERMEDIATE = 96
MAX_POSITIONS = 128
SEED = 7


def build_tiny_st_model(folder: str, tokenizer_folder: str, seed: int = SEED) -> str:
    """Write the model to `folder` (Transformer + mean Pooling + Normalize) and return it; another `seed` gives
    a model of the same shape with other weights (a "fine-tuned copy")."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                        max_position_embeddings=MAX_POSITIONS)
    backbone = os.path.join(folder, "_backbone")
    BertModel(config, add_pooling_layer=False).save_pretrained(backbone)
    tokenizer.model_max_length = MAX_POSITIONS
    tokenizer.save_pretrained(backbone)
    transformer = Transformer(backbone, max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(HIDDEN, "mean"), Normalize()], device="cpu")
    model.save(os.path.join(folder, "tiny-st"))
    return os.path.join(folder, "tiny-st")
