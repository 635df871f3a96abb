"""The one evaluation path every stage shares, after fitting and in ``evaluate.py``:
``trainer.test`` on the stage's own ``test_step``, a table of its scores per split, and a JSON
file beside the checkpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from llmprep.training.throughput import ProgressBar


def eval_trainer(cfg: DictConfig) -> L.Trainer:
    """A one-device Trainer for ``evaluate.py``: the GPU when the hardware config asks for one
    and it exists, else the CPU; the training run's progress bar, no logger, checkpoints or
    summary."""
    import torch

    wants_gpu = cfg.hardware.accelerator in {"gpu", "cuda", "auto"}
    return L.Trainer(
        accelerator="gpu" if wants_gpu and torch.cuda.is_available() else "cpu",
        devices=1,
        logger=False,
        callbacks=[ProgressBar()],
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def print_table(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of equal keys as a table on the console."""
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


def results_path(ckpt_path: Path | None, trainer: L.Trainer, suffix: str = "eval") -> Path:
    """Where results go: beside the checkpoint, ``<name>.<suffix>.json``; without one (a
    ``fast_dev_run``), ``<suffix>.json`` in the run folder."""
    if ckpt_path is None:
        return Path(trainer.default_root_dir) / f"{suffix}.json"
    return ckpt_path.with_name(f"{ckpt_path.stem}.{suffix}.json")


def score(
    trainer: L.Trainer,
    task: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt_path: Path | None,
    load: bool,
    title: str,
) -> dict[str, dict[str, Any]]:
    """Each test split's scores (``task.test_results`` after ``trainer.test``), printed by rank 0
    as one row per split, lists (a confusion matrix) left out.

    ``load`` has ``trainer.test`` load ``ckpt_path`` first (after fitting: the best checkpoint);
    otherwise the task is scored with the weights it holds (``evaluate.py`` restored them).
    """
    weights = str(ckpt_path) if load and ckpt_path is not None else None
    trainer.test(task, datamodule=datamodule, ckpt_path=weights, verbose=False, weights_only=True)
    results = task.test_results
    if trainer.is_global_zero:
        print_table(
            title,
            [
                {"split": split, **{k: v for k, v in r.items() if not isinstance(v, list)}}
                for split, r in results.items()
            ],
        )
    return results
