"""Matryoshka (MRL) encoder for any sentence-transformers / Hugging Face folder, loaded from a local path.

Reads the folder's own declarations (modules.json, the Pooling, Dense and Normalize module configs,
sentence_bert_config.json, prompts in config_sentence_transformers.json) so its vectors equal
sentence-transformers `encode(normalize_embeddings=True)`, then writes `dense` plus one `dense_<d>`
per nested size: the first d dims, re-normalised (truncate before normalising, as MRL requires).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

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
from operators.encoders.precision import compute_dtype
from operators.schema import DENSE, dense_column, dense_type

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass
class FolderLayout:
    """What a sentence-transformers folder declares about turning token states into one vector."""

    transformer_path: str
    pooling_modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    dense_paths: list[str] = field(default_factory=list)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def read_layout(folder: str) -> FolderLayout:
    """Parse a model folder. A plain HF folder (no modules.json) gets mean pooling + normalise."""
    modules = _read_json(os.path.join(folder, "modules.json")) or []
    layout = FolderLayout(transformer_path=folder)
    if not modules:
        layout.normalize = True
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        path = os.path.join(folder, module.get("path", ""))
        if kind not in SUPPORTED_MODULES:
            msg = f"model folder {folder}: module {module['type']} is not supported (supported: {SUPPORTED_MODULES})"
            raise ValueError(msg)
        if kind == "Transformer":
            layout.transformer_path = path
            bert_config = _read_json(os.path.join(path, "sentence_bert_config.json"))
            layout.max_seq_length = bert_config.get("max_seq_length")
            layout.do_lower_case = bool(bert_config.get("do_lower_case", False))
        elif kind == "Pooling":
            layout.pooling_modes, layout.include_prompt = _pooling_config(os.path.join(path, "config.json"))
        elif kind == "Dense":
            layout.dense_paths.append(path)
        elif kind == "Normalize":
            layout.normalize = True
    if layout.max_seq_length is None:
        layout.max_seq_length = _tokenizer_max_length(layout.transformer_path)
    st_config = _read_json(os.path.join(folder, "config_sentence_transformers.json"))
    layout.prompts = {k: v for k, v in (st_config.get("prompts") or {}).items() if v}
    layout.default_prompt_name = st_config.get("default_prompt_name")
    return layout


def _tokenizer_max_length(path: str) -> int | None:
    """Where sentence-transformers 5+ keeps the length limit (`model_max_length`), capped as it caps it at
    the model's `max_position_embeddings`; None when neither says (huge sentinels count as unsaid)."""
    limit = _read_json(os.path.join(path, "tokenizer_config.json")).get("model_max_length")
    positions = _read_json(os.path.join(path, "config.json")).get("max_position_embeddings")
    if not isinstance(limit, int) or limit <= 0 or limit > 10**6:
        return None
    return min(limit, positions) if isinstance(positions, int) and positions > 0 else limit


def _pooling_config(path: str) -> tuple[tuple[str, ...], bool]:
    config = _read_json(path)
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)]
    modes = (modes,) if isinstance(modes, str) else tuple(modes or ("mean",))
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown:
        msg = f"{path}: unknown pooling mode(s) {unknown}"
        raise ValueError(msg)
    return modes, bool(config.get("include_prompt", True))


def pool(token_states: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """Pool token states (B, T, H) under an attention mask (B, T), concatenating the modes."""
    states = token_states.float()
    weights = mask.unsqueeze(-1).to(states.dtype)
    pooled = []
    for mode in modes:
        if mode == "cls":
            pooled.append(states[:, 0])
        elif mode == "max":
            pooled.append(states.masked_fill(weights == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            counts = weights.sum(dim=1).clamp(min=1e-9)
            total = (states * weights).sum(dim=1)
            pooled.append(total / (counts if mode == "mean" else counts.sqrt()))
        elif mode == "weightedmean":
            positions = torch.arange(1, states.shape[1] + 1, device=states.device, dtype=states.dtype)
            weighted = weights * positions.view(1, -1, 1)
            pooled.append((states * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=1e-9))
        elif mode == "lasttoken":
            last = mask.sum(dim=1) - 1
            pooled.append(states[torch.arange(states.shape[0], device=states.device), last])
    return torch.cat(pooled, dim=-1)


def _load_dense(path: str) -> nn.Module:
    """A sentence-transformers Dense module: Linear then its activation, weights from the folder."""
    config = _read_json(os.path.join(path, "config.json"))
    linear = nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
    weights_file = os.path.join(path, "model.safetensors")
    if os.path.isfile(weights_file):
        from safetensors.torch import load_file

        state = load_file(weights_file)
    else:
        state = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    linear.load_state_dict({key.removeprefix("linear."): value for key, value in state.items()})
    activation_name = config.get("activation_function") or "torch.nn.modules.linear.Identity"
    module_name, _, class_name = activation_name.rpartition(".")
    activation = getattr(importlib.import_module(module_name), class_name)()
    return nn.Sequential(linear, activation)


def mrl_fields(dimension: int, dims: Sequence[int]) -> list[pa.Field]:
    return [pa.field(DENSE, dense_type(dimension))] + [pa.field(dense_column(d), dense_type(d)) for d in dims]


def describe_folder(
    folder: str, dims: Sequence[int] = (), max_length: int | None = None, layout: FolderLayout | None = None
) -> EncoderDescription:
    """Identity, output columns and length limit of an MRL folder, from its config files alone."""
    layout = layout or read_layout(folder)
    config = _read_json(os.path.join(layout.transformer_path, "config.json"))
    if layout.dense_paths:
        dimension = _read_json(os.path.join(layout.dense_paths[-1], "config.json"))["out_features"]
    else:
        dimension = config["hidden_size"] * len(layout.pooling_modes)
    too_big = [d for d in dims if not 0 < int(d) <= dimension]
    if too_big:
        msg = f"nested sizes {too_big} must be between 1 and the model's dimension {dimension}"
        raise ValueError(msg)
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
        self.heads = nn.Sequential(*[_load_dense(path) for path in self.layout.dense_paths]).to(device).eval()
        description = describe_folder(folder, dims, max_length, self.layout)
        super().__init__(tokenizer, device, description.max_length, limits)
        self.dimension = description.dimension
        self.dims = description.dims
        self.model_id = description.model_id

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

    def output_fields(self) -> list[pa.Field]:
        return mrl_fields(self.dimension, self.dims)

    def _prepare_texts(self, texts: Sequence[str], prompt_name: str | None) -> list[str]:
        prompt = self.prompt_for(prompt_name)
        if self.layout.do_lower_case:
            return [(prompt + text).lower() for text in texts]
        return [prompt + text for text in texts] if prompt else list(texts)

    @torch.inference_mode()
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embedding = self.heads(pool(states, attention_mask, self.layout.pooling_modes))
        raw = embedding.float()
        outputs = {DENSE: _unit(raw).cpu().numpy()}
        for d in self.dims:
            outputs[dense_column(d)] = _unit(raw[:, :d]).cpu().numpy()
        return outputs

    def _to_arrow(self, outputs: dict[str, list | np.ndarray]) -> dict[str, pa.Array]:
        columns = {}
        for f in self.output_fields():
            values = np.asarray(outputs[f.name], dtype=np.float32).reshape(-1)
            columns[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(values), f.type.list_size)
        return columns


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (a zero vector stays zero rather than turning into NaN)."""
    return torch.nn.functional.normalize(vectors, p=2, dim=-1)
