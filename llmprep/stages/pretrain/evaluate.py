"""Evaluation of a pretraining checkpoint: loss and perplexity on held-out text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from llmprep.data.sources import resolve_many
from llmprep.data.token_store import build_token_store
from llmprep.data.windows import TokenWindows
from llmprep.files import write_json_atomically
from llmprep.stages import load_task, stored_datamodule
from llmprep.training.report import (
    eval_device,
    loss_report,
    print_table,
    results_path,
)
from llmprep.training.task import lm_loss


@torch.no_grad()
def loss_over(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Token-weighted mean next-token loss over a loader, with its perplexity."""
    return loss_report(
        (lm_loss(model(inputs.to(device)), targets.to(device)), targets.numel())
        for inputs, targets in loader
    )


def evaluate(cfg: DictConfig, ckpt_path: Path) -> dict[str, Any]:
    """Loss and perplexity on the run's validation split and on ``eval.files``; printed and
    written to ``<checkpoint>.eval.json``. Windows use the run's ``max_length`` and ``stride``."""
    device = eval_device(cfg)
    task = load_task(ckpt_path, "pretrain", device)
    datamodule = stored_datamodule(
        "pretrain", task.config["data"], context_length=task.model.config.context_length
    )
    datamodule.prepare_data()
    datamodule.setup("validate")
    batch = cfg.eval.batch_size
    sets: dict[str, TokenWindows] = {}
    if datamodule.val_set is not None:
        sets["validation"] = datamodule.val_set
    for path in resolve_many(list(cfg.eval.files)) if cfg.eval.files else []:
        tokens = np.asarray(build_token_store([path]).tokens)
        sets[str(path)] = TokenWindows(tokens, datamodule.max_length, datamodule.stride)
    if not sets:
        raise ValueError("nothing to evaluate: the run has no validation split and eval.files=[]")
    results = {
        name: loss_over(task.model, DataLoader(windows, batch_size=batch), device)
        for name, windows in sets.items()
    }
    print_table(f"{ckpt_path.name}", [{"split": name, **r} for name, r in results.items()])
    out = write_json_atomically(
        results_path(ckpt_path), {"checkpoint": str(ckpt_path), "results": results}
    )
    print(f"results written to {out}")
    return results
