"""AdamW groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmprep.model import GPT, GPTConfig
from llmprep.training.optim import build_adamw, lr_lambda, param_groups


def _model() -> nn.Module:
    return nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))


def test_only_matrices_and_embeddings_are_decayed():
    decay, no_decay = param_groups(_model().named_parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(p.dim() for p in decay["params"]) == [2, 2]
    assert sorted(p.dim() for p in no_decay["params"]) == [1, 1, 1]


def test_decay_all_decays_every_tensor_like_the_book():
    groups = param_groups(_model().named_parameters(), 0.1, decay_all=True)
    assert len(groups) == 1 and len(groups[0]["params"]) == 5


def test_frozen_parameters_are_left_out_and_nothing_trainable_is_an_error():
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = build_adamw(model.named_parameters(), {"lr": 1e-3, "weight_decay": 0.1})
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_adamw(model.named_parameters(), {"lr": 1e-3, "weight_decay": 0.1})


def _optim(warmup_steps: int, schedule: str, lr: float, min_lr: float) -> dict:
    return {"warmup_steps": warmup_steps, "schedule": schedule, "lr": lr, "min_lr": min_lr}


def test_warmup_then_cosine_reaches_min_lr():
    f = lr_lambda(_optim(10, "cosine", 1e-3, 1e-4), total_steps=110)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)


def test_constant_schedule_and_unknown_schedule():
    f = lr_lambda(_optim(0, "constant", 1e-3, 1e-4), 100)
    assert f(0) == f(99) == 1.0
    with pytest.raises(ValueError, match=r"optim\.schedule='linear'"):
        lr_lambda(_optim(0, "linear", 1e-3, 1e-4), 100)


def test_a_floor_above_the_rate_is_refused():
    with pytest.raises(ValueError, match=r"optim\.min_lr=5e-05 exceeds optim\.lr=1e-05"):
        lr_lambda(_optim(0, "cosine", 1e-5, 5e-5), 100)


def test_decay_follows_names_once_sharding_flattened_the_tensors():
    model = _model()
    matrices = {n for n, p in model.named_parameters() if p.dim() >= 2}
    flat = [
        (f"_fsdp_wrapped_module.{n}", nn.Parameter(p.detach().flatten()))
        for n, p in model.named_parameters()
    ]
    decay, no_decay = param_groups(flat, 0.1, matrices=matrices)
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 3
    by_shape = param_groups(flat, 0.1)  # by shape alone every shard looks like a bias
    assert by_shape[0]["params"] == [] and len(by_shape[1]["params"]) == 5


def _gpt_steps(optimizer_of, steps: int = 3) -> list[torch.Tensor]:
    """The parameters of a tiny GPT after ``steps`` AdamW steps on fixed random batches."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_layers=2, n_heads=2))
    optimizer = optimizer_of(model)
    batches = torch.randint(0, 64, (steps, 2, 2, 16), generator=torch.Generator().manual_seed(1))
    for inputs, targets in batches:
        optimizer.zero_grad()
        model.loss(inputs, targets).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def test_adamw_is_fused_on_the_cpu_and_steps_like_the_unfused_one():
    optim = {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.95)}

    def ours(model: nn.Module) -> torch.optim.AdamW:
        optimizer = build_adamw(model.named_parameters(), optim)
        assert optimizer.defaults["fused"] and not optimizer.defaults["foreach"]
        return optimizer

    def unfused(model: nn.Module) -> torch.optim.AdamW:
        groups = param_groups(model.named_parameters(), optim["weight_decay"])
        return torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=False, fused=False)

    for a, b in zip(_gpt_steps(ours), _gpt_steps(unfused), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_parameters_the_fused_kernel_refuses_get_the_foreach_one():
    complex_param = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    optimizer = build_adamw([("z", complex_param)], {"lr": 1e-3, "weight_decay": 0.0})
    assert optimizer.defaults["foreach"] and not optimizer.defaults["fused"]
