"""Random-weight BGE-M3 checkpoints of a chosen size, built offline for speed measurements.

Speed does not depend on the weights, so a random XLM-RoBERTa backbone of BGE-M3's shape with
random colbert/sparse heads measures what the real model would. The folder has BAAI/bge-m3's
layout (our loader takes the BGE-M3 path) plus sentence-transformers' modules.json with CLS
pooling and normalisation (what bge-m3's own modules.json declares), so sentence-transformers
loads the same weights as its dense-only peer.

The XLM-R tokenizer cannot be downloaded here, so the folder carries the packaged MiniLM's
WordPiece tokenizer (30,522 ids instead of 250,002). That changes the embedding table's size,
not the FLOPs per token; token counts of English text are close to XLM-R's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@dataclass(frozen=True)
class BackboneSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int


SIZES = {
    "large": BackboneSize(1024, 24, 16, 4096),  # XLM-RoBERTa large = BGE-M3
    "base": BackboneSize(768, 12, 12, 3072),
    "small": BackboneSize(384, 6, 12, 1536),  # MiniLM-L6's shape: what a 2-core CPU run can afford
    "tiny": BackboneSize(64, 2, 4, 128),  # for tests of the benchmark itself
}


def build_random_bge_m3(folder: str, size: str, max_positions: int = 8192, seed: int = 0) -> str:
    """Write a random BGE-M3-layout checkpoint of `size` into `folder`; return the folder."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from operators.encoders.bge_m3 import COLBERT_HEAD, SPARSE_HEAD
    from operators.encoders.loader import resolve_model_path

    shape = SIZES[size]
    os.makedirs(folder, exist_ok=True)
    tokenizer_dir = resolve_model_path("minilm")
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(tokenizer_dir, name)):
            shutil.copy(os.path.join(tokenizer_dir, name), folder)
    with open(os.path.join(tokenizer_dir, "config.json")) as handle:
        vocab_size = json.load(handle)["vocab_size"]
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=max_positions + 1,  # XLM-R positions start after pad_token_id (0 here)
        pad_token_id=0,
        type_vocab_size=1,
    )
    model = XLMRobertaModel(config).eval()
    # bf16 halves the large folder (1.3 GB -> 0.7 GB); each reader loads it in the dtype it runs in.
    model.to(torch.bfloat16 if size == "large" else torch.float32).save_pretrained(folder)
    torch.save(torch.nn.Linear(shape.hidden, shape.hidden).state_dict(), os.path.join(folder, COLBERT_HEAD))
    torch.save(torch.nn.Linear(shape.hidden, 1).state_dict(), os.path.join(folder, SPARSE_HEAD))
    _write_sentence_transformers_config(folder, shape.hidden, max_positions)
    return folder


def _write_sentence_transformers_config(folder: str, hidden: int, max_length: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _dump(os.path.join(folder, "modules.json"), modules)
    _dump(os.path.join(folder, "sentence_bert_config.json"), {"max_seq_length": max_length, "do_lower_case": False})
    _dump(os.path.join(folder, "1_Pooling", "config.json"),
          {"word_embedding_dimension": hidden, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)


def _dump(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2)
