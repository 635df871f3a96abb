"""Stage ``pretrain``: next-token prediction (the book's chapter 5)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from llmprep.model.init import build_model
from llmprep.tasks.base import GPTTask, is_sharded
from llmprep.training.config import plain_config

log = logging.getLogger(__name__)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; targets of -100 are ignored."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


class PretrainTask(GPTTask):
    """Trains the GPT on sliding windows; samples a continuation of ``sample.prompt`` at each
    validation so progress can be read, not only plotted."""

    def __init__(self, config: dict[str, Any], model_config: dict[str, Any], model=None) -> None:
        super().__init__(config, model_config, model)
        self.val_loss = MeanMetric()
        self.samples: list[list[Any]] = []

    @classmethod
    def from_config(cls, cfg: DictConfig, output_dir: Path):
        """The task and its data module for the composed run config ``cfg``."""
        model = build_model(cfg.model, cfg.init_from)
        datamodule = instantiate(cfg.data, context_length=model.config.context_length)
        task = cls(plain_config(cfg), asdict(model.config), model=model)
        return task, datamodule

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        inputs, targets = batch
        loss = lm_loss(self.model(inputs), targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        loss = lm_loss(self.model(inputs), targets)
        self.val_loss.update(loss, weight=targets.numel())

    def on_validation_epoch_end(self) -> None:
        self.log_loss("val", self.val_loss)
        if not self.trainer.sanity_checking and (self.trainer.is_global_zero or self.sharded):
            self.log_sample()

    def after_fit(self, trainer, datamodule) -> None:
        """Print a continuation of the sample prompt by the final model (not under FSDP, whose
        shards are gone once fitting ends: the last validation sample is in the log)."""
        if trainer.is_global_zero and not is_sharded(trainer):
            self.to(trainer.strategy.root_device)
            sample = self.config["sample"]
            text = self.complete(
                sample["prompt"], sample["max_new_tokens"], sample["temperature"], sample["top_k"]
            )
            print(f"\nSample after training:\n{sample['prompt']}{text}\n")

    def log_sample(self) -> str:
        """Generate from the sample prompt and log the text (W&B table, console) on rank 0."""
        sample = self.config["sample"]
        text = self.complete(
            sample["prompt"], sample["max_new_tokens"], sample["temperature"], sample["top_k"]
        )
        if not self.trainer.is_global_zero:
            return text
        log.info("sample at step %d: %s%s", self.global_step, sample["prompt"], text)
        self.samples.append([self.global_step, self.tokens_seen, sample["prompt"] + text])
        for lg in self.loggers:
            if hasattr(lg, "log_text"):
                lg.log_text(
                    key="samples", columns=["step", "tokens_seen", "text"], data=self.samples
                )
        return text
