"""The generators' states in checkpoints: a resumed run draws what the saved run drew next."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from llmprep.training.random_state import RandomState


def draws() -> tuple[list[float], float, float]:
    """One draw from each of torch's, NumPy's and Python's global generators."""
    return torch.rand(3).tolist(), float(np.random.rand()), random.random()


def reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def through_a_checkpoint(state: dict) -> dict:
    """``state`` saved and loaded back the way Lightning loads checkpoints (weights only)."""
    buffer = io.BytesIO()
    torch.save({"callbacks": {"RandomState": state}}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["callbacks"]["RandomState"]


def test_resumed_training_draws_what_the_saved_run_drew_after_its_save() -> None:
    reseed(1)
    draws()
    state = through_a_checkpoint(RandomState().state_dict())
    expected = [draws(), draws()]

    reseed(2)  # a new process, whose set-up draws whatever it draws
    draws()
    resumed = RandomState()
    resumed.load_state_dict(state)
    draws()  # before the first training batch: not yet restored
    resumed.on_train_batch_start(None, None, None, 0)
    first = draws()
    resumed.on_train_batch_start(None, None, None, 1)  # restored once, not at every batch
    assert [first, draws()] == expected


def test_validation_leaves_the_training_generators_where_they_were() -> None:
    reseed(3)
    expected = draws()
    reseed(3)
    callback = RandomState()
    callback.on_validation_start(None, None)
    draws()
    callback.on_validation_end(None, None)
    assert draws() == expected
