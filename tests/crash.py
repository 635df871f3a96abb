"""A test-only callback that ends its training run abruptly, as a crash or ``kill -9`` would.

Added to a run with ``+callbacks.crash._target_=crash.CrashAtStep +callbacks.crash.step=N`` and
``tests/`` on ``PYTHONPATH``. It fires at the start of the first batch after ``step`` optimizer
steps, so a checkpoint saved at step ``step`` or earlier (Lightning runs ``ModelCheckpoint``
after every other callback, at the end of a batch) is on disk and nothing after it is.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerStatus


class Crashed(RuntimeError):
    """What ``CrashAtStep(kill=False)`` raises."""


class CrashAtStep(L.Callback):
    """SIGKILLs its own process (``kill=True``) or raises ``Crashed`` once ``step`` optimizer
    steps are done: no exception handler, ``finally`` block or checkpoint-on-exception runs after
    a SIGKILL."""

    def __init__(self, step: int, kill: bool = True) -> None:
        self.step = step
        self.kill = kill

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self.step:
            return
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise Crashed(f"crashed after step {trainer.global_step}")


class SlowInterruptSave(L.Callback):
    """Makes the save of a stopped run take ``seconds``, so a test can press Ctrl-C again
    during it; it touches ``marker`` when that save begins."""

    def __init__(self, marker: str, seconds: float = 60) -> None:
        self.marker = marker
        self.seconds = seconds

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.status == TrainerStatus.INTERRUPTED:
            Path(self.marker).touch()
            time.sleep(self.seconds)
