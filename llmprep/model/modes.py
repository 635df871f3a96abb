"""Running a module for inference without changing how it was set up for training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode and without gradients for the block; afterwards every submodule
    is back in its own mode, whatever the block raised.

    Every inference entry point (generation, classification) goes through this, so dropout never
    makes an answer depend on when it was asked (e.g. after ``load_from_checkpoint``, which
    returns a module in training mode). Each submodule's flag is restored, as Lightning's loops
    do: ``module.train(was_training)`` would switch on a part deliberately left in eval mode.
    """
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for sub, training in modes:
            sub.training = training
