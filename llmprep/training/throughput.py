"""Training throughput over whole steps (forward, backward, optimizer step, data loading) by
Lightning's ``ThroughputMonitor``, logged to every logger and shown in the bar.

It logs ``train/device/items_per_sec`` (input tokens, padding included), ``samples_per_sec``,
``flops_per_sec`` (from the task's ``flops_per_batch``) and, where Lightning knows the device's
peak for the run's precision (NVIDIA and TPU chips, not CPUs), ``train/device/mfu``; with several
processes also the summed ``train/items_per_sec`` and so on. Figures appear once ``window_size``
batches have run, every ``trainer.log_every_n_steps``.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, ThroughputMonitor

from llmprep.training.task import batch_inputs

TOKENS_PER_SEC = "train/device/items_per_sec"
MFU = "train/device/mfu"


def batch_size(batch: Any) -> int:
    """Number of sequences in a batch of any stage."""
    return batch_inputs(batch).shape[0]


def batch_tokens(batch: Any) -> int:
    """Number of input tokens in a batch of any stage."""
    return batch_inputs(batch).numel()


class TokenThroughput(ThroughputMonitor):
    """``ThroughputMonitor`` counting samples and tokens of our batches, keys joined by ``/``."""

    def __init__(self, window_size: int = 10) -> None:
        super().__init__(
            batch_size_fn=batch_size, length_fn=batch_tokens, window_size=window_size, separator="/"
        )


def run_eta(elapsed: float, done: int, left: int) -> str | None:
    """The time the run's ``left`` optimizer steps take at the pace of its first ``done``
    (``elapsed`` seconds, validations included) as ``h:mm:ss``; ``None`` before a step."""
    if done <= 0:
        return None
    return str(datetime.timedelta(seconds=round(elapsed / done * max(left, 0))))


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, with the latest tokens/s and MFU the throughput monitor logged, and
    the whole run's ETA (``run eta``, see :func:`run_eta`; the bar's own is the epoch's)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = (time.monotonic(), trainer.global_step)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        logged = trainer.logged_metrics
        if TOKENS_PER_SEC in logged:
            items["tok/s"] = f"{float(logged[TOKENS_PER_SEC]):,.0f}"
        if MFU in logged:
            items["mfu"] = f"{float(logged[MFU]):.1%}"
        if trainer.training and hasattr(self, "_start"):
            started, first_step = self._start
            left = int(trainer.estimated_stepping_batches) - trainer.global_step
            eta = run_eta(time.monotonic() - started, trainer.global_step - first_step, left)
            if eta is not None:
                items["run eta"] = eta
        return items
