"""Stage ``instruct``: supervised instruction fine-tuning (the book's chapter 7)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from llmprep.files import write_json_atomically
from llmprep.model import GPT
from llmprep.model.init import build_model
from llmprep.stages.instruct.data import IGNORE_INDEX, InstructDataModule
from llmprep.stages.instruct.prompts import get_style
from llmprep.training.config import plain_config
from llmprep.training.task import GPTTask, is_sharded, lm_loss

log = logging.getLogger(__name__)

RESPONSES_FILE = "test_responses.json"

Batch = Mapping[str, torch.Tensor]


def check_bucket(bucket: bool, world_size: int) -> None:
    """Refuse length bucketing with more than one process.

    The bucketed order (``EpochSampler`` with lengths) is cut into batches for one process;
    split across ranks, each rank's batch would mix indices of several buckets and lose the
    point. Bucketing saves padding, which matters most on one device; with several, the plain
    shuffled order is sharded correctly, so the run is refused rather than silently unbucketed.
    """
    if bucket and world_size > 1:
        raise ValueError(
            f"data.bucket=true works with one process only, but this run has {world_size}; "
            "set data.bucket=false for multi-device training"
        )


class InstructTask(GPTTask):
    """Fine-tunes the GPT on instruction records and answers them.

    ``prompt_style`` is the style the model is trained with, a plain hyperparameter, so a
    restored checkpoint prompts and reads its answers the same way without the run's config.
    """

    def __init__(
        self,
        config: dict[str, Any],
        model_config: dict[str, Any],
        model: GPT | None = None,
        prompt_style: str = "alpaca",
    ) -> None:
        super().__init__(config, model_config, model)
        self.style = get_style(prompt_style)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.samples: list[list[Any]] = []

    def adapt_model(self, model: GPT) -> torch.nn.Module:
        """The GPT as it is; a model whose head is not the vocabulary (a classifier) is refused."""
        head = model.out_head.out_features
        if head != model.config.vocab_size:
            raise ValueError(
                f"stage instruct needs a language-model head of {model.config.vocab_size} "
                f"outputs, but the model's out_head has {head} (a classifier checkpoint?)"
            )
        return model

    @classmethod
    def from_config(
        cls, cfg: DictConfig, output_dir: Path
    ) -> tuple[InstructTask, L.LightningDataModule]:
        """The task and its data module; the data module saves the splits in the run folder.

        The data module gets plain dicts and lists (``_convert_="all"``): Lightning stores its
        arguments in every checkpoint, and OmegaConf objects there would keep the checkpoint
        from loading with ``weights_only=True``.
        """
        model = build_model(cfg.model, cfg.init_from)
        datamodule = instantiate(
            cfg.data,
            context_length=model.config.context_length,
            output_dir=str(output_dir),
            _convert_="all",
        )
        task = cls(
            plain_config(cfg), asdict(model.config), model=model, prompt_style=datamodule.style.name
        )
        return task, datamodule

    def setup(self, stage: str) -> None:
        """Refuse the run's ``data.bucket`` when training on several processes."""
        check_bucket(bool(self.config["data"].get("bucket", False)), self.trainer.world_size)

    def loss_and_tokens(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over the batch's target tokens (``-100`` skipped) and their count."""
        targets = batch["targets"]
        loss = lm_loss(self.model(batch["input_ids"]), targets)
        return loss, int((targets != IGNORE_INDEX).sum())

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self.model(batch["input_ids"]), batch["targets"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, tokens = self.loss_and_tokens(batch)
        if tokens:
            self.val_loss.update(loss, weight=tokens)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, tokens = self.loss_and_tokens(batch)
        if tokens:
            self.test_loss.update(loss, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        self.log_loss("val", self.val_loss)
        if not self.trainer.sanity_checking and (self.trainer.is_global_zero or self.sharded):
            self.log_samples()

    def on_test_epoch_end(self) -> None:
        self.log_loss("test", self.test_loss)

    def log_samples(self) -> list[dict[str, str]]:
        """Answer the first ``sample.count`` validation records greedily and log them (W&B
        table ``samples``, console) on rank 0; under FSDP every rank takes part."""
        datamodule = self.trainer.datamodule
        sample = self.config["sample"]
        if not isinstance(datamodule, InstructDataModule) or sample["count"] < 1:
            return []
        answered = self.respond(datamodule.val_records[: sample["count"]], sample["max_new_tokens"])
        if not self.trainer.is_global_zero:
            return answered
        for row in answered:
            log.info(
                "sample at step %d: %r -> %r (expected %r)",
                self.global_step,
                row["instruction"],
                row["model_response"],
                row["output"],
            )
            self.samples.append(
                [
                    self.global_step,
                    row["instruction"],
                    row["input"],
                    row["output"],
                    row["model_response"],
                ]
            )
        for lg in self.loggers:
            if hasattr(lg, "log_text"):
                lg.log_text(
                    key="samples",
                    columns=["step", "instruction", "input", "expected", "response"],
                    data=self.samples,
                )
        return answered

    @torch.no_grad()
    def respond(
        self,
        records: Sequence[Mapping[str, str]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        batch_size: int = 8,
        generator: torch.Generator | None = None,
    ) -> list[dict[str, str]]:
        """``records`` with the model's answer added as ``model_response``, in their order.

        Each prompt is the record in the model's style, encoded as in training (special-token
        text is plain text). Generation stops at ``<|endoftext|>``; the answer is the decoded
        continuation after any response marker the model wrote itself
        (``PromptStyle.extract_response``). Prompts of equal length run as one batch (see
        ``GPTTask.continuations``), so greedy answers match those of one prompt at a time.
        """
        prompts = [self.style.format_prompt(r["instruction"], r.get("input", "")) for r in records]
        ids = self.tokenizer.encode_ordinary_batch(prompts) if prompts else []
        texts = self.continuations(ids, max_new_tokens, temperature, top_k, batch_size, generator)
        answers = [self.style.extract_response(text) for text in texts]
        return [
            {
                "instruction": r["instruction"],
                "input": r.get("input", ""),
                "output": r["output"],
                "model_response": answer,
            }
            for r, answer in zip(records, answers, strict=True)
        ]

    def answer_test_split(
        self, records: Sequence[Mapping[str, str]], generation: Mapping[str, Any], seed: int
    ) -> list[dict[str, str]]:
        """The first ``generation.limit`` records (all when null) answered with the
        ``generation`` settings; sampling draws from a generator seeded with ``seed``."""
        limit = generation.get("limit")
        chosen = list(records if limit is None else records[:limit])
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.respond(
            chosen,
            generation["max_new_tokens"],
            generation["temperature"],
            generation["top_k"],
            generation["batch_size"],
            generator,
        )

    def after_fit(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """Test loss and perplexity of the best checkpoint, then (rank 0) its answers to the
        test split in ``<run>/test_responses.json`` (under FSDP: the command that writes them).

        The best checkpoint is the one ``ModelCheckpoint`` kept by the stage's monitor; without
        one (no validation ran, ``fast_dev_run``) the final weights are used. A ``fast_dev_run``
        smoke test answers only as many records as it runs batches, not the whole split.
        """
        callback = trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else ""
        trainer.test(
            self, datamodule=datamodule, ckpt_path=best or None, verbose=trainer.is_global_zero
        )
        if not trainer.is_global_zero:
            return
        if is_sharded(trainer):
            print("\nUnder FSDP the shards are gone after testing: answer the test split with")
            print(f"  python evaluate.py stage=instruct ckpt_path={best or '<checkpoint>'}")
            return
        self.to(trainer.strategy.root_device)  # testing leaves the model on the CPU
        generation = dict(self.config["generation"])
        if trainer.fast_dev_run:
            runs = int(trainer.fast_dev_run)
            limit = generation.get("limit")
            generation["limit"] = runs if limit is None else min(runs, limit)
        answered = self.answer_test_split(datamodule.test_records, generation, self.config["seed"])
        path = Path(trainer.default_root_dir) / RESPONSES_FILE
        write_json_atomically(path, answered)
        print(f"\n{len(answered)} test responses written to {path}")
        for row in answered[:3]:
            print(f"- {row['instruction']!r}\n  -> {row['model_response']!r}")
