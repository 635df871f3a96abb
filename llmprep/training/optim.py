"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import torch
from torch import nn

FSDP_PREFIX = "_fsdp_wrapped_module."

FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")
"""Devices PyTorch's fused AdamW kernel runs on (for floating-point parameters). PyTorch only
checks at the first step, so the choice is made here, up front."""


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    decay_all: bool = False,
    matrices: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and an undecayed group.

    Matrices and embeddings (2+ dimensions) are decayed; biases and LayerNorm gains are not, since
    shrinking them towards zero only hurts. ``decay_all`` decays everything, as the book's plain
    ``AdamW(model.parameters(), weight_decay=0.1)`` does. ``matrices`` names the 2+-dimensional
    parameters before FSDP flattened them into 1-D shards (``None``: decide by current shapes).
    The groups are named ``lr`` and ``lr_no_decay``, which ``LearningRateMonitor`` logs under the
    scheduler's name: ``train/lr``.
    """
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 if matrices is None else name.replace(FSDP_PREFIX, "") in matrices
        (decay if decay_all or is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "lr"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "lr_no_decay"})
    return groups


def build_adamw(
    named_params: Iterable[tuple[str, nn.Parameter]],
    optim: Mapping[str, Any],
    matrices: Collection[str] | None = None,
) -> torch.optim.AdamW:
    """AdamW from the ``optim`` config, with PyTorch's fused kernel where every parameter is a
    floating-point tensor on one of :data:`FUSED_DEVICES`, the ``foreach`` one otherwise: one
    pass over all tensors instead of one per tensor (on CPU, a fifth of the time for GPT-2
    small). ``matrices``: see :func:`param_groups`."""
    groups = param_groups(
        named_params, optim["weight_decay"], optim.get("decay_all", False), matrices
    )
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError(
            "no trainable parameters: check the stage's `trainable` and `lora` settings"
        )
    fused = all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(
        groups,
        lr=optim["lr"],
        betas=tuple(optim.get("betas", (0.9, 0.999))),
        eps=optim.get("eps", 1e-8),
        fused=fused,
        foreach=not fused,
    )


def lr_lambda(optim: Mapping[str, Any], total_steps: int) -> Callable[[int], float]:
    """The factor on ``optim.lr`` at each optimizer step: linear warmup (``warmup_steps``), then
    ``schedule``: constant, or cosine reaching ``min_lr`` at ``total_steps`` and staying there."""
    lr, min_lr = optim["lr"], optim.get("min_lr", optim["lr"])
    warmup_steps, schedule = optim.get("warmup_steps", 0), optim.get("schedule", "constant")
    if schedule not in {"cosine", "constant"}:
        raise ValueError(f"optim.schedule={schedule!r}: expected 'cosine' or 'constant'")
    if schedule == "cosine" and min_lr > lr:
        raise ValueError(
            f"optim.min_lr={min_lr} exceeds optim.lr={lr}: cosine would raise the rate"
        )
    floor = min_lr / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
