"""Trainer settings of the ``hardware`` group: devices, strategy, precision."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from omegaconf import DictConfig

STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")


def build_strategy(name: str) -> str | Strategy:
    """The Lightning strategy for ``hardware.strategy``.

    FSDP shards at transformer-block granularity, the natural unit of our GPT. DDP keeps
    ``find_unused_parameters`` off: frozen parameters (LoRA, ``last_block``) need no gradient sync.
    """
    if name not in STRATEGIES:
        raise ValueError(f"hardware.strategy={name!r}: expected one of {', '.join(STRATEGIES)}")
    if name == "fsdp":
        from llmprep.model.gpt import Block

        return FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy=None)
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=False)
    return name


def apply_threads(hardware: DictConfig) -> None:
    """Set this process's math-library threads to ``hardware.threads`` when given."""
    threads = hardware.get("threads")
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"hardware.threads={threads}: expected a positive number or null")
        torch.set_num_threads(int(threads))


def trainer_kwargs(hardware: DictConfig) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer`` from the ``hardware`` group."""
    return {
        "accelerator": hardware.accelerator,
        "devices": hardware.devices,
        "num_nodes": hardware.num_nodes,
        "strategy": build_strategy(hardware.strategy),
        "precision": hardware.precision,
    }
