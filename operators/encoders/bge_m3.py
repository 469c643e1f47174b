"""BGE-M3: one XLM-RoBERTa forward pass per batch, up to three outputs (dense, sparse, colbert).

Reproduces FlagEmbedding's `BGEM3FlagModel.encode` (inference/embedder/encoder_only/m3.py and
finetune/embedder/encoder_only/m3/modeling.py) on a folder in BAAI/bge-m3's layout, but inside the
shared token-budget batching loop and with the per-token post-processing done on whole batches in
torch instead of a Python loop per token. Semantics: docs/encoders.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from operators.encoders.base import (
    BatchLimits,
    EncoderSpec,
    TransformerEncoder,
    default_device,
)
from operators.encoders.folders import (
    COLBERT_HEAD,
    DEFAULT_MAX_LENGTH,
    SPARSE_HEAD,
    bge_m3_fields,
    requested_outputs,
)
from operators.encoders.folders import describe_bge_m3_folder as describe_folder
from operators.encoders.modules import span_means, unit
from operators.encoders.precision import compute_dtype
from operators.schema import COLBERT, DENSE, SPARSE, SPARSE_TYPE

SparseRow = tuple[np.ndarray, np.ndarray]  # (token ids int32 ascending, weights float32)


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
        self.unused_ids = np.array(sorted({i for i in special if i is not None}), dtype=np.int64)

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
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> _InFlight:
        """Queue the batch's device work and the copies of what the outputs need, without waiting for
        the device: no `.item()`, boolean indexing or `.cpu()` here, so the host can launch the next
        batch while this one computes. Padded rows are copied back whole and cut on the host
        (length-sorted batches pad little; the ColBERT head on the padding costs ~0.3% of a layer)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.float()  # heads and normalisation in fp32 whatever the backbone's dtype
        device: dict[str, torch.Tensor] = {"lengths": attention_mask.sum(dim=1)}
        if DENSE in self.outputs:
            device[DENSE] = unit(hidden[:, 0])
        if SPARSE in self.outputs:
            device["weights"] = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
            device["ids"] = input_ids
        if COLBERT in self.outputs:
            device[COLBERT] = unit(self.colbert_linear(hidden[:, 1:])).to(torch.float16)
        return _InFlight.start(device)

    def _collect(self, result: _InFlight) -> dict[str, list | np.ndarray]:
        host = result.wait()
        lengths = host["lengths"]
        outputs: dict[str, list | np.ndarray] = {}
        if DENSE in self.outputs:
            outputs[DENSE] = host[DENSE]
        if SPARSE in self.outputs:
            valid = _valid(lengths, host["ids"].shape[1])
            outputs[SPARSE] = max_weight_per_id(host["ids"], host["weights"], valid, self.unused_ids)
        if COLBERT in self.outputs:  # positions 1..length-1: the CLS dropped, the trailing </s> kept
            vectors = host[COLBERT]
            outputs[COLBERT] = _split_rows(vectors[_valid(lengths - 1, vectors.shape[1])], lengths - 1)
        return outputs

    def _lexical_weights(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[SparseRow]:
        """The lexical weights of one batch of hidden states, synchronously (what `_forward` queues and
        `_collect` finishes, in one call)."""
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
        return max_weight_per_id(input_ids.cpu().numpy(), weights.float().cpu().numpy(),
                                 attention_mask.bool().cpu().numpy(), self.unused_ids)

    # -- late chunking (operators/passages.py) ------------------------------------------------------
    @torch.inference_mode()
    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states of one padded batch, in fp32."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()

    @torch.inference_mode()
    def span_outputs(self, states: torch.Tensor, input_ids: torch.Tensor,
                     spans: list[tuple[int, int]]) -> dict[str, list | np.ndarray]:
        """Each span's outputs from one sequence's token states (L, H). Dense: the mean of the span's states,
        L2-normalised (the CLS state belongs to the whole window, not to one passage); sparse: the lexical
        weights of the span's tokens (max per id, special ids dropped); ColBERT: the span's token vectors."""
        outputs: dict[str, list | np.ndarray] = {}
        if DENSE in self.outputs:
            outputs[DENSE] = unit(span_means(states, spans)).cpu().numpy()
        if SPARSE in self.outputs:
            weights = torch.relu(self.sparse_linear(states)).squeeze(-1).cpu().numpy()
            ids = input_ids.cpu().numpy()
            outputs[SPARSE] = [max_weight_per_id(ids[None, start:end], weights[None, start:end],
                                                 np.ones((1, end - start), dtype=bool), self.unused_ids)[0]
                               for start, end in spans]
        if COLBERT in self.outputs:
            vectors = unit(self.colbert_linear(states)).to(torch.float16).cpu().numpy()
            outputs[COLBERT] = [vectors[start:end] for start, end in spans]
        return outputs

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


def max_weight_per_id(ids: np.ndarray, weights: np.ndarray, valid: np.ndarray, unused: np.ndarray) -> list[SparseRow]:
    """FlagEmbedding's lexical weights from per-position raw weights relu(sparse_linear(h)) of a padded
    batch: padding, the `unused` special ids and weights <= 0 dropped, the max kept for a repeated id,
    ids ascending. One sort over (row, token id) keys for the whole batch instead of a dict per text."""
    keep = valid & (weights > 0) & ~np.isin(ids, unused)
    rows, positions = np.nonzero(keep)
    token_ids = ids[rows, positions]
    vocab = int(token_ids.max(initial=0)) + 1
    keys = rows.astype(np.int64) * vocab + token_ids
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    best = np.maximum.reduceat(weights[rows, positions][order], starts) if len(keys) else np.zeros(0, np.float32)
    unique = keys[starts]
    counts = np.bincount(unique // vocab, minlength=ids.shape[0])
    return list(zip(_split_rows((unique % vocab).astype(np.int32), counts),
                    _split_rows(best.astype(np.float32, copy=False), counts), strict=True))


class _InFlight:
    """Device outputs of one batch on their way to the host: on a GPU, copies into pinned memory queued
    behind the batch's kernels, and an event that says when they have landed."""

    def __init__(self, tensors: dict[str, torch.Tensor], event: torch.cuda.Event | None) -> None:
        self.tensors = tensors
        self.event = event

    @classmethod
    def start(cls, device: dict[str, torch.Tensor]) -> _InFlight:
        if not any(tensor.is_cuda for tensor in device.values()):
            return cls(device, None)
        host = {}
        for name, tensor in device.items():
            host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host[name].copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, event)

    def wait(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {name: tensor.numpy() for name, tensor in self.tensors.items()}


def _valid(lengths: np.ndarray, width: int) -> np.ndarray:
    """(rows, width) mask of the unpadded positions of right-padded rows."""
    return np.arange(width)[None, :] < lengths[:, None]


def _split_rows(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Consecutive pieces of `flat`, one per row, of `counts` items each."""
    bounds = np.cumsum(np.r_[0, counts])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


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
