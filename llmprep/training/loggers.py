"""What llmprep adds to Lightning's loggers (``conf/logger/*.yaml``, instantiated from our conf):
W&B offline without an account, run names from the Hydra job, one W&B run per job closed with
the sync hint, secrets kept out of the recorded command line; and the parameter counts logged
beside Lightning's model summary."""

from __future__ import annotations

import inspect
import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from omegaconf import DictConfig

from llmprep.training.config import redact_text

log = logging.getLogger(__name__)


def wandb_mode(configured: str | None) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else online with credentials (an API key in the
    environment, or ``wandb login``'s in the netrc file: ``$NETRC``, else ``~/.netrc``)."""
    mode = configured or os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        hosts = netrc.netrc(os.environ.get("NETRC")).hosts
    except (netrc.NetrcParseError, OSError):
        return "offline"
    return "online" if any("wandb" in host for host in hosts) else "offline"


def run_name_and_group(stage: str, output_dir: Path, job_num: int | None) -> tuple[str, str]:
    """W&B name and group from the Hydra run folder; the jobs of one sweep share its group."""
    if job_num is None:
        return f"{stage}-{output_dir.parent.name}-{output_dir.name}", stage
    sweep = output_dir.parent
    group = f"sweep-{sweep.parent.name}-{sweep.name}"
    return f"{group}-{job_num}", group


def build_logger(
    settings: DictConfig, stage: str, output_dir: Path, job_num: int | None, config: dict[str, Any]
) -> Logger | None:
    """The logger the ``logger`` group configures; ``None`` without a ``_target_`` (``none``).

    A W&B run gets its mode, name and group as above and ``config`` (plain, redacted) as its
    config, and offline W&B's quiet console (the one sync hint is ours); it starts here, on
    rank 0, with secrets redacted from the command line it records.
    Other loggers get only the keys their class takes (not ``conf/local``'s ``logger.entity``)
    and ``config`` as hyperparameters.
    """
    if not settings or "_target_" not in settings:
        return None
    cls = get_class(settings._target_)
    if cls is not WandbLogger:
        taken = inspect.signature(cls).parameters
        logger = instantiate({k: v for k, v in settings.items() if k in taken or k == "_target_"})
        logger.log_hyperparams({"run_config": config})
        return logger
    import wandb

    name, group = run_name_and_group(stage, output_dir, job_num)
    mode = wandb_mode(settings.mode)
    wandb_logger = instantiate(settings, _partial_=True, _convert_="all")
    logger = wandb_logger(
        name=settings.name or name,
        group=settings.group or group,
        mode=mode,
        config=config,
        # Offline, W&B's own footer would print the sync command beside ours (finish_logger).
        settings=wandb.Settings(quiet=mode == "offline"),
    )
    # Lightning always passes anonymous=None, which W&B warns is a setting without effect.
    logger._wandb_init.pop("anonymous", None)
    saved = list(sys.argv)
    sys.argv[:] = [redact_text(arg) for arg in saved]  # W&B records it as the run starts
    try:
        _ = logger.experiment
    finally:
        sys.argv[:] = saved
    return logger


@rank_zero_only
def finish_logger(logger: Logger | None, failed: bool) -> None:
    """Close the W&B run of this job (one run per sweep job), printing the sync hint offline."""
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    run = wandb.run
    if run is None:
        return
    offline = run.settings.mode == "offline" or getattr(run, "offline", False)
    run_dir = Path(run.dir).parent
    wandb.finish(exit_code=1 if failed else 0)
    if offline:
        print(f"W&B run saved offline. Upload it with:\n  wandb sync {run_dir}")


class ParameterSummary(RichModelSummary):
    """Lightning's model summary table, plus the exact counts (shared tensors once) in one log
    line and, as ``params/total`` and ``params/trainable``, in every logger's hyperparameters.

    FLOPs are those of one forward pass over a full context window, by the model's own count
    (``GPT.flops_per_token``, which equals torch's FLOP counter): Lightning counts them only by
    running a forward pass on an ``example_input_array``, and without one it shows 0.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = list(pl_module.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        if trainer.is_global_zero:
            if self._max_depth:
                self._print_table(trainer, pl_module)
            log.info("parameters: %s trainable of %s total", f"{trainable:,}", f"{total:,}")
        for logger in trainer.loggers:
            logger.log_hyperparams({"params/total": total, "params/trainable": trainable})

    def _print_table(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        summary = self._summary(trainer, pl_module)
        window = pl_module.model.config.context_length
        flops = pl_module.model.flops_per_token(window, training=False) * window
        columns = dict(summary._get_summary_data())
        columns["FLOPs"] = [
            get_human_readable_count(flops) if name == "model" else value
            for name, value in zip(columns["Name"], columns["FLOPs"], strict=True)
        ]
        self.summarize(
            list(columns.items()),
            summary.total_parameters,
            summary.trainable_parameters,
            summary.model_size,
            summary.total_training_modes,
            total_flops=flops,
            **self._summarize_kwargs,
        )
