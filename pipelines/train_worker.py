"""The Ray Train worker loop: sentence-transformers' trainer inside one data-parallel worker.

Ray Train has already joined the workers in a torch.distributed group; the Hugging Face trainer
underneath `SentenceTransformerTrainer` picks it up, wraps the model in DDP and shards the batches, and
the ranking loss gathers embeddings across ranks. Epoch checkpoints go to Ray Train through
`RayTrainReportCallback`; the final model is reported as one more checkpoint, so a driver killed
after that point finds it on restart instead of training again.
"""

from __future__ import annotations

import json
import os
import tempfile

from operators.training.pairs import HOLDOUT, TRAIN

FINAL_DIR = "model"
FINAL_MARK = "final.json"
HF_CHECKPOINT = "checkpoint"


def train_loop(config: dict) -> None:
    import ray.train
    import torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            if os.path.isfile(os.path.join(folder, FINAL_MARK)):
                with open(os.path.join(folder, FINAL_MARK)) as handle:
                    metrics = json.load(handle)
                ray.train.report(metrics, checkpoint=checkpoint if rank == 0 else None)
                return
            _train(config, rank, world, os.path.join(folder, HF_CHECKPOINT))
            return
    _train(config, rank, world, None)


def _train(config: dict, rank: int, world: int, resume_from: str | None) -> None:
    import datasets
    import ray.train
    from ray.train import Checkpoint
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_callback import PrinterCallback

    from operators.training.matryoshka import (
        MatryoshkaSettings,
        build_loss,
        load_model,
        save_model,
        training_arguments,
    )

    quiet_libraries()
    settings = MatryoshkaSettings(**config["settings"])
    pairs = config["train_reader"].read(config["train_shards"].files, TRAIN)
    # A fingerprint of our own: otherwise `datasets` pickles the whole table to hash it.
    train_dataset = datasets.Dataset(datasets.table.InMemoryTable(pairs), fingerprint=config["fingerprint"])
    model = load_model(settings, device=None if config["use_gpu"] else "cpu")
    loss = build_loss(model, settings, gather=world > 1)
    callbacks = [RayTrainReportCallback()]
    if config["progress"] and rank == 0:
        callbacks.append(ProgressCallback())
    with tempfile.TemporaryDirectory() as output_dir:
        args = training_arguments(settings, os.path.join(output_dir, "trainer"), config["per_device_batch"],
                                  use_cpu=not config["use_gpu"], logging_steps=config["logging_steps"],
                                  prompts=model.prompts)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss,
                                             callbacks=callbacks)
        trainer.remove_callback(PrinterCallback)  # the progress bar shows the loss; no dict per log line
        resumed_from_step = _checkpoint_step(resume_from)
        trainer.train(resume_from_checkpoint=resume_from)
        metrics = {
            "final": 1,
            "steps": int(trainer.state.global_step),
            "resumed_from_step": resumed_from_step,
            "log_history": json.dumps(trainer.state.log_history),
            "prompts": json.dumps(model.prompts),
        }
        final = None
        if rank == 0:
            folder = os.path.join(output_dir, "final")
            save_model(model, os.path.join(folder, FINAL_DIR), settings)
            del trainer, model, loss  # free the optimizer state before the evaluation loads two encoders
            metrics["evaluation"] = json.dumps(evaluate_holdout(config, settings, os.path.join(folder, FINAL_DIR)))
            with open(os.path.join(folder, FINAL_MARK), "w") as handle:
                json.dump(metrics, handle)
            final = Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=final)


def evaluate_holdout(config: dict, settings, trained: str) -> dict:
    """Base and trained model on the held-out pairs (the first MAX_HOLDOUT_EVAL), where the model was
    trained: rank 0's device, its copy of the saved folder, read as `embed` reads it."""
    from operators.training.holdout import MAX_HOLDOUT_EVAL, K, evaluate_model

    if not config["holdout_pairs"]:
        return {}
    pairs = config["reader"].read(config["shards"].files, HOLDOUT).slice(0, MAX_HOLDOUT_EVAL)
    nested = settings.dims[1:]
    return {
        "k": K,
        "pairs": pairs.num_rows,
        "base": evaluate_model(settings.base, pairs, nested, settings.max_length),
        "trained": evaluate_model(trained, pairs, nested),
    }


def quiet_libraries() -> None:
    """Warnings and progress bars of the libraries stay out of the driver's terminal (ours is tqdm_ray's)."""
    import logging
    import warnings

    os.environ["TQDM_DISABLE"] = "1"  # this worker's own tqdm bars (model card examples, weight loading)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("sentence_transformers", "transformers", "ray.train", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _checkpoint_step(folder: str | None) -> int:
    """The global step a Hugging Face checkpoint was taken at (0 for a fresh start)."""
    if folder is None:
        return 0
    with open(os.path.join(folder, "trainer_state.json")) as handle:
        return int(json.load(handle).get("global_step", 0))


def _progress_base():
    from transformers import TrainerCallback

    return TrainerCallback


class ProgressCallback(_progress_base()):
    """A progress bar on the driver's terminal (Ray's tqdm_ray), with the latest loss."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from ray.experimental.tqdm_ray import tqdm

        self.bar = tqdm(total=state.max_steps, desc="train", unit="step")
        self.bar.update(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_description(f"train loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
