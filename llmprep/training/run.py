"""One training run: the composed Hydra config in, a fitted model in the run folder out."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict, read_write

from llmprep.stages import task_class
from llmprep.training.config import plain_config
from llmprep.training.hardware import apply_threads, trainer_kwargs
from llmprep.training.loggers import build_logger, finish_logger

log = logging.getLogger(__name__)


def pin_worker_command() -> None:
    """Make Lightning's extra DDP ranks re-create exactly this job, in this job's folder.

    Lightning starts each extra rank by re-running ``sys.argv`` with ``hydra.run.dir`` set to
    ``HydraConfig.run.dir``. Inside a ``-m`` sweep that would start the whole sweep again in every
    rank (and hang), and ``run.dir`` would resolve to a new timestamped folder. So the command
    becomes this job's own overrides, and ``run.dir`` this job's output folder.
    """
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    run = HydraConfig.instance().cfg.hydra.run
    with read_write(run), open_dict(run):
        run.dir = hydra_cfg.runtime.output_dir


def build_trainer(cfg: DictConfig, output_dir: Path, logger) -> L.Trainer:
    """The Lightning Trainer of the run: hardware, callbacks and the ``trainer`` group."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    hw = trainer_kwargs(cfg.hardware)
    if hw["accelerator"] in {"gpu", "cuda"}:
        torch.set_float32_matmul_precision("high")
    return L.Trainer(
        default_root_dir=output_dir,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        **hw,
        **{k: v for k, v in cfg.trainer.items() if v is not None},
    )


def train(cfg: DictConfig) -> float | None:
    """Fit the stage's task as configured; return the best monitored metric (for sweepers).

    Every job, failed or not, closes its W&B run and its process group, so the next job of a
    ``-m`` sweep starts clean.
    """
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    job_num = hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None
    environ = dict(os.environ)
    pin_worker_command()
    apply_threads(cfg.hardware)
    L.seed_everything(cfg.seed, workers=True)
    config = plain_config(cfg)
    logger = build_logger(cfg, output_dir, job_num, config)
    failed = True
    try:
        task, datamodule = task_class(cfg.stage.name).from_config(cfg, output_dir)
        trainer = build_trainer(cfg, output_dir, logger)
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        if cfg.test_after_fit:
            task.after_fit(trainer, datamodule)
        failed = False
        best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        return float(best) if best is not None else None
    finally:
        finish_logger(logger, failed)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
