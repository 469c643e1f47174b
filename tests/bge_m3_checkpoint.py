"""Build a tiny random checkpoint in BAAI/bge-m3's exact folder layout, offline.

No real BGE-M3 weights exist in the test environment, and what the parity tests check is that our
encoder computes the same function of a checkpoint as FlagEmbedding does; a small random
XLM-RoBERTa with random heads exercises every code path (special tokens, repeated tokens, unknown
characters, padding, truncation, texts longer than 512 tokens) in seconds.

Layout written (as in the hub repo): config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json, colbert_linear.pt, sparse_linear.pt.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import types
from collections import Counter

import torch

from operators.encoders.folders import COLBERT_HEAD, SPARSE_HEAD

SEED = 1234
HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64
MAX_POSITIONS = 2050  # like bge-m3's 8194: positions start after pad_token_id, so 2048 usable tokens
VOCAB_TARGET = 1500
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3 exactly as in XLM-R
MASK_TOKEN = "<mask>"  # last id, as in XLM-R (250001)
WORD_START = "\u2581"  # SentencePiece's word-start marker
SPARSE_BIAS = 0.3  # shifts relu(sparse_linear(h)) so that roughly 60% of tokens get a positive weight

# Training text for the tokenizer: several scripts so that the vocabulary has pieces for each.
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "Embedding models turn text into vectors that capture meaning for search and clustering.",
    "Sparse lexical weights reward exact term matches; dense vectors capture paraphrases.",
    "A long document about rivers, mountains, forests and the animals that live there.",
    "Machine learning pipelines read Parquet files, batch texts by length and write tables.",
    "Der schnelle braune Fuchs springt über den faulen Hund, während die Katze schläft.",
    "Die Einbettungsmodelle verwandeln Texte in Vektoren für die Suche und das Clustern.",
    "Große Sprachmodelle benötigen viel Speicher und lange Rechenzeit auf der Grafikkarte.",
    "快速的棕色狐狸跳过了懒狗，猫在温暖的阳光下睡觉。",
    "嵌入模型将文本转换为向量，用于搜索和聚类。稀疏权重奖励精确匹配。",
    "北京是中国的首都，上海是最大的城市。长江是中国最长的河流。",
    "Быстрая коричневая лиса прыгает через ленивую собаку, пока кошка спит на солнце.",
    "Модели эмбеддингов превращают текст в векторы для поиска и кластеризации.",
    "Москва является столицей России, а Волга самая длинная река в Европе.",
    "Le renard brun rapide saute par-dessus le chien paresseux pendant que le chat dort.",
    "El rápido zorro marrón salta sobre el perro perezoso mientras el gato duerme.",
    "素早い茶色の狐が怠け者の犬を飛び越える。検索のための埋め込みモデル。",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 and symbols , . ; : ! ? ( ) - / %",
]


def _unigram_vocab() -> list[tuple[str, float]]:
    """Deterministic Unigram vocabulary "trained" by counting: every character, then the most frequent
    word pieces (1-4 characters, with and without the word-start marker) and whole words, scored by
    log frequency.

    The tokenizers library's UnigramTrainer orders tied pieces differently from run to run, so a
    checkpoint built with it would not be reproducible under a fixed seed; counting is.
    """
    counts: Counter[str] = Counter()
    for sentence in CORPUS:
        for word in sentence.split():
            marked = WORD_START + word
            counts[marked] += 1
            for size in range(1, 5):
                for start in range(len(word) - size + 1):
                    counts[word[start : start + size]] += 1
                if len(word) >= size:
                    counts[marked[: size + 1]] += 1
    counts[WORD_START] += sum(counts.values())  # the bare marker must always be available
    chars = sorted({piece for piece in counts if len(piece) == 1})
    ranked = sorted((piece for piece in counts if len(piece) > 1), key=lambda piece: (-counts[piece], piece))
    pieces = chars + ranked[: VOCAB_TARGET - len(SPECIAL_TOKENS) - len(chars)]
    total = sum(counts[piece] for piece in pieces)
    return [(token, 0.0) for token in SPECIAL_TOKENS] + [
        (piece, math.log(counts[piece] / total)) for piece in pieces
    ]


def _xlmr_tokenizer():
    """The transformers XLM-R tokenizer class bge-m3 ships with, over our small vocabulary."""
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(vocab=_unigram_vocab(), model_max_length=MAX_POSITIONS - 2)


def build_tiny_bge_m3(folder: str) -> str:
    """Write a random tiny BGE-M3 checkpoint into `folder` (created if missing); return its path."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    os.makedirs(folder, exist_ok=True)
    tokenizer = _xlmr_tokenizer()
    if tokenizer.convert_tokens_to_ids(MASK_TOKEN) != len(tokenizer) - 1:
        msg = "expected <mask> to be the last token id, as in XLM-R"
        raise ValueError(msg)
    tokenizer.save_pretrained(folder)
    special_map = os.path.join(folder, "special_tokens_map.json")
    if not os.path.exists(special_map):  # transformers 5 no longer writes it; the hub folder has one
        with open(special_map, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "bos_token": "<s>",
                    "cls_token": "<s>",
                    "eos_token": "</s>",
                    "mask_token": MASK_TOKEN,
                    "pad_token": "<pad>",
                    "sep_token": "</s>",
                    "unk_token": "<unk>",
                },
                handle,
                indent=2,
            )

    generator = torch.manual_seed(SEED)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,  # larger than 0.02 so texts get clearly different vectors
    )
    model = XLMRobertaModel(config).eval()
    with torch.no_grad():
        # <unk> shares the word-start marker's embedding: its own random row never gets a positive
        # lexical weight with this seed, and then the rule that drops <unk> from the sparse output
        # would go untested (CLS and EOS do get positive weights).
        embeddings = model.embeddings.word_embeddings.weight
        embeddings[tokenizer.unk_token_id] = embeddings[tokenizer.convert_tokens_to_ids(WORD_START)]
    model.save_pretrained(folder)

    colbert = torch.nn.Linear(HIDDEN, HIDDEN)
    sparse = torch.nn.Linear(HIDDEN, 1)
    with torch.no_grad():
        colbert.weight.normal_(0.0, HIDDEN**-0.5, generator=generator)
        colbert.bias.normal_(0.0, 0.1, generator=generator)
        sparse.weight.normal_(0.0, HIDDEN**-0.5, generator=generator)
        sparse.bias.fill_(SPARSE_BIAS)
    torch.save(colbert.state_dict(), os.path.join(folder, COLBERT_HEAD))
    torch.save(sparse.state_dict(), os.path.join(folder, SPARSE_HEAD))
    return folder


if __name__ == "__main__":  # python -m tests.bge_m3_checkpoint FOLDER
    import sys

    print(build_tiny_bge_m3(sys.argv[1]))


def _stub_attn_mask_utils() -> types.ModuleType:
    """FlagEmbedding 1.4.2's reranker modules import names from transformers.modeling_attn_mask_utils,
    removed in transformers 5; the embedder we compare against never calls them."""
    stub = types.ModuleType("transformers.modeling_attn_mask_utils")

    class AttentionMaskConverter:  # only referenced by the rerankers
        def __init__(self, *args, **kwargs) -> None:
            msg = "stub: transformers 5 has no modeling_attn_mask_utils"
            raise NotImplementedError(msg)

    def unavailable(*args, **kwargs):
        msg = "stub: transformers 5 has no modeling_attn_mask_utils"
        raise NotImplementedError(msg)

    stub.AttentionMaskConverter = AttentionMaskConverter
    for name in (
        "_prepare_4d_attention_mask",
        "_prepare_4d_causal_attention_mask",
        "_prepare_4d_causal_attention_mask_for_sdpa",
    ):
        setattr(stub, name, unavailable)
    return stub


def flag_embedding_model(path: str):
    """FlagEmbedding's own BGE-M3 on CPU in fp32, the reference we must match; None without FlagEmbedding."""
    if importlib.util.find_spec("FlagEmbedding") is None:
        return None
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        if importlib.util.find_spec("transformers.modeling_attn_mask_utils") is None:
            patch.setitem(sys.modules, "transformers.modeling_attn_mask_utils", _stub_attn_mask_utils())
        from FlagEmbedding import BGEM3FlagModel

        return BGEM3FlagModel(path, use_fp16=False, devices="cpu")
