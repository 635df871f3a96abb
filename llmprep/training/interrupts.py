"""What a training run does when it is stopped: Ctrl-C, SIGTERM or an exception while fitting.

Lightning 2.6 on its own: Ctrl-C raises ``KeyboardInterrupt`` wherever the run is, which it
catches, logs "attempting graceful shutdown", ignores further Ctrl-C and exits with status 1;
SIGTERM sets a flag that its loops turn into ``SIGTERMException`` (a ``SystemExit`` without a
code, so status 0) at the end of the current batch. Neither saves anything.

Here, while fitting:

- The first Ctrl-C (SIGINT) during training is handled as Lightning handles SIGTERM: the run
  stops at the end of the current batch (after its optimizer step, logging and any validation
  due), a clean point to resume from. Before training starts (data set-up) it stops at once.
- On any stop (Ctrl-C, SIGTERM, an exception) once training has begun, a full resumable
  checkpoint (weights, optimizer, loops, data loader position, random state) replaces
  ``<run>/checkpoints/last.ckpt`` atomically (a temporary file beside it, renamed onto it),
  the loss plot is written (:class:`~llmprep.training.loss_plot.LossPlot`), and the command to
  resume is logged. Under DDP an exception saves nothing: the other processes are not saving,
  and a save waits for all of them.
- A second Ctrl-C exits at once with status 130: a save under way is abandoned (its temporary
  file removed), the previous ``last.ckpt`` stays as it was, loggers are not closed.
- The run then exits with status 130 after Ctrl-C and 143 after SIGTERM (128 + the signal, as
  a shell reports a process killed by it), so a scheduler sees a failed job; an exception keeps
  its own status (1). The stage's after-fit report does not run and loggers close as failed.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from llmprep.files import atomic_path

log = logging.getLogger("llmprep")

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""The exit status after each signal: 128 + its number."""


class Interrupts(L.Callback):
    """Saves ``last.ckpt`` (resumable) when fitting stops early; see the module docstring.

    ``stopped_by`` is the signal that stopped the run (``None`` for an exception or none).
    """

    def __init__(self, last_path: str | Path) -> None:
        self.last_path = Path(last_path)
        self.stopped_by: signal.Signals | None = None
        self._trainer: L.Trainer | None = None
        self._training = False
        self._saving: Path | None = None  # the temporary file of the save under way

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.stopped_by == signal.SIGINT or self._saving is not None:
            self._exit_now()
        self.stopped_by = signal.SIGINT
        if not self._training or self._trainer is None:
            raise KeyboardInterrupt
        log.warning(
            "Ctrl-C: stopping at the end of this batch and saving %s (Ctrl-C again quits at once "
            "without saving)",
            self.last_path,
        )
        # Lightning's own graceful stop: its loops raise SIGTERMException at the batch's end.
        self._trainer._signal_connector.received_sigterm = True

    def _exit_now(self) -> None:
        if self._saving is not None:
            self._saving.unlink(missing_ok=True)
        log.error("Ctrl-C again: quit without saving")
        logging.shutdown()
        os._exit(EXIT_CODES[signal.SIGINT])

    @contextmanager
    def handling(self, trainer: L.Trainer) -> Iterator[None]:
        """Around ``trainer.fit``: Ctrl-C handled as above, and the stop turned into the exit
        status (``SystemExit(130 or 143)``); an exception propagates as it is."""
        self._trainer = trainer
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        except (KeyboardInterrupt, SystemExit) as err:
            if isinstance(err, SIGTERMException) and self.stopped_by is None:
                self.stopped_by = signal.SIGTERM
            if self.stopped_by is None:
                raise
            raise SystemExit(EXIT_CODES[self.stopped_by]) from err
        finally:
            signal.signal(signal.SIGINT, previous)
            self._trainer = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning ignores Ctrl-C from here on after a KeyboardInterrupt; a second one quits.
        signal.signal(signal.SIGINT, self._on_sigint)
        if isinstance(exception, SIGTERMException) and self.stopped_by is None:
            self.stopped_by = signal.SIGTERM
        if isinstance(exception, KeyboardInterrupt):
            self.stopped_by = signal.SIGINT
        cause = self.stopped_by.name if self.stopped_by else type(exception).__name__
        if not self._training or trainer.sanity_checking or trainer.fast_dev_run:
            log.error("Stopped by %s before training began: nothing saved", cause)
            return
        if self.stopped_by is None and trainer.world_size > 1:
            log.error("Stopped by %s under DDP: nothing saved, resume from the last save", cause)
            return
        if trainer.is_global_zero:
            # Lightning's own save stages the file in the system's temp folder and moves it,
            # which is a copy (not atomic) when that is another file system.
            with atomic_path(self.last_path) as temp:
                self._saving = temp
                try:
                    trainer.save_checkpoint(temp)
                finally:
                    self._saving = None
        else:
            trainer.save_checkpoint(self.last_path)  # writes nothing, joins the barrier
        if trainer.is_global_zero:
            overrides = [shlex.quote(a) for a in sys.argv[1:] if not a.startswith("ckpt_path=")]
            log.error(
                "Stopped by %s at step %d: saved %s. Resume with:\n  python train.py %s",
                cause,
                trainer.global_step,
                self.last_path,
                " ".join([*overrides, shlex.quote(f"ckpt_path={self.last_path}")]),
            )
