"""Logging what a model writes while it trains: one callback for every stage that samples."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from llmprep.training.task import is_sharded

log = logging.getLogger(__name__)


class SampleLogger(L.Callback):
    """At each validation, the task's ``samples()`` (rows of equal keys) go to the console and,
    with the step and the tokens seen, to every logger that logs text (W&B's ``samples`` table,
    growing by these rows each time). Under FSDP every rank takes part in generating; rank 0
    logs."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not (trainer.is_global_zero or is_sharded(trainer)):
            return
        samples = pl_module.samples()
        if not samples or not trainer.is_global_zero:
            return
        for sample in samples:
            log.info(
                "sample at step %d: %s",
                trainer.global_step,
                " | ".join(f"{key}: {value!r}" for key, value in sample.items()),
            )
            self.rows.append(
                {"step": trainer.global_step, "tokens_seen": pl_module.tokens_seen, **sample}
            )
        for logger in trainer.loggers:
            if hasattr(logger, "log_text"):
                logger.log_text(
                    key="samples",
                    columns=list(self.rows[0]),
                    data=[list(row.values()) for row in self.rows],
                )
