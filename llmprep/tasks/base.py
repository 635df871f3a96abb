"""The LightningModule all stages share: our GPT built from plain config, AdamW and its schedule.

Hyperparameters are the run's resolved config as plain dicts (never modules), so
``load_from_checkpoint`` rebuilds the exact model without the Hydra run around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from llmprep.generate import generate
from llmprep.model import GPT, GPTConfig
from llmprep.tasks.optim import build_adamw, lr_lambda
from llmprep.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


class GPTTask(L.LightningModule):
    """Holds ``self.model`` (our GPT), counts tokens seen and builds the optimizer.

    ``config`` is the whole resolved run config (plain dict); ``model_config`` the final
    architecture (a ``GPTConfig`` as dict: with ``init_from`` it is the pretrained model's).
    ``model`` lets ``from_config`` hand in a GPT with loaded weights; it is not a hyperparameter.
    """

    def __init__(
        self, config: dict[str, Any], model_config: dict[str, Any], model: GPT | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.config = config
        self.model = self.adapt_model(model if model is not None else GPT(GPTConfig(**model_config)))
        self.tokens_seen = 0
        self._step_started = 0.0

    def adapt_model(self, model: GPT) -> torch.nn.Module:
        """The stage's changes to the GPT before training (a new head, frozen parts).

        Runs in ``__init__``, so a model restored by ``load_from_checkpoint`` gets them too.
        """
        return model

    @property
    def tokenizer(self):
        return get_tokenizer()

    def count_tokens(self, batch_tokens: int) -> int:
        """Add this step's tokens over all processes to ``tokens_seen`` and return them."""
        step_tokens = batch_tokens * self.trainer.world_size
        self.tokens_seen += step_tokens
        return step_tokens

    def log_parameter_counts(self) -> dict[str, int]:
        """Print and log the trainable and total parameter counts (shared tensors once)."""
        seen: set[int] = set()
        total = trainable = 0
        for p in self.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        counts = {"params/total": total, "params/trainable": trainable}
        log.info("parameters: %s trainable of %s total", f"{trainable:,}", f"{total:,}")
        for lg in self.loggers:
            lg.log_hyperparams(counts)
        return counts

    def after_fit(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """What a stage does once fitting is over (report, test, generate); rank 0 prints."""

    def on_fit_start(self) -> None:
        self.log_parameter_counts()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def log_throughput(self, step_tokens: int) -> None:
        """Log tokens seen and tokens/s of the step that just ran."""
        elapsed = time.perf_counter() - self._step_started
        self.log("train/tokens_seen", float(self.tokens_seen), rank_zero_only=True)
        if elapsed > 0:
            self.log("train/tokens_per_s", step_tokens / elapsed, rank_zero_only=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optim: Mapping[str, Any] = self.config["optim"]
        optimizer = build_adamw(self.named_parameters(), optim)
        total = int(self.trainer.estimated_stepping_batches)
        factor = lr_lambda(
            optim.get("warmup_steps", 0),
            total,
            optim.get("schedule", "constant"),
            optim["lr"],
            optim.get("min_lr", optim["lr"]),
        )
        scheduler = LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"], rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))

    @torch.no_grad()
    def complete(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
    ) -> str:
        """The model's continuation of ``prompt`` (stops at ``<|endoftext|>``)."""
        tok = self.tokenizer
        idx = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=self.device)
        out = generate(
            self.model,
            idx,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_id=tok.eot_id,
        )
        new = [t for t in out[0, idx.shape[1] :].tolist() if t != tok.eot_id]
        return tok.decode(new)
