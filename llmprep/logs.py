"""Every log line of a command once, through Hydra's handlers: to the console (stderr) and to the
run's log file.

Lightning (``lightning``, ``lightning.pytorch``, ``lightning.fabric``), torchmetrics and the hub
client give their loggers a console handler of their own when imported before logging is
configured, which prints each of their lines a second time (and outside the run's log file, or to
a stream that is gone by the next run in the same process). Those handlers are removed so the
lines propagate to Hydra's.
"""

from __future__ import annotations

import logging

LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "torchmetrics",
    "huggingface_hub",
)


def route_library_logs() -> None:
    """Send Lightning's log lines to the root logger's handlers only."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
