"""Stage ``pretrain``: next-token prediction (the book's chapter 5)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from llmprep.model.init import build_model
from llmprep.training.config import plain_config
from llmprep.training.task import GPTTask, is_sharded, lm_loss

log = logging.getLogger(__name__)


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
        """Print the final model's continuations of the sample prompt (not under FSDP, whose
        shards are gone once fitting ends: the last validation samples are in the log)."""
        if trainer.is_global_zero and not is_sharded(trainer):
            self.to(trainer.strategy.root_device)
            print("\nSamples after training:")
            for decoding, text in self.sample_texts().items():
                print(f"{decoding}: {text}")
            print()

    def sample_texts(self) -> dict[str, str]:
        """The prompt and its continuation by each decoding of ``sample``, one line each.

        Greedy always; with ``sample.temperature > 0`` also a sample at that temperature from
        the ``top_k`` most likely tokens. The sample draws from a generator seeded with
        ``sample.seed`` afresh each time: the same weights give the same text, texts of
        successive validations differ only by what the model learnt, and the global RNG that
        training draws from (dropout, shuffling) is left untouched. Each run of whitespace is
        shown as one space, so the text ends at its last word, not in blank lines.
        """
        sample = self.config["sample"]
        prompt, max_new_tokens = sample["prompt"], sample["max_new_tokens"]
        ids = [self.tokenizer.encode(prompt)]
        (greedy,) = self.continuations(ids, max_new_tokens)
        texts = {"greedy": greedy}
        temperature, top_k, seed = sample["temperature"], sample["top_k"], sample["seed"]
        if temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            (sampled,) = self.continuations(
                ids, max_new_tokens, temperature, top_k, generator=generator
            )
            top = f", top-k {top_k}" if top_k is not None else ""
            texts[f"temperature {temperature:g}{top}, seed {seed}"] = sampled
        return {decoding: " ".join((prompt + text).split()) for decoding, text in texts.items()}

    def log_sample(self) -> dict[str, str]:
        """Generate the sample texts (:meth:`sample_texts`) and log them (W&B table, console) on
        rank 0; under FSDP every rank takes part in generating them."""
        texts = self.sample_texts()
        if not self.trainer.is_global_zero:
            return texts
        for decoding, text in texts.items():
            log.info("sample at step %d, %s: %s", self.global_step, decoding, text)
            self.samples.append([self.global_step, self.tokens_seen, decoding, text])
        for lg in self.loggers:
            if hasattr(lg, "log_text"):
                lg.log_text(
                    key="samples",
                    columns=["step", "tokens_seen", "decoding", "text"],
                    data=self.samples,
                )
        return texts
