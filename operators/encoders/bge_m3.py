"""BGE-M3: one XLM-RoBERTa forward pass per batch, up to three outputs (dense, sparse, colbert).

Reproduces FlagEmbedding's `BGEM3FlagModel.encode` (inference/embedder/encoder_only/m3.py and
finetune/embedder/encoder_only/m3/modeling.py) on a folder in BAAI/bge-m3's layout, but inside the
shared token-budget batching loop and with the per-token post-processing done on whole batches in
torch instead of a Python loop per token. Semantics: docs/encoders.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from operators.encoders.base import (
    BatchLimits,
    EncoderDescription,
    EncoderSpec,
    TransformerEncoder,
    default_device,
    folder_name,
    weights_fingerprint,
)
from operators.encoders.modules import unit
from operators.encoders.precision import compute_dtype
from operators.schema import COLBERT, DENSE, SPARSE, SPARSE_TYPE, colbert_type, dense_type

OUTPUTS = (DENSE, SPARSE, COLBERT)
DEFAULT_MAX_LENGTH = 8192  # what BAAI/bge-m3 was trained for; capped by a smaller checkpoint's positions
COLBERT_HEAD = "colbert_linear.pt"
SPARSE_HEAD = "sparse_linear.pt"
HEAD_FILES = (COLBERT_HEAD, SPARSE_HEAD)  # beside the backbone, they make a folder BGE-M3

SparseRow = tuple[np.ndarray, np.ndarray]  # (token ids int32 ascending, weights float32)


def is_bge_m3_folder(path: str) -> bool:
    """A folder in BAAI/bge-m3's layout carries both head files next to the backbone."""
    return all(os.path.isfile(os.path.join(path, name)) for name in HEAD_FILES)


def requested_outputs(outputs: Sequence[str]) -> list[str]:
    """The outputs to compute, in canonical order; empty means all three."""
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        msg = f"unknown BGE-M3 outputs {unknown}; choose from {list(OUTPUTS)}"
        raise ValueError(msg)
    return [name for name in OUTPUTS if name in outputs] if outputs else list(OUTPUTS)


def bge_m3_fields(outputs: Sequence[str], dense_dim: int, colbert_dim: int) -> list[pa.Field]:
    types = {DENSE: dense_type(dense_dim), SPARSE: SPARSE_TYPE, COLBERT: colbert_type(colbert_dim)}
    return [pa.field(name, types[name]) for name in outputs]


def _linear_state(path: str, device: torch.device | str = "cpu", mmap: bool = False) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    weight = state.get("weight")
    if weight is None or weight.dim() != 2:
        msg = f"{path} is not a torch.nn.Linear state dict (no 2-d 'weight')"
        raise ValueError(msg)
    return state


def _load_linear(path: str, device: torch.device) -> torch.nn.Linear:
    """A Linear head from a state dict; its shape comes from the weights, so colbert_dim != hidden works.
    Kept in fp32 whatever the backbone's dtype: the heads are tiny next to the backbone."""
    state = _linear_state(path, device)
    out_features, in_features = state["weight"].shape
    head = torch.nn.Linear(in_features, out_features, bias="bias" in state, device=device)
    head.load_state_dict(state)
    return head.float().eval()


def _position_limit(config: dict) -> int:
    """Longest input the position table allows: XLM-R positions start after pad_token_id (8194 -> 8192)."""
    pad = config.get("pad_token_id")
    return int(config["max_position_embeddings"]) - (pad + 1 if pad is not None else 0)


def describe_folder(folder: str, spec: EncoderSpec) -> EncoderDescription:
    """Identity, output columns and length limit of a BGE-M3 folder without loading the backbone.

    The driver writes this model_id into the table's metadata and the workers write the encoder's
    into every row, so both come from here. It leaves out the compute dtype on purpose: that is
    chosen per worker (fp32 on CPU, bf16 on GPU) and the driver cannot know it.
    """
    if spec.dims:
        msg = f"nested sizes (--dims {spec.dims}) apply to Matryoshka models, not BGE-M3"
        raise ValueError(msg)
    with open(os.path.join(folder, "config.json")) as handle:
        config = json.load(handle)
    limit = _position_limit(config)
    max_length = int(spec.max_length or min(DEFAULT_MAX_LENGTH, limit))
    if not 2 <= max_length <= limit:
        msg = f"max_length {max_length} is outside what {folder} supports (2..{limit} tokens)"
        raise ValueError(msg)
    dense_dim = int(config["hidden_size"])
    colbert_dim = int(_linear_state(os.path.join(folder, COLBERT_HEAD), mmap=True)["weight"].shape[0])
    fields = bge_m3_fields(requested_outputs(spec.outputs), dense_dim, colbert_dim)
    model_id = f"bge-m3:{folder_name(folder)}:{weights_fingerprint(folder)}:max_length={max_length}"
    return EncoderDescription(model_id, fields, max_length, dense_dim)


class BgeM3Encoder(TransformerEncoder):
    """Dense, sparse (lexical weights) and ColBERT vectors from one forward pass per batch."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        colbert_linear: torch.nn.Linear,
        sparse_linear: torch.nn.Linear,
        device: torch.device,
        max_length: int = DEFAULT_MAX_LENGTH,
        outputs: Sequence[str] = (),
        limits: BatchLimits | None = None,
        model_id: str = "bge-m3",
    ) -> None:
        super().__init__(tokenizer, device, max_length, limits)
        self.outputs = requested_outputs(outputs)
        self.model = model.eval()
        self.colbert_linear = colbert_linear
        self.sparse_linear = sparse_linear
        self.model_id = model_id
        self.dense_dim = int(model.config.hidden_size)
        self.colbert_dim = int(colbert_linear.out_features)
        # FlagEmbedding drops these ids from the lexical weights (cls, eos, pad, unk).
        special = [
            tokenizer.cls_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            tokenizer.unk_token_id,
        ]
        self.unused_ids = torch.tensor(sorted({i for i in special if i is not None}), device=device)

    @classmethod
    def from_spec(cls, path: str, spec: EncoderSpec) -> BgeM3Encoder:
        """Load a folder in BAAI/bge-m3 layout: backbone + tokenizer + colbert_linear.pt + sparse_linear.pt."""
        from transformers import AutoModel, AutoTokenizer

        description = describe_folder(path, spec)
        device = torch.device(spec.device) if spec.device else default_device()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=compute_dtype(spec.precision, device)).to(device)
        return cls(
            model,
            tokenizer,
            _load_linear(os.path.join(path, COLBERT_HEAD), device),
            _load_linear(os.path.join(path, SPARSE_HEAD), device),
            device,
            max_length=description.max_length,
            outputs=[f.name for f in description.fields],
            limits=BatchLimits(max_tokens=spec.max_tokens_per_batch, max_rows=spec.max_rows_per_batch),
            model_id=description.model_id,
        )

    def output_fields(self) -> list[pa.Field]:
        return bge_m3_fields(self.outputs, self.dense_dim, self.colbert_dim)

    # -- one padded batch ----------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, list | np.ndarray]:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.float()  # heads and normalisation in fp32 whatever the backbone's dtype
        result: dict[str, list | np.ndarray] = {}
        if DENSE in self.outputs:
            result[DENSE] = unit(hidden[:, 0]).cpu().numpy()
        if SPARSE in self.outputs:
            result[SPARSE] = self._lexical_weights(hidden, input_ids, attention_mask)
        if COLBERT in self.outputs:
            result[COLBERT] = self._colbert_vectors(hidden, attention_mask)
        return result

    def _lexical_weights(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[SparseRow]:
        """relu(sparse_linear(h)) per token; special ids and weights <= 0 dropped; max over repeats.

        One sort over (row, token id) keys for the whole batch instead of a dict per text.
        """
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
        keep = attention_mask.bool() & (weights > 0) & ~torch.isin(input_ids, self.unused_ids)
        rows = torch.nonzero(keep, as_tuple=True)[0]
        ids = input_ids[keep]
        vocab = int(input_ids.max().item()) + 1 if input_ids.numel() else 1
        keys, inverse = torch.unique(rows * vocab + ids, sorted=True, return_inverse=True)
        best = torch.zeros(len(keys), dtype=weights.dtype, device=weights.device)
        best = best.scatter_reduce(0, inverse, weights[keep], reduce="amax", include_self=False)
        counts = torch.bincount(keys // vocab, minlength=input_ids.shape[0]).cpu().tolist()
        token_ids = (keys % vocab).to(torch.int32).cpu().numpy()
        values = best.cpu().numpy()
        bounds = np.cumsum([0, *counts])
        return [(token_ids[a:b], values[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _colbert_vectors(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> list[np.ndarray]:
        """colbert_linear(h[:, 1:]) on the unpadded positions (CLS dropped, trailing </s> kept),
        L2-normalised, float16 per row."""
        mask = attention_mask[:, 1:].bool()
        vectors = unit(self.colbert_linear(hidden[:, 1:][mask]))
        flat = vectors.to(torch.float16).cpu().numpy()
        counts = mask.sum(dim=1).cpu().tolist()
        bounds = np.cumsum([0, *counts])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    # -- Arrow ---------------------------------------------------------------------------------
    def _to_arrow(self, outputs: dict[str, list | np.ndarray]) -> dict[str, pa.Array]:
        columns: dict[str, pa.Array] = {}
        if DENSE in self.outputs:
            dense = np.asarray(outputs[DENSE], dtype=np.float32).reshape(-1, self.dense_dim)
            columns[DENSE] = pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), self.dense_dim)
        if SPARSE in self.outputs:
            columns[SPARSE] = _sparse_array(outputs[SPARSE])
        if COLBERT in self.outputs:
            columns[COLBERT] = _colbert_array(outputs[COLBERT], self.colbert_dim)
        return columns


def _offsets(lengths: list[int]) -> pa.Array:
    return pa.array(np.cumsum([0, *lengths]), type=pa.int32())


def _sparse_array(rows: list[SparseRow]) -> pa.Array:
    """struct<indices: list<int32>, values: list<float32>> built from flat buffers, not per-row objects."""
    lengths = [len(ids) for ids, _ in rows]
    offsets = _offsets(lengths)
    ids = np.concatenate([ids for ids, _ in rows]) if rows else np.zeros(0, np.int32)
    values = np.concatenate([vals for _, vals in rows]) if rows else np.zeros(0, np.float32)
    indices = pa.ListArray.from_arrays(offsets, pa.array(ids.astype(np.int32, copy=False)))
    weights = pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.float32, copy=False)))
    return pa.StructArray.from_arrays([indices, weights], fields=list(SPARSE_TYPE))


def _colbert_array(rows: list[np.ndarray], dim: int) -> pa.Array:
    """list<fixed_size_list<float16>[dim]> built from one concatenated float16 buffer."""
    flat = np.concatenate(rows) if rows else np.zeros((0, dim), np.float16)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(np.float16, copy=False).ravel()), dim)
    return pa.ListArray.from_arrays(_offsets([len(row) for row in rows]), vectors)
