"""The stages llmprep runs, one sub-package each, found by name.

A stage is a folder ``llmprep/stages/<name>/`` (plus ``conf/stage/<name>.yaml``) whose
``__init__`` names its LightningModule (``Task``), the data module classes it reads
(``DATA_MODULES``), its report on a checkpoint (``report``: after fitting and in
``evaluate.py``) and its evaluation command (``evaluate(cfg, ckpt_path)``). Adding a stage
is adding a folder: nothing here lists them. A stage imports no other stage, unless it names it
in ``BUILDS_ON`` (``dpo`` builds on ``instruct``, as the book's DPO tunes its instruction-tuned
model); the stages it builds on never import it back.

Nothing read from a checkpoint or an exported folder is ever instantiated. A stored stage name
is looked up among these folders; stored data settings are plain values handed to one of the
data module classes the stage lists, and a stored ``_target_`` naming any other class is
refused.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from llmprep.checkpoints import read_checkpoint, run_config
from llmprep.errors import CheckpointError, ConfigError


def get_stage(name: str) -> ModuleType:
    """The package of the stage called ``name``: a sub-package of this package."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)
    if name not in names:
        raise ConfigError(f"stage.name={name!r}: expected one of {', '.join(names)}")
    return importlib.import_module(f"{__name__}.{name}")


def stored_datamodule(stage: str, data: Mapping[str, Any], **settings: Any) -> Any:
    """The data module a checkpoint's stored ``data`` config describes, built from its plain
    values (plus ``settings``) by a class ``stage`` lists; anything else is refused."""
    target = data.get("_target_")
    known = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in get_stage(stage).DATA_MODULES}
    if target not in known:
        raise CheckpointError(
            f"the checkpoint's data._target_={target!r} is not a data module of stage "
            f"{stage!r} ({', '.join(known)}); llmprep never instantiates classes named in a "
            "checkpoint"
        )
    values = {k: v for k, v in data.items() if k != "_target_"}
    return known[target](**{**values, **settings})


def load_task(ckpt_path: str | Path, stage: str, device: str | torch.device = "cpu") -> Any:
    """The task of ``stage`` restored from ``ckpt_path``, in eval mode on ``device``, with the
    run config the checkpoint stores as its ``run_config``.

    The checkpoint is read once, safely (see :mod:`llmprep.checkpoints`); the task class is
    ``stage``'s from the registry, never one named in the file, and gets the stored
    hyperparameters as plain values.
    """
    return restore_task(read_checkpoint(ckpt_path, "ckpt_path"), ckpt_path, stage, device)


def restore_task(
    ckpt: Mapping[str, Any], ckpt_path: str | Path, stage: str, device: str | torch.device = "cpu"
) -> Any:
    """:func:`load_task` on a checkpoint already read (``ckpt``) from ``ckpt_path``."""
    trained_stage = run_config(ckpt, ckpt_path, "ckpt_path")["stage"].get("name")
    if trained_stage != stage:
        raise CheckpointError(
            f"ckpt_path={str(ckpt_path)!r} was trained by stage {trained_stage!r}, not {stage!r}: "
            f"run `python evaluate.py stage={trained_stage} ckpt_path=...`"
        )
    task = get_stage(stage).Task(**ckpt["hyper_parameters"])
    task.on_load_checkpoint(ckpt)
    task.load_state_dict(ckpt["state_dict"])
    return task.to(device).eval()
