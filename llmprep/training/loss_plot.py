"""The loss plot of a run: training and validation loss against tokens seen, epochs on top, and
below it any other figure the task's training step returns beside the loss (DPO's margin)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from llmprep.files import atomic_path

Rows = list[tuple[int, float, float]]
"""``(tokens_seen, epoch, value)`` rows of one curve."""


class LossPlot(L.Callback):
    """Records losses while fitting and writes ``loss.png`` at the end (or when fitting stops
    early), like the book's ch. 5 plot.

    The training curve holds the loss of each batch as the task computed it: under automatic
    optimization Lightning hands ``on_train_batch_end`` that loss divided by
    ``accumulate_grad_batches`` (scaled for the accumulated backward pass), so it is multiplied
    back here, or training would be plotted below validation, which is never scaled. The history
    is part of the checkpoint, so a resumed run plots its whole course.

    A training step that returns a dict with other scalars beside ``loss`` (DPO's ``margin``)
    gets each plotted in a panel of its own under the loss, with its validation value read from
    the logged ``val/<name>``; those are not scaled by the accumulation.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.train: Rows = []
        self.val: Rows = []
        # Other figures by name: (training rows, validation rows) as for the loss.
        self.extras: dict[str, tuple[Rows, Rows]] = {}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if pl_module.automatic_optimization:
            loss = loss * trainer.accumulate_grad_batches
        batches = trainer.num_training_batches
        per_epoch = batches if isinstance(batches, int) and batches > 0 else batch_idx + 1
        epoch = trainer.current_epoch + (batch_idx + 1) / per_epoch
        tokens = int(getattr(pl_module, "tokens_seen", trainer.global_step))
        self.train.append((tokens, epoch, float(loss)))
        for name, value in outputs.items() if isinstance(outputs, dict) else ():
            if name != "loss" and isinstance(value, torch.Tensor | float) and _is_scalar(value):
                self.extras.setdefault(name, ([], []))[0].append((tokens, epoch, float(value)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None or not self.train:
            return
        tokens, epoch, _ = self.train[-1]
        self.val.append((tokens, epoch, float(loss)))
        for name, (_, val) in self.extras.items():
            value = trainer.callback_metrics.get(f"val/{name}")
            if value is not None:
                val.append((tokens, epoch, float(value)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.train:
            plot_losses(self.train, self.val, self.path, self.extras)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A run stopped early (Ctrl-C, SIGTERM, an error) plots what it trained too."""
        self.on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val, "extras": self.extras}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(r) for r in state_dict.get("train", [])]
        self.val = [tuple(r) for r in state_dict.get("val", [])]
        self.extras = {
            name: ([tuple(r) for r in train], [tuple(r) for r in val])
            for name, (train, val) in state_dict.get("extras", {}).items()
        }


def _is_scalar(value: torch.Tensor | float) -> bool:
    return not isinstance(value, torch.Tensor) or value.numel() == 1


def plot_losses(
    train: Rows, val: Rows, path: Path, extras: Mapping[str, tuple[Rows, Rows]] | None = None
) -> Path:
    """Write the plot of ``(tokens_seen, epoch, loss)`` rows to ``path`` (a PNG), atomically;
    each of ``extras`` (name: training and validation rows alike) gets a panel below."""
    extras = extras or {}
    fig, axes = plt.subplots(
        1 + len(extras), 1, figsize=(6, 4 + 2.5 * len(extras)), sharex=True, squeeze=False
    )
    ax = axes[0, 0]
    tokens, epochs, losses = zip(*train, strict=True)
    _curves(ax, train, val, "loss")
    ax.set_ylabel("Loss")
    for panel, (name, (rows, val_rows)) in zip(axes[1:, 0], extras.items(), strict=True):
        _curves(panel, rows, val_rows, name)
        panel.set_ylabel(name.replace("_", " ").capitalize())
    axes[-1, 0].set_xlabel("Tokens seen")
    top = ax.twiny()
    top.plot(epochs, losses, alpha=0)
    top.set_xlabel("Epochs")
    top.set_xlim(min(epochs), max(max(epochs), min(epochs) + 1e-9))
    ax.set_xlim(min(tokens), max(max(tokens), min(tokens) + 1))
    if all(math.isfinite(x) for x in losses):
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path


def _curves(ax: Any, train: Rows, val: Rows, name: str) -> None:
    """The training curve and the validation points of one figure on ``ax``."""
    ax.plot([r[0] for r in train], [r[2] for r in train], label=f"Training {name}")
    if val:
        ax.plot([r[0] for r in val], [r[2] for r in val], "o-", label=f"Validation {name}")
    ax.legend(loc="upper right")
