"""The loss plot is a real PNG and its history survives a resume."""

from __future__ import annotations

import matplotlib.image as mpimg

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
