"""What a model folder declares, read from its config files without torch: the driver describes an encoder
(identity, output columns, length limit) before any worker loads it, and a run's driver that never imports
torch saves the ~2 s of CPU its import costs (benchmarks/overhead.py). The encoders (operators/encoders/mrl.py,
bge_m3.py, modules.py) build on these and re-export them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from operators.encoders.base import EncoderDescription, EncoderSpec, folder_name, weights_fingerprint
from operators.schema import COLBERT, DENSE, SPARSE, SPARSE_TYPE, colbert_type, dense_column, dense_type

# -- sentence-transformers modules after the Transformer (operators/encoders/modules.py builds them) ------------
EMBEDDING = "sentence_embedding"
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = {  # sentence-transformers < 5 saved one flag per mode, in this concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
MODULE_KINDS = ("Pooling", "Dense", "Normalize")


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def pooling_modes(config: dict) -> tuple[str, ...]:
    """The poolings a Pooling config asks for, in concatenation order (legacy one-flag-per-mode configs too)."""
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)]
    modes = (modes,) if isinstance(modes, str) else tuple(modes or ("mean",))
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown:
        msg = f"unknown pooling mode(s) {unknown} (supported: {', '.join(POOLING_MODES)})"
        raise ValueError(msg)
    return modes


def module_output_dim(kind: str, config: dict, input_dim: int) -> int:
    """A module's output dimension from its config alone."""
    if kind == "Pooling":
        return input_dim * len(pooling_modes(config))
    if kind == "Dense":
        return int(config["out_features"])
    return input_dim  # Normalize


# -- Matryoshka (MRL) folders: sentence-transformers / Hugging Face layouts ---------------------------------------
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
        elif kind in MODULE_KINDS:
            layout.modules.append((kind, path if module.get("path") else ""))
        else:
            supported = ", ".join([TRANSFORMER, *MODULE_KINDS])
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


def check_nested_sizes(dims: Sequence[int], dimension: int) -> None:
    """Nested Matryoshka sizes are prefixes of the embedding: each between 1 and its dimension."""
    too_big = [d for d in dims if not 0 < int(d) <= dimension]
    if too_big:
        msg = f"nested sizes {too_big} must be between 1 and the model's dimension {dimension}"
        raise ValueError(msg)


def mrl_fields(dimension: int, dims: Sequence[int]) -> list[pa.Field]:
    return [pa.field(DENSE, dense_type(dimension))] + [pa.field(dense_column(d), dense_type(d)) for d in dims]


def describe_mrl_folder(
    folder: str, dims: Sequence[int] = (), max_length: int | None = None, layout: FolderLayout | None = None
) -> EncoderDescription:
    """Identity, output columns and length limit of an MRL folder, from its config files alone."""
    layout = layout or read_layout(folder)
    config = read_json(os.path.join(layout.transformer_path, "config.json"))
    dimension = int(config["hidden_size"])
    for index, (kind, _path) in enumerate(layout.modules):
        dimension = module_output_dim(kind, layout.module_config(index), dimension)
    check_nested_sizes(dims, dimension)
    limit = int(max_length or layout.max_seq_length or config.get("max_position_embeddings", 512))
    nested = sorted({int(d) for d in dims if int(d) != dimension}, reverse=True)
    model_id = f"mrl:{folder_name(folder)}:{weights_fingerprint(folder)}:max_length={limit}"
    return EncoderDescription(model_id, mrl_fields(dimension, nested), limit, dimension, nested)


# -- BGE-M3 folders: BAAI/bge-m3's layout -------------------------------------------------------------------------
OUTPUTS = (DENSE, SPARSE, COLBERT)
DEFAULT_MAX_LENGTH = 8192  # what BAAI/bge-m3 was trained for; capped by a smaller checkpoint's positions
COLBERT_HEAD = "colbert_linear.pt"
SPARSE_HEAD = "sparse_linear.pt"
HEAD_FILES = (COLBERT_HEAD, SPARSE_HEAD)  # beside the backbone, they make a folder BGE-M3


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


def position_limit(config: dict) -> int:
    """Longest input the position table allows: XLM-R positions start after pad_token_id (8194 -> 8192)."""
    pad = config.get("pad_token_id")
    return int(config["max_position_embeddings"]) - (pad + 1 if pad is not None else 0)


def describe_bge_m3_folder(folder: str, spec: EncoderSpec) -> EncoderDescription:
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
    limit = position_limit(config)
    max_length = int(spec.max_length or min(DEFAULT_MAX_LENGTH, limit))
    if not 2 <= max_length <= limit:
        msg = f"max_length {max_length} is outside what {folder} supports (2..{limit} tokens)"
        raise ValueError(msg)
    dense_dim = int(config["hidden_size"])
    outputs = requested_outputs(spec.outputs)
    colbert_dim = _colbert_dim(folder) if COLBERT in outputs else 0  # its head's shape: torch reads it
    fields = bge_m3_fields(outputs, dense_dim, colbert_dim)
    model_id = f"bge-m3:{folder_name(folder)}:{weights_fingerprint(folder)}:max_length={max_length}"
    return EncoderDescription(model_id, fields, max_length, dense_dim)


def _colbert_dim(folder: str) -> int:
    from operators.encoders.bge_m3 import _linear_state

    return int(_linear_state(os.path.join(folder, COLBERT_HEAD), mmap=True)["weight"].shape[0])
