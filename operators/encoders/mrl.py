"""Matryoshka (MRL) encoder for any sentence-transformers / Hugging Face folder, loaded from a local path.

The folder's `modules.json` names the modules after the Transformer (Pooling, Dense, Normalize), assembled
from their own configs (operators/encoders/modules.py) as sentence-transformers assembles them, with the
prompts of config_sentence_transformers.json and the Transformer's sentence_bert_config.json
(max_seq_length, do_lower_case): a folder's `embed` output is what sentence-transformers `encode` gives
for it, and the table gets `dense` (that vector at unit length, `encode(normalize_embeddings=True)`) plus
one `dense_<d>` per nested size: the first d dims, re-normalised (truncate before normalising, as MRL
requires). A plain Hugging Face folder (no modules.json) gets mean pooling, as sentence-transformers gives it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from operators.encoders.base import (
    BatchLimits,
    EncoderDescription,
    EncoderSpec,
    TransformerEncoder,
    default_device,
    default_dtype,
    folder_name,
    weights_fingerprint,
)
from operators.encoders.modules import EMBEDDING, MODULES, Pooling, read_json, span_means, unit
from operators.encoders.precision import compute_dtype
from operators.schema import DENSE, dense_column, dense_type

TRANSFORMER = "Transformer"


@dataclass
class FolderLayout:
    """What a sentence-transformers folder declares: the backbone, the modules after it, text handling."""

    transformer_path: str
    modules: list[tuple[str, str]] = field(default_factory=list)  # (kind, folder) after the Transformer, in order
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _path in self.modules]

    def module_config(self, index: int) -> dict:
        kind, path = self.modules[index]
        return read_json(os.path.join(path, "config.json")) if path else {}


def read_layout(folder: str) -> FolderLayout:
    """Parse a model folder. A plain HF folder (no modules.json) is a Transformer and mean Pooling."""
    declared = read_json(os.path.join(folder, "modules.json")) or [
        {"type": TRANSFORMER, "path": ""}, {"type": "Pooling", "path": ""}]
    layout = FolderLayout(transformer_path=folder)
    for module in declared:
        kind = module["type"].rsplit(".", 1)[-1]
        path = os.path.join(folder, module.get("path", ""))
        if kind == TRANSFORMER:
            layout.transformer_path = path
            bert_config = read_json(os.path.join(path, "sentence_bert_config.json"))
            layout.max_seq_length = bert_config.get("max_seq_length")
            layout.do_lower_case = bool(bert_config.get("do_lower_case", False))
        elif kind in MODULES:
            layout.modules.append((kind, path if module.get("path") else ""))
        else:
            supported = ", ".join([TRANSFORMER, *MODULES])
            msg = f"model folder {folder}: module {module['type']} is not supported (supported: {supported})"
            raise ValueError(msg)
    if layout.max_seq_length is None:
        layout.max_seq_length = _tokenizer_max_length(layout.transformer_path)
    st_config = read_json(os.path.join(folder, "config_sentence_transformers.json"))
    layout.prompts = {k: v for k, v in (st_config.get("prompts") or {}).items() if v}
    layout.default_prompt_name = st_config.get("default_prompt_name")
    return layout


def _tokenizer_max_length(path: str) -> int | None:
    """Where sentence-transformers 5+ keeps the length limit (`model_max_length`), capped as it caps it at
    the model's `max_position_embeddings`; None when neither says (huge sentinels count as unsaid)."""
    limit = read_json(os.path.join(path, "tokenizer_config.json")).get("model_max_length")
    positions = read_json(os.path.join(path, "config.json")).get("max_position_embeddings")
    if not isinstance(limit, int) or limit <= 0 or limit > 10**6:
        return None
    return min(limit, positions) if isinstance(positions, int) and positions > 0 else limit


def load_modules(layout: FolderLayout) -> nn.Sequential:
    """The folder's modules after the Transformer, with their weights."""
    loaded = []
    for index, (kind, path) in enumerate(layout.modules):
        if kind == "Pooling":
            loaded.append(Pooling.from_config(layout.module_config(index)))
        else:
            loaded.append(MODULES[kind].load(path))
    return nn.Sequential(*loaded)


def check_nested_sizes(dims: Sequence[int], dimension: int) -> None:
    """Nested Matryoshka sizes are prefixes of the embedding: each between 1 and its dimension."""
    too_big = [d for d in dims if not 0 < int(d) <= dimension]
    if too_big:
        msg = f"nested sizes {too_big} must be between 1 and the model's dimension {dimension}"
        raise ValueError(msg)


def mrl_fields(dimension: int, dims: Sequence[int]) -> list[pa.Field]:
    return [pa.field(DENSE, dense_type(dimension))] + [pa.field(dense_column(d), dense_type(d)) for d in dims]


def describe_folder(
    folder: str, dims: Sequence[int] = (), max_length: int | None = None, layout: FolderLayout | None = None
) -> EncoderDescription:
    """Identity, output columns and length limit of an MRL folder, from its config files alone."""
    layout = layout or read_layout(folder)
    config = read_json(os.path.join(layout.transformer_path, "config.json"))
    dimension = int(config["hidden_size"])
    for index, (kind, _path) in enumerate(layout.modules):
        dimension = MODULES[kind].output_dim(layout.module_config(index), dimension)
    check_nested_sizes(dims, dimension)
    limit = int(max_length or layout.max_seq_length or config.get("max_position_embeddings", 512))
    nested = sorted({int(d) for d in dims if int(d) != dimension}, reverse=True)
    model_id = f"mrl:{folder_name(folder)}:{weights_fingerprint(folder)}:max_length={limit}"
    return EncoderDescription(model_id, mrl_fields(dimension, nested), limit, dimension, nested)


class MatryoshkaEncoder(TransformerEncoder):
    """Dense embeddings at full size and at each nested Matryoshka size."""

    def __init__(
        self,
        folder: str,
        dims: Sequence[int] = (),
        max_length: int | None = None,
        device: torch.device | None = None,
        limits: BatchLimits | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.folder = folder
        self.layout = read_layout(folder)
        device = device or default_device()
        tokenizer = AutoTokenizer.from_pretrained(self.layout.transformer_path)
        self.model = AutoModel.from_pretrained(
            self.layout.transformer_path, dtype=dtype or default_dtype(device), attn_implementation="sdpa"
        )
        self.model.to(device).eval()
        self.modules = load_modules(self.layout).to(device).eval()
        description = describe_folder(folder, dims, max_length, self.layout)
        super().__init__(tokenizer, device, description.max_length, limits)
        self.dimension = description.dimension
        self.dims = description.dims
        self.model_id = description.model_id
        self._prompt_lengths: dict[str, int] = {}

    @classmethod
    def from_spec(cls, folder: str, spec: EncoderSpec) -> MatryoshkaEncoder:
        device = torch.device(spec.device) if spec.device else default_device()
        return cls(
            folder,
            dims=spec.dims,
            max_length=spec.max_length,
            device=device,
            limits=BatchLimits(spec.max_tokens_per_batch, spec.max_rows_per_batch),
            dtype=compute_dtype(spec.precision, device),
        )

    def prompt_for(self, prompt_name: str | None) -> str:
        """The folder's prompt for `prompt_name` ("query"/"document"), else its default prompt, else ""."""
        if prompt_name and prompt_name in self.layout.prompts:
            return self.layout.prompts[prompt_name]
        if self.layout.default_prompt_name:
            return self.layout.prompts.get(self.layout.default_prompt_name, "")
        return ""

    def prompt_length(self, prompt: str) -> int:
        """Tokens the prompt takes at the start of every text (the leading special token included, a trailing
        one not), as sentence-transformers measures it to leave the prompt out of pooling."""
        if prompt not in self._prompt_lengths:
            ids = self._token_ids([self._cased(prompt)], self.max_length)[0]
            trailing = bool(ids) and ids[-1] in self.tokenizer.all_special_ids
            self._prompt_lengths[prompt] = len(ids) - int(trailing)
        return self._prompt_lengths[prompt]

    def output_fields(self) -> list[pa.Field]:
        return mrl_fields(self.dimension, self.dims)

    def _cased(self, text: str) -> str:
        return text.lower() if self.layout.do_lower_case else text

    def _prepare_texts(self, texts: Sequence[str], prompt_name: str | None) -> list[str]:
        prompt = self.prompt_for(prompt_name)
        if self.layout.do_lower_case:
            return [(prompt + text).lower() for text in texts]
        return [prompt + text for text in texts] if prompt else list(texts)

    def _forward_for(self, prompt_name: str | None) -> Callable[[torch.Tensor, torch.Tensor], dict]:
        prompt = self.prompt_for(prompt_name)
        if not prompt or not any(isinstance(m, Pooling) and not m.include_prompt for m in self.modules):
            return self._forward
        return partial(self._forward, prompt_length=self.prompt_length(prompt))

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int = 0) -> torch.Tensor:
        """The folder's sentence embedding of one padded batch: what sentence-transformers `encode` returns."""
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        features = {"token_embeddings": states, "attention_mask": attention_mask, "prompt_length": prompt_length}
        return self.modules(features)[EMBEDDING].float()

    @torch.inference_mode()
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prompt_length: int = 0) -> dict[str, np.ndarray]:
        embedding = self.embed(input_ids, attention_mask, prompt_length)
        outputs = {DENSE: unit(embedding).cpu().numpy()}
        for d in self.dims:
            outputs[dense_column(d)] = unit(embedding[:, :d]).cpu().numpy()
        return outputs

    # -- late chunking (operators/passages.py) ------------------------------------------------------
    @torch.inference_mode()
    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states of one padded batch, in fp32."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()

    @torch.inference_mode()
    def span_outputs(self, states: torch.Tensor, input_ids: torch.Tensor,
                     spans: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """Each span's vector from one sequence's token states (L, H): the mean of the span's states, then the
        folder's modules after its Pooling (Dense, Normalize), then unit length and the nested sizes as for
        whole texts. Mean pooling whatever the folder pools with: a CLS or last-token state belongs to the
        whole window, not to one passage."""
        pooling = [m for m in self.modules if isinstance(m, Pooling)]
        if any(len(m.modes) != 1 for m in pooling):
            msg = "late chunking needs a model folder that pools with one mode (its Dense layers expect one vector)"
            raise ValueError(msg)
        features = {EMBEDDING: span_means(states, spans)}
        for module in self.modules:
            if not isinstance(module, Pooling):
                features = module(features)
        embedding = features[EMBEDDING].float()
        outputs = {DENSE: unit(embedding).cpu().numpy()}
        for d in self.dims:
            outputs[dense_column(d)] = unit(embedding[:, :d]).cpu().numpy()
        return outputs

    def _to_arrow(self, outputs: dict[str, list | np.ndarray]) -> dict[str, pa.Array]:
        columns = {}
        for f in self.output_fields():
            values = np.asarray(outputs[f.name], dtype=np.float32).reshape(-1)
            columns[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(values), f.type.list_size)
        return columns
