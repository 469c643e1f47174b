"""Matryoshka fine-tuning with sentence-transformers' own stack, with no knowledge of how it is scheduled.

`MatryoshkaLoss` over `MultipleNegativesRankingLoss` (in-batch negatives, plus a hard negative per
pair when the input has one), uniform weights over the nested sizes by default, trained by
`SentenceTransformerTrainer`. Under torch.distributed the ranking loss gathers every rank's
embeddings, so the negatives of one step are the whole global batch, as on one device. The saved folder
is a plain sentence-transformers model whose query/document prompts are the ones it was trained with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from operators.encoders.folders import check_nested_sizes
from operators.training.pairs import ANCHOR, NEGATIVE, POSITIVE

QUERY, DOCUMENT = "query", "document"
NESTED_CANDIDATES = (1024, 768, 512, 256, 128, 64)
TRAINING_FILE = "embedlake_training.json"  # beside the weights: how this folder was trained
LOSS = "loss"


@dataclass(kw_only=True)
class TrainingOptions:
    """The optimisation choices a user makes (CLI options of `embedlake train`, with their defaults)."""

    epochs: int = 1
    batch_size: int = 32  # global: split over the workers, negatives gathered back
    max_length: int | None = None  # None: the base model's
    query_prompt: str | None = None  # None: the base model's
    document_prompt: str | None = None
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 0


@dataclass(kw_only=True)
class MatryoshkaSettings(TrainingOptions):
    """Everything one training run decides, as plain data (it travels to every worker)."""

    base: str  # a local model folder
    dims: list[int] = field(default_factory=list)  # nested sizes, largest first; empty: the model's default
    dim_weights: list[float] = field(default_factory=list)  # empty: uniform
    scale: float = 20.0  # MNRL's inverse temperature

    def as_dict(self) -> dict:
        return asdict(self)


def options_of(source: object) -> dict:
    """The TrainingOptions fields of any object that has them (a job, parsed arguments)."""
    return {f.name: getattr(source, f.name) for f in fields(TrainingOptions)}


def default_dims(dimension: int) -> list[int]:
    """The full size, then the usual nested sizes below it (384 -> 384, 256, 128, 64)."""
    return [dimension, *[d for d in NESTED_CANDIDATES if d < dimension]]


def check_dims(dims: Sequence[int], weights: Sequence[float], dimension: int) -> tuple[list[int], list[float]]:
    """Nested sizes largest first with their weights; the full size must be trained (MRL's first rule)."""
    dims = list(dims) or default_dims(dimension)
    weights = list(weights) or [1.0] * len(dims)
    if len(weights) != len(dims):
        msg = f"--dim-weights has {len(weights)} value(s) for {len(dims)} nested size(s)"
        raise ValueError(msg)
    check_nested_sizes(dims, dimension)
    if len(set(dims)) != len(dims):
        msg = f"nested sizes repeat: {list(dims)}"
        raise ValueError(msg)
    if dimension not in dims:
        msg = f"nested sizes must include the model's full dimension {dimension} (got {list(dims)})"
        raise ValueError(msg)
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        msg = f"--dim-weights must be non-negative with at least one positive, got {weights}"
        raise ValueError(msg)
    ordered = sorted(zip(dims, weights, strict=True), reverse=True)
    return [d for d, _ in ordered], [w for _, w in ordered]


def load_model(settings: MatryoshkaSettings, device: str | None = None):
    """The base model as sentence-transformers loads it, with this run's length limit and prompts."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(settings.base, device=device, local_files_only=True)
    if settings.max_length:
        model.max_seq_length = settings.max_length
    model.prompts = run_prompts(model.prompts, settings)
    model.default_prompt_name = None
    return model


def run_prompts(base_prompts: dict | None, settings: MatryoshkaSettings) -> dict[str, str]:
    """Query/document prompts: the ones given, else the base model's own."""
    prompts = {k: v for k, v in (base_prompts or {}).items() if v}
    if settings.query_prompt is not None:
        prompts[QUERY] = settings.query_prompt
    if settings.document_prompt is not None:
        prompts[DOCUMENT] = settings.document_prompt
    return {k: v for k, v in prompts.items() if v}


def column_prompts(prompts: dict[str, str]) -> dict[str, str]:
    """The trainer's per-column prompts: anchors are queries, positives and negatives documents."""
    by_column = {ANCHOR: prompts.get(QUERY, ""), POSITIVE: prompts.get(DOCUMENT, ""),
                 NEGATIVE: prompts.get(DOCUMENT, "")}
    return {column: prompt for column, prompt in by_column.items() if prompt}


def build_loss(model, settings: MatryoshkaSettings, gather: bool):
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    dims, weights = check_dims(settings.dims, settings.dim_weights, model.get_embedding_dimension())
    ranking = MultipleNegativesRankingLoss(model, scale=settings.scale, gather_across_devices=gather)
    return MatryoshkaLoss(model, ranking, matryoshka_dims=dims, matryoshka_weights=weights)


def training_arguments(settings: MatryoshkaSettings, output_dir: str, per_device_batch: int, use_cpu: bool,
                       logging_steps: int, prompts: dict[str, str]):
    """Trainer arguments: a checkpoint (weights, optimizer, scheduler, RNG) at the end of every epoch."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=per_device_batch,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of all steps (Transformers 5)
        seed=settings.seed,
        data_seed=settings.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate in the batch would be a false negative
        prompts=column_prompts(prompts) or None,
        dataloader_drop_last=True,  # equal batches on every rank: the gathered negatives line up
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=logging_steps,
        report_to="none",
        disable_tqdm=True,
        use_cpu=use_cpu,
        bf16=not use_cpu and _cuda_bf16(),  # mixed precision on GPUs that have it (weights stay fp32)
        dataloader_num_workers=0,
    )


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def loss_curve(log_history: Sequence[dict]) -> list[dict]:
    """[{step, epoch, loss}] from the trainer's log history (every logging step, across resumes)."""
    return [{"step": int(entry["step"]), "epoch": round(float(entry.get("epoch", 0.0)), 4),
             "loss": float(entry[LOSS])} for entry in log_history if LOSS in entry]


def loss_by_epoch(curve: Sequence[dict], epochs: int) -> list[float]:
    """Mean logged loss within each epoch (epoch e holds the steps logged in (e-1, e])."""
    means = []
    for epoch in range(1, epochs + 1):
        losses = [point["loss"] for point in curve if epoch - 1 < point["epoch"] <= epoch]
        means.append(round(sum(losses) / len(losses), 6) if losses else float("nan"))
    return means


def save_model(model, folder: str, settings: MatryoshkaSettings, extra: dict | None = None) -> None:
    """A sentence-transformers folder (prompts included) plus a note of how it was trained."""
    model.save(folder)
    dims, weights = check_dims(settings.dims, settings.dim_weights, model.get_embedding_dimension())
    note = {**settings.as_dict(), "dims": dims, "dim_weights": weights, "prompts": model.prompts, **(extra or {})}
    with open(os.path.join(folder, TRAINING_FILE), "w") as handle:
        json.dump(note, handle, indent=2)
