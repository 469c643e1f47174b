"""sentence-transformers' modules after the Transformer (Pooling, Dense, Normalize), assembled from a model
folder's `modules.json` as sentence-transformers does, so a folder gives the vectors it gives.

Each module reads the config keys sentence-transformers saves for it, and runs on the same `features` dict
(`token_embeddings`, `attention_mask`, `prompt_length`, `sentence_embedding`). The config files alone give
the output dimension (`output_dim`), so the driver can describe an encoder without loading weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from operators.encoders.folders import (
    EMBEDDING,
    POOLING_MODES,
    module_output_dim,
    pooling_modes,
    read_json,
)

DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"  # sentence-transformers' Dense default


def unit(vectors: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (a zero vector stays zero rather than turning into NaN)."""
    return F.normalize(vectors, p=2, dim=-1)


def span_means(states: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(spans, H) means of one sequence's token states (L, H) over each [start, end) span (late chunking)."""
    weights = torch.zeros(len(spans), states.shape[0], device=states.device, dtype=states.dtype)
    for row, (start, end) in enumerate(spans):
        weights[row, start:end] = 1.0 / max(end - start, 1)
    return weights @ states


class Pooling(nn.Module):
    """Token states -> one vector: the modes' poolings concatenated; prompt tokens left out when the
    folder says `include_prompt: false` (what INSTRUCTOR-style models want)."""

    def __init__(self, modes: Sequence[str] = ("mean",), include_prompt: bool = True) -> None:
        super().__init__()
        unknown = [mode for mode in modes if mode not in POOLING_MODES]
        if unknown:
            msg = f"unknown pooling mode(s) {unknown} (supported: {', '.join(POOLING_MODES)})"
            raise ValueError(msg)
        self.modes = tuple(modes)
        self.include_prompt = include_prompt

    @classmethod
    def from_config(cls, config: dict) -> Pooling:
        return cls(pooling_modes(config), bool(config.get("include_prompt", True)))

    @staticmethod
    def output_dim(config: dict, input_dim: int) -> int:
        return module_output_dim("Pooling", config, input_dim)

    def forward(self, features: dict) -> dict:
        states = features["token_embeddings"].float()
        mask = features["attention_mask"]
        prompt_length = features.get("prompt_length") or 0
        if not self.include_prompt and prompt_length:
            mask = mask.clone()
            mask[:, :prompt_length] = 0
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = [self._pool(mode, states, mask, weights) for mode in self.modes]
        features[EMBEDDING] = torch.cat(pooled, dim=-1)
        return features

    @staticmethod
    def _pool(mode: str, states: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(states.shape[0], device=states.device)
        if mode == "cls":  # the first token pooling sees (the one after the prompt when the prompt is left out)
            return states[rows, mask.int().argmax(dim=1)]
        if mode == "max":
            return states.masked_fill(weights == 0, float("-inf")).max(dim=1).values
        if mode in ("mean", "mean_sqrt_len_tokens"):
            counts = weights.sum(dim=1).clamp(min=1e-9)
            total = (states * weights).sum(dim=1)
            return total / (counts if mode == "mean" else counts.sqrt())
        if mode == "weightedmean":  # weights are token positions, counted from the first token
            positions = torch.arange(1, states.shape[1] + 1, device=states.device, dtype=states.dtype)
            weighted = weights * positions.view(1, -1, 1)
            return (states * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=1e-9)
        # lasttoken: the last token pooling sees
        length = mask.shape[1]
        seen, from_end = mask.flip(1).max(dim=1)
        last = torch.where(seen == 0, length - 1, length - 1 - from_end)
        return (states * weights)[rows, last]


class Dense(nn.Module):
    """A feed-forward layer (Linear, then its activation) on the pooled vector."""

    def __init__(self, linear: nn.Linear, activation: nn.Module) -> None:
        super().__init__()
        self.linear = linear
        self.activation = activation

    @classmethod
    def load(cls, path: str) -> Dense:
        config = read_json(os.path.join(path, "config.json"))
        _check_io_names(config, path)
        linear = nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
        weights_file = os.path.join(path, "model.safetensors")
        if os.path.isfile(weights_file):
            from safetensors.torch import load_file

            state = load_file(weights_file)
        else:
            state = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        linear.load_state_dict({key.removeprefix("linear."): value for key, value in state.items()})
        return cls(linear, _activation(config.get("activation_function") or DEFAULT_ACTIVATION, path))

    @staticmethod
    def output_dim(config: dict, input_dim: int) -> int:
        return module_output_dim("Dense", config, input_dim)

    def forward(self, features: dict) -> dict:
        features[EMBEDDING] = self.activation(self.linear(features[EMBEDDING].to(self.linear.weight.dtype)))
        return features


class Normalize(nn.Module):
    """Unit length (sentence-transformers' Normalize module)."""

    @classmethod
    def load(cls, path: str) -> Normalize:
        _check_io_names(read_json(os.path.join(path, "config.json")), path)
        return cls()

    @staticmethod
    def output_dim(config: dict, input_dim: int) -> int:
        return module_output_dim("Normalize", config, input_dim)

    def forward(self, features: dict) -> dict:
        features[EMBEDDING] = unit(features[EMBEDDING])
        return features


MODULES = {"Pooling": Pooling, "Dense": Dense, "Normalize": Normalize}


def _activation(name: str, path: str) -> nn.Module:
    """A torch.nn activation by its class path; like sentence-transformers without trust_remote_code, nothing
    outside torch is imported from a model folder."""
    import importlib

    module_name, _, class_name = name.rpartition(".")
    if module_name.split(".")[0] == "torch":
        activation = getattr(importlib.import_module(module_name), class_name, None)
        if isinstance(activation, type) and issubclass(activation, nn.Module):
            return activation()
    msg = f"{path}: activation {name!r} is not a torch.nn module; embedlake does not import code from model folders"
    raise ValueError(msg)


def _check_io_names(config: dict, path: str) -> None:
    """Dense and Normalize may be pointed at other features (token embeddings, for multi-vector models)."""
    names = {config.get("module_input_name", EMBEDDING), config.get("module_output_name") or EMBEDDING}
    if names != {EMBEDDING}:
        msg = f"{path}: modules reading or writing {sorted(names - {EMBEDDING})} are not supported (only {EMBEDDING})"
        raise ValueError(msg)
