"""Trainer settings of the ``hardware`` group: devices, strategy, precision, math threads."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def apply_threads(hardware: DictConfig) -> None:
    """Set this process's math-library threads to ``hardware.threads`` when given (checked by
    :func:`~llmprep.training.validate.validate_config`)."""
    if hardware.get("threads") is not None:
        torch.set_num_threads(hardware.threads)


def trainer_kwargs(hardware: DictConfig) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer``: the ``hardware`` group's keys but ``threads``,
    a ``_target_`` among them (``hardware=fsdp``'s strategy) instantiated."""
    kwargs = instantiate(hardware, _convert_="all")
    kwargs.pop("threads", None)
    return kwargs
