"""The stages llmprep runs, by name: the one place that says which task, data modules and
evaluation each stage uses.

Nothing read from a checkpoint or an exported folder is ever instantiated. A stored stage name
is looked up here; stored data settings are plain values handed to one of the data module
classes the stage lists, and a stored ``_target_`` naming any other class is refused. The
classes are named by import path and imported on first use, so this module imports no stage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmprep.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Stage:
    """Import paths of a stage's LightningModule, evaluation function and data modules."""

    task: str
    evaluator: str
    data_modules: tuple[str, ...]


STAGES: dict[str, Stage] = {
    "pretrain": Stage(
        "llmprep.tasks.pretrain.PretrainTask",
        "llmprep.evaluation.pretrain.evaluate",
        ("llmprep.data.pretrain.PretrainDataModule",),
    ),
    "classify": Stage(
        "llmprep.tasks.classify.ClassifyTask",
        "llmprep.evaluation.classify.evaluate",
        ("llmprep.data.classification.ClassificationDataModule",),
    ),
    "instruct": Stage(
        "llmprep.tasks.instruct.InstructTask",
        "llmprep.evaluation.instruct.evaluate",
        ("llmprep.data.instruct.InstructDataModule",),
    ),
}


def _load(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def get_stage(name: str) -> Stage:
    """The stage called ``name``."""
    if name not in STAGES:
        raise ConfigError(f"stage.name={name!r}: expected one of {', '.join(STAGES)}")
    return STAGES[name]


def task_class(stage: str) -> type:
    """The LightningModule class of ``stage``."""
    return _load(get_stage(stage).task)


def evaluator(stage: str) -> Callable[..., Any]:
    """The evaluation function of ``stage`` (``evaluate(cfg, ckpt_path)``)."""
    return _load(get_stage(stage).evaluator)


def stored_datamodule(stage: str, data: Mapping[str, Any], **settings: Any) -> Any:
    """The data module a checkpoint's stored ``data`` config describes, built from its plain
    values (plus ``settings``) by a class ``stage`` lists; anything else is refused."""
    target = data.get("_target_")
    if target not in get_stage(stage).data_modules:
        raise CheckpointError(
            f"the checkpoint's data._target_={target!r} is not a data module of stage "
            f"{stage!r} ({', '.join(get_stage(stage).data_modules)}); llmprep never "
            "instantiates classes named in a checkpoint"
        )
    values = {k: v for k, v in data.items() if k != "_target_"}
    return _load(target)(**{**values, **settings})
