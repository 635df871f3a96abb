"""One training run: the composed Hydra config in, a fitted model in the run folder out."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, open_dict, read_write

from llmprep.checkpoints import local_checkpoint, read_checkpoint, require_resumable, run_config
from llmprep.errors import CheckpointError, ConfigError
from llmprep.model.init import ARCH_KEYS, build_model
from llmprep.resume import announce_resume
from llmprep.stages import get_stage
from llmprep.training.config import plain_config, redact
from llmprep.training.hardware import apply_process_settings, trainer_kwargs
from llmprep.training.interrupts import Interrupts
from llmprep.training.loggers import build_logger, finish_logger
from llmprep.training.task import TASK_KEYS, GPTTask
from llmprep.training.validate import validate_config


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


def build_trainer(cfg: DictConfig, output_dir: Path, logger: Logger | None) -> L.Trainer:
    """The Lightning Trainer of the run: hardware, callbacks and the ``trainer`` group; without a
    logger (``logger=none``) no learning-rate monitor, which Lightning would refuse. Every run
    has :class:`~llmprep.training.interrupts.Interrupts` (not a config entry: a run stopped
    early always saves its ``last.ckpt``)."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if logger is None:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(Interrupts(Path(cfg.paths.checkpoint_dir) / "last.ckpt"))
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


def resume_checkpoint(ckpt_path: str, task: L.LightningModule, cfg: DictConfig) -> Path:
    """The local file to resume from, checked before fitting: an llmprep checkpoint of this
    stage and of the architecture this run builds (a mismatch names both model sizes)."""
    ckpt = read_checkpoint(ckpt_path, "ckpt_path")
    config = run_config(ckpt, ckpt_path, "ckpt_path")
    require_resumable(ckpt, ckpt_path)
    trained = config["stage"].get("name")
    if trained != cfg.stage.name:
        raise CheckpointError(
            f"ckpt_path={ckpt_path!r} was trained by stage {trained!r}: resume it with "
            f"stage={trained}, not stage={cfg.stage.name}"
        )
    stored = ckpt["hyper_parameters"].get("model_config", {})
    built = task.hparams["model_config"]
    if any(stored.get(k) != built.get(k) for k in ARCH_KEYS):
        name = config.get("model", {}).get("name")
        shapes = [", ".join(f"{k}={c.get(k)}" for k in ARCH_KEYS) for c in (stored, built)]
        raise CheckpointError(
            f"ckpt_path={ckpt_path!r} holds a {name} ({shapes[0]}) but this run builds "
            f"model={cfg.model.name} ({shapes[1]}): resume it with model={name}"
        )
    return local_checkpoint(ckpt_path, "ckpt_path")


def build_task(
    cfg: DictConfig, output_dir: Path, config: dict[str, Any]
) -> tuple[GPTTask, L.LightningDataModule]:
    """The stage's task and its data module, connected: the data module is told the model's
    context length (and the run folder, where it saves its splits), the task what the data
    module says it needs (``task_settings()``, e.g. a classifier's labels), and nothing of the
    run config (``config``, plain) but its own keys (:data:`~llmprep.training.task.TASK_KEYS`)."""
    model = build_model(cfg.model, cfg.init_from)
    datamodule = instantiate(
        cfg.data,
        context_length=model.config.context_length,
        output_dir=str(output_dir),
        _convert_="all",
    )
    task = get_stage(cfg.stage.name).Task(
        {key: config[key] for key in TASK_KEYS},
        asdict(model.config),
        model=model,
        **datamodule.task_settings(),
    )
    task.run_config = config
    task.run_overrides = redact(list(HydraConfig.get().overrides.task))
    return task, datamodule


def train(cfg: DictConfig) -> float | None:
    """Fit the stage's task as configured; return the best monitored metric (for sweepers).

    Every job, failed or not, closes its W&B run and its process group, so the next job of a
    ``-m`` sweep starts clean. A run stopped by Ctrl-C or SIGTERM exits with status 130 or 143
    (:mod:`~llmprep.training.interrupts`), which also ends a ``-m`` sweep: its later jobs do
    not start.
    """
    validate_config(cfg)
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    job_num = hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None
    environ = dict(os.environ)
    pin_worker_command()
    apply_process_settings(cfg.hardware)
    L.seed_everything(cfg.seed, workers=True)
    config = plain_config(cfg)
    logger = build_logger(cfg.logger, cfg.stage.name, output_dir, job_num, config)
    failed = True
    try:
        if cfg.ckpt_path:
            announce_resume(cfg.ckpt_path, hydra_cfg.overrides.task)
        task, datamodule = build_task(cfg, output_dir, config)
        trainer = build_trainer(cfg, output_dir, logger)
        resume = resume_checkpoint(cfg.ckpt_path, task, cfg) if cfg.ckpt_path else None
        with next(c for c in trainer.callbacks if isinstance(c, Interrupts)).handling(trainer):
            trainer.fit(task, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        callback = trainer.checkpoint_callback
        if cfg.test_after_fit:
            # The stage's report (evaluate.py's code) on the best checkpoint, else (e.g.
            # fast_dev_run) on the final weights.
            best = Path(callback.best_model_path) if callback and callback.best_model_path else None
            get_stage(cfg.stage.name).report(trainer, task, datamodule, best, cfg)
        failed = False
        score = callback.best_model_score if callback else None
        return float(score) if score is not None else None
    finally:
        finish_logger(logger, failed)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)


def run_evaluation(cfg: DictConfig) -> Any:
    """Run the evaluation of ``stage.name`` (see :mod:`llmprep.stages`) on ``ckpt_path``."""
    if cfg.ckpt_path is None:
        raise ConfigError(
            "ckpt_path is required: the checkpoint to evaluate, e.g. python evaluate.py "
            "ckpt_path=outputs/pretrain/<day>/<time>/checkpoints/best.ckpt"
        )
    validate_config(cfg)
    apply_process_settings(cfg.hardware)
    return get_stage(cfg.stage.name).evaluate(cfg, Path(cfg.ckpt_path).expanduser().resolve())
