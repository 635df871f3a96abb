"""The random number generators' states in checkpoints, so a resumed run draws the same dropout
masks (and any other random numbers) as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def capture() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CUDA's once in use), as
    tensors and plain values only, so checkpoints load with ``weights_only=True``."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    key = torch.from_numpy(key.astype(np.int64))
    state = {
        "python": random.getstate(),
        "numpy": {"key": key, "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set the global generators to ``state`` (from :func:`capture`). CUDA states are restored
    on as many devices as both the state and this machine have."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    key = numpy["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


class RandomState(L.Callback):
    """Saves the generators' states in every checkpoint and restores them on resume.

    A resumed run sets the saved states just before its first training batch, after its own
    set-up has drawn whatever it draws. Validation draws from a copy: the generators are restored
    when it ends, so the training stream is the same however often a run validates (and whether
    a resumed run repeats the validation run after the last save). Under DDP every process
    restores the states of process 0, which saved the checkpoint.
    """

    def __init__(self) -> None:
        self._resume: dict[str, Any] | None = None
        self._outside_validation: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict  # for the first training batch

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._resume is not None:
            restore(self._resume)
            self._resume = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outside_validation = capture()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._outside_validation is not None:
            restore(self._outside_validation)
            self._outside_validation = None
