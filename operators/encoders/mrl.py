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

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from operators.encoders.base import (
    BatchLimits,
    EncoderSpec,
    TransformerEncoder,
    default_device,
    default_dtype,
)
from operators.encoders.folders import (
    FolderLayout,
    mrl_fields,
    read_layout,
)
from operators.encoders.folders import describe_mrl_folder as describe_folder
from operators.encoders.modules import EMBEDDING, MODULES, Pooling, span_means, unit
from operators.encoders.precision import compute_dtype
from operators.schema import DENSE, dense_column


def load_modules(layout: FolderLayout) -> nn.Sequential:
    """The folder's modules after the Transformer, with their weights."""
    loaded = []
    for index, (kind, path) in enumerate(layout.modules):
        if kind == "Pooling":
            loaded.append(Pooling.from_config(layout.module_config(index)))
        else:
            loaded.append(MODULES[kind].load(path))
    return nn.Sequential(*loaded)


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
