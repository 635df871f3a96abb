"""What every stage's evaluation shares: loading the checkpoint, a table, a JSON file beside it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, get_method
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from llmprep.atomic import write_json_atomically
from llmprep.model.init import read_checkpoint
from llmprep.tasks.base import GPTTask, perplexity


def load_task(ckpt_path: Path, stage: str, device: torch.device) -> GPTTask:
    """The task of ``stage`` restored from ``ckpt_path``, in eval mode on ``device``.

    The checkpoint is read once, safely (no pickled code), to check that ``stage`` trained it
    and to find its task class; Lightning's ``load_from_checkpoint`` then restores the task.
    """
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} does not exist")
    ckpt = read_checkpoint(ckpt_path, "ckpt_path")
    try:
        trained = ckpt["hyper_parameters"]["config"]["stage"]
        trained_stage, task_name = trained["name"], trained["task"]
    except (KeyError, TypeError):
        raise ValueError(f"ckpt_path={str(ckpt_path)!r} is not an llmprep checkpoint") from None
    if trained_stage != stage:
        raise ValueError(
            f"ckpt_path={str(ckpt_path)!r} was trained by stage {trained_stage!r}, not {stage!r}: "
            f"run `python evaluate.py stage={trained_stage} ckpt_path=...`"
        )
    task_cls = get_class(task_name)
    task = task_cls.load_from_checkpoint(ckpt_path, map_location=device, weights_only=True)
    return task.eval()


def eval_device(cfg: DictConfig) -> torch.device:
    """The GPU when the hardware config asks for one and it exists, else the CPU."""
    wants_gpu = cfg.hardware.accelerator in {"gpu", "cuda", "auto"}
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def print_table(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of equal keys as a table on the console."""
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


def results_path(ckpt_path: Path, suffix: str = "eval") -> Path:
    """Where a checkpoint's results go: beside it, ``<name>.<suffix>.json``."""
    return ckpt_path.with_name(f"{ckpt_path.stem}.{suffix}.json")


def write_json(path: Path, data: Any) -> Path:
    """Write results ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    return write_json_atomically(path, data)


def loss_report(batches: Iterable[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    """Token-weighted mean of per-batch mean losses, given as ``(loss, tokens)``, with its
    perplexity; batches without tokens are skipped."""
    total, count = 0.0, 0
    for loss, tokens in batches:
        if tokens:
            total += loss.item() * tokens
            count += tokens
    if not count:
        raise ValueError("nothing to score: the split has no target tokens")
    mean = total / count
    return {"tokens": count, "loss": mean, "perplexity": perplexity(mean).item()}


def run_evaluation(cfg: DictConfig) -> Any:
    """Dispatch to the stage's evaluator (``stage.evaluator``) for ``ckpt_path``."""
    return get_method(cfg.stage.evaluator)(cfg, Path(cfg.ckpt_path).expanduser().resolve())
