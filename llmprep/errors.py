"""The errors llmprep raises for input a user can fix, and how the commands report them and log.

Every such error is a :class:`UserError` (data, source, config, checkpoint, judge) whose message
names the file, key or value to fix. ``train.py``, ``evaluate.py`` and ``llmprep-export`` print
it as one line, write the same line to the run's log and exit with status 1; with
``HYDRA_FULL_ERROR=1`` the whole traceback is shown instead. A ``ValueError`` raised by
llmprep's own code (not by a library it calls) is input validation too and is reported the same
way. Anything else is a bug and keeps its traceback.

Every log line of ``train.py`` and ``evaluate.py`` goes once through Hydra's handlers (console
and the run's log file): the console handlers that :data:`LIBRARY_LOGGERS` add when imported
before logging is configured, which print each line a second time (outside the log file, or to
a stream gone by the next run in the same process), are removed. Lines that say nothing about
the run are dropped (:data:`NOISE`): Lightning's advertisements for its cloud loggers, its note
that our model summary replaces its own, and torch's deprecation warning about Lightning's
pytree helper.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PACKAGE_DIR = Path(__file__).resolve().parent
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "torchmetrics",
    "huggingface_hub",
)

NOISE = (
    "💡 Tip: ",
    "Trainer already configured with model summary callbacks",
)
"""Starts of library log lines that are dropped: they advertise or explain Lightning itself."""

T = TypeVar("T")


def _not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(NOISE)


def quiet_libraries() -> None:
    """Drop the :data:`NOISE` log lines (at Hydra's handlers, where every line ends up) and
    the deprecation warning torch raises for Lightning's pytree helper (``isinstance(treespec,
    LeafSpec)``) once per run."""
    for handler in logging.getLogger().handlers:
        if _not_noise not in handler.filters:
            handler.addFilter(_not_noise)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class UserError(Exception):
    """Bad input, named precisely enough to be fixed without reading a traceback."""


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: missing, corrupt, not ours, or for another model."""


def is_user_error(err: BaseException) -> bool:
    """True for a :class:`UserError`, or a ``ValueError`` whose innermost frame is llmprep's."""
    if isinstance(err, UserError):
        return True
    if not isinstance(err, ValueError) or err.__traceback__ is None:
        return False
    innermost = traceback.extract_tb(err.__traceback__)[-1]
    return Path(innermost.filename).resolve().is_relative_to(PACKAGE_DIR)


def one_line(err: BaseException) -> str:
    """The error's message on a single line."""
    return " ".join(str(err).split()) or type(err).__name__


def report_user_errors(command: Callable[[], T], log: logging.Logger) -> T:
    """Run ``command`` with the library log lines routed to Hydra's handlers (see the module
    docstring); a user error is logged as one line (console and the run's log file) and ends the
    process with status 1, unless ``HYDRA_FULL_ERROR=1`` asks for the traceback. Ctrl-C outside
    fitting (which :mod:`llmprep.training.interrupts` handles) ends it with status 130, no
    traceback."""
    quiet_libraries()
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    try:
        return command()
    except KeyboardInterrupt:
        log.error("Interrupted by Ctrl-C")
        sys.exit(130)
    except Exception as err:
        if not is_user_error(err) or os.environ.get(FULL_ERROR_ENV) == "1":
            raise
        log.error("%s", one_line(err))
        sys.exit(1)
