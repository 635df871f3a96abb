"""Evaluation of a pretraining checkpoint: loss and perplexity on held-out text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from llmprep.files import write_json_atomically
from llmprep.stages import load_task, stored_datamodule
from llmprep.stages.pretrain.task import PretrainTask
from llmprep.training.report import eval_trainer, results_path, score
from llmprep.training.task import is_sharded


def report(
    trainer: L.Trainer,
    task: PretrainTask,
    datamodule: L.LightningDataModule,
    ckpt_path: Path | None,
    cfg: DictConfig,
    load: bool = True,
) -> dict[str, Any]:
    """Loss and perplexity of each test split (the validation split and any test files),
    printed and written to ``<checkpoint>.eval.json``; then rank 0 prints the model's samples
    (not under FSDP, whose shards are gone once testing ends)."""
    results = score(
        trainer, task, datamodule, ckpt_path, load, ckpt_path.name if ckpt_path else "final weights"
    )
    if not trainer.is_global_zero:
        return results
    out = write_json_atomically(
        results_path(ckpt_path, trainer), {"checkpoint": str(ckpt_path), "results": results}
    )
    print(f"results written to {out}")
    if not is_sharded(trainer):
        task.to(trainer.strategy.root_device)
        task.print_samples()
    return results


def evaluate(cfg: DictConfig, ckpt_path: Path) -> dict[str, Any]:
    """:func:`report` on the run's validation split and ``eval.files``, with the run's
    ``max_length`` and ``stride``."""
    task = load_task(ckpt_path, "pretrain")
    datamodule = stored_datamodule(
        "pretrain",
        task.run_config["data"],
        context_length=task.model.config.context_length,
        test_files=list(cfg.eval.files),
    )
    return report(eval_trainer(cfg), task, datamodule, ckpt_path, cfg, load=False)
