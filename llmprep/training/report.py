"""What every stage's evaluation shares: loading the checkpoint, a table, a JSON file beside it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from llmprep.training.task import perplexity


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
