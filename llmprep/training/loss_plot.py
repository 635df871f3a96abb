"""The loss plot of a run: training and validation loss against tokens seen, epochs on top."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from llmprep.files import atomic_path


class LossPlot(L.Callback):
    """Records losses while fitting and writes ``loss.png`` at the end (or when fitting stops
    early), like the book's ch. 5 plot.

    The training curve holds the loss of each batch as the task computed it: under automatic
    optimization Lightning hands ``on_train_batch_end`` that loss divided by
    ``accumulate_grad_batches`` (scaled for the accumulated backward pass), so it is multiplied
    back here, or training would be plotted below validation, which is never scaled. The history
    is part of the checkpoint, so a resumed run plots its whole course.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.train: list[tuple[int, float, float]] = []
        self.val: list[tuple[int, float, float]] = []

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

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None or not self.train:
            return
        tokens, epoch, _ = self.train[-1]
        self.val.append((tokens, epoch, float(loss)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.train:
            plot_losses(self.train, self.val, self.path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A run stopped early (Ctrl-C, SIGTERM, an error) plots what it trained too."""
        self.on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(r) for r in state_dict.get("train", [])]
        self.val = [tuple(r) for r in state_dict.get("val", [])]


def plot_losses(
    train: list[tuple[int, float, float]], val: list[tuple[int, float, float]], path: Path
) -> Path:
    """Write the plot of ``(tokens_seen, epoch, loss)`` rows to ``path`` (a PNG), atomically."""
    fig, ax = plt.subplots(figsize=(6, 4))
    tokens, epochs, losses = zip(*train, strict=True)
    ax.plot(tokens, losses, label="Training loss")
    if val:
        ax.plot([r[0] for r in val], [r[2] for r in val], "o-", label="Validation loss")
    ax.set_xlabel("Tokens seen")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right")
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
