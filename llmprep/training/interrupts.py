"""Ctrl-C and SIGTERM stop a run at the next batch boundary, save a resumable checkpoint there
and exit with ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM), so a scheduler never mistakes
a preempted job for a finished one.

Lightning 2.6 handles the two badly for us: a ``KeyboardInterrupt`` lands anywhere (inside an
optimizer step, inside a checkpoint save), and Lightning then exits 1 with nothing saved; on
SIGTERM it stops at the end of the current batch by raising ``SIGTERMException``, a
``SystemExit`` whose status is 0. So Ctrl-C is turned into the same request as SIGTERM (the
trainer's ``received_sigterm`` flag), and the stop is saved to ``last.ckpt`` at that clean point,
where every counter, the data position and the generators agree. A second Ctrl-C while stopping
exits at once (status 130) and saves nothing more: checkpoints are written to a temporary file
and renamed, so the previous ``last.ckpt`` stays whole.

Decision: an exception other than these signals saves no checkpoint of its own. It can fall in
the middle of an optimizer step or come from a state that is itself broken (NaN weights), and
must not replace a good ``last.ckpt``; the newest periodic or validation save is the one to
resume from.
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
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class GracefulStop(L.Callback):
    """Saves ``path`` (the run's ``last.ckpt``) when fitting stops on a signal; see the module."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.signum: int | None = None
        self._trainer: L.Trainer | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                os.write(2, b"\nSecond Ctrl-C: exiting now without saving.\n")
                os._exit(128 + signum)
            return
        self.signum = signum
        log.warning(
            "%s: stopping after this batch and saving %s (Ctrl-C again quits at once)",
            NAMES[signum],
            self.path,
        )
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True

    @contextmanager
    def handling_signals(self, trainer: L.Trainer) -> Iterator[None]:
        """Catch Ctrl-C and SIGTERM while the block (``trainer.fit``) runs; a stop ends the
        process with status ``128 + signal`` once the checkpoint is saved."""
        self._trainer = trainer
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield
        except SIGTERMException:
            if self.signum is None:
                raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._trainer = None
        if self.signum is not None:
            raise SystemExit(128 + self.signum)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self.signum is None or not isinstance(exception, SIGTERMException):
            return
        if trainer.global_step == 0:
            log.warning("Stopped before the first optimizer step: nothing to save")
            return
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            args = [a for a in sys.argv[1:] if not a.startswith("ckpt_path=")]
            command = shlex.join(["python", "train.py", *args, f"ckpt_path={self.path}"])
            log.warning(
                "Stopped at step %d; saved %s. Resume with:\n  %s",
                trainer.global_step,
                self.path,
                command,
            )
