"""Inference mode: eval and no gradients inside the block, every module's own mode after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmprep.model.modes import evaluating


def test_block_runs_in_eval_mode_and_each_module_gets_its_own_mode_back() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.5)))
    model.train()
    model[2].eval()
    with evaluating(model):
        assert not any(m.training for m in model.modules())
        assert not model(torch.ones(1, 2)).requires_grad
    assert [m.training for m in model.modules()] == [True, True, True, False, False]


def test_modes_are_restored_when_the_block_raises() -> None:
    model = nn.Dropout(0.5).train()
    with pytest.raises(RuntimeError, match="stop"), evaluating(model):
        raise RuntimeError("stop")
    assert model.training and torch.is_grad_enabled()
