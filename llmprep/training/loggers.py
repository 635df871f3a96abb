"""Experiment loggers: W&B (offline without an account), CSV, TensorBoard or none."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from llmprep.training.config import redacted_argv


def wandb_has_credentials() -> bool:
    """True when an API key is in the environment or ``wandb login`` left one in the netrc file
    (``$NETRC``, else ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC")).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_mode(configured: str | None) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else online with credentials and offline without."""
    mode = configured or os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if wandb_has_credentials() else "offline"


def run_name_and_group(stage: str, output_dir: Path, job_num: int | None) -> tuple[str, str]:
    """W&B name and group from the Hydra run folder; the jobs of one sweep share its group."""
    if job_num is None:
        return f"{stage}-{output_dir.parent.name}-{output_dir.name}", stage
    sweep = output_dir.parent
    group = f"sweep-{sweep.parent.name}-{sweep.name}"
    return f"{group}-{job_num}", group


def build_logger(
    cfg: DictConfig, output_dir: Path, job_num: int | None, config: dict[str, Any]
) -> Logger | None:
    """The logger that ``logger.kind`` names, writing under the run folder.

    ``config`` is the plain, redacted run config: it is what W&B records as the run's config.
    The W&B run starts here, on rank 0, with secrets redacted from the command line it records.
    """
    kind = cfg.logger.kind
    if kind == "none":
        return None
    if kind == "csv":
        return CSVLogger(save_dir=output_dir, name="csv", version="")
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir=output_dir, name="tensorboard", version="")
    if kind != "wandb":
        raise ValueError(f"logger.kind={kind!r}: expected wandb, csv, tensorboard or none")
    name, group = run_name_and_group(cfg.stage.name, output_dir, job_num)
    logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=cfg.logger.name or name,
        group=cfg.logger.group or group,
        tags=list(cfg.logger.tags),
        save_dir=str(output_dir),
        mode=wandb_mode(cfg.logger.mode),
        log_model=cfg.logger.log_model,
        config=config,
    )
    with redacted_argv():
        _ = logger.experiment  # W&B records the command line as the run starts
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
