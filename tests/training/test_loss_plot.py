"""The loss plot is a real PNG of the losses the task computed; its history survives a resume."""

from __future__ import annotations

import lightning as L
import matplotlib.image as mpimg
import pytest
import torch
import torch.nn.functional as F
from conftest import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from llmprep.training.loss_plot import LossPlot, plot_losses


def test_plot_is_a_readable_png(tmp_path):
    train = [(100 * i, i / 10, 10 - i / 3) for i in range(1, 20)]
    val = [(1000, 1.0, 9.5), (1900, 1.9, 9.0)]
    path = plot_losses(train, val, tmp_path / "loss.png")
    image = mpimg.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert not list(tmp_path.glob("*.tmp*"))


def test_history_round_trips_through_state_dict(tmp_path):
    plot = LossPlot(tmp_path / "loss.png")
    plot.train, plot.val = [(1, 0.5, 3.0)], [(1, 0.5, 3.5)]
    again = LossPlot(tmp_path / "loss.png")
    again.load_state_dict(plot.state_dict())
    assert again.train == plot.train and again.val == plot.val


class Regression(L.LightningModule):
    """A tiny model that keeps every training loss it computed."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.computed: list[float] = []

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = F.mse_loss(self.layer(inputs), targets)
        self.computed.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_losses_are_the_task_losses_under_gradient_accumulation(tmp_path):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(12, 4, generator=generator)
    data = TensorDataset(inputs, 10 * inputs.sum(dim=1, keepdim=True))
    plot, task = LossPlot(tmp_path / "loss.png"), Regression()
    trainer = quiet_trainer(
        max_epochs=1, accumulate_grad_batches=3, callbacks=[plot], default_root_dir=tmp_path
    )
    trainer.fit(task, DataLoader(data, batch_size=2))
    assert len(task.computed) == 6
    assert [loss for _, _, loss in plot.train] == pytest.approx(task.computed, rel=1e-6)


class WithMargin(Regression):
    """Returns a second figure beside the loss and validates both, as the DPO task does."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return {"loss": loss, "margin": torch.tensor(float(batch_idx)), "vector": torch.ones(2)}

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", 1.5)
        self.log("val/margin", 0.25)


def test_other_scalars_a_training_step_returns_get_a_panel_of_their_own(tmp_path):
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(inputs, inputs.sum(dim=1, keepdim=True)), batch_size=2)
    plot = LossPlot(tmp_path / "loss.png")
    trainer = quiet_trainer(max_epochs=1, callbacks=[plot], default_root_dir=tmp_path)
    trainer.fit(WithMargin(), data, data)
    train, val = plot.extras["margin"]
    assert list(plot.extras) == ["margin"]  # the loss has its own panel; non-scalars are left out
    assert [(tokens, value) for tokens, _, value in train] == [
        (1, 0.0),
        (2, 1.0),
        (3, 2.0),
        (4, 3.0),
    ]
    assert [value for _, _, value in val] == [0.25]
    again = LossPlot(tmp_path / "loss.png")
    again.load_state_dict(plot.state_dict())
    assert again.extras == plot.extras
    alone = plot_losses(plot.train, plot.val, tmp_path / "alone.png")
    assert mpimg.imread(tmp_path / "loss.png").shape[0] > mpimg.imread(alone).shape[0]
