"""The LightningModule all stages share: our GPT built from plain config, AdamW and its schedule,
and LoRA adapters for any stage.

A task gets only its own settings (:data:`TASK_KEYS` of the run config) as plain dicts, never
modules, so ``load_from_checkpoint`` rebuilds the exact model without the Hydra run around it;
what it needs from its data (a classifier's labels) comes from the data module's
``task_settings()``. Every checkpoint also holds the whole resolved run config under
``"config"``, for reproducibility and for evaluation (which re-reads the run's data from it),
and the run's command-line overrides under ``"overrides"`` (for resuming).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric, SumMetric

from llmprep.data.records import SPLITS
from llmprep.model import GPT, GPTConfig
from llmprep.model.config import check
from llmprep.model.generate import cut_at_stop, generate, left_pad
from llmprep.model.gpt import IGNORE_INDEX
from llmprep.model.lora import restore_lora, save_lora, start_lora
from llmprep.resume import OVERRIDES_KEY
from llmprep.tokenizer import get_tokenizer
from llmprep.training.optim import build_adamw, lr_lambda
from llmprep.training.progress import progress

MAX_LOG_PPL = 20.0
"""Perplexities are reported up to exp(20): beyond, an untrained or diverged model's number
says nothing more and overflows float16 loggers."""


def perplexity(loss: torch.Tensor | float) -> torch.Tensor:
    """exp(loss), capped at exp(``MAX_LOG_PPL``)."""
    return torch.exp(torch.as_tensor(loss, dtype=torch.float32).clamp(max=MAX_LOG_PPL))


def test_metric_prefix(split: str) -> str:
    """The prefix a tested split's metrics are logged under: ``test`` for the test split,
    ``best/train`` and ``best/val`` for the others (re-scored after fitting)."""
    return "test" if split == "test" else f"best/{split}"


def batch_inputs(batch: Any) -> torch.Tensor:
    """The token ids [B, T] of any stage's batch: ``(inputs, targets)`` or a dict with
    ``input_ids``."""
    return batch["input_ids"] if isinstance(batch, Mapping) else batch[0]


def is_sharded(trainer: L.Trainer) -> bool:
    """True under FSDP, where every rank must take part in each forward pass (generation
    included) and the shards are gone once fitting ends."""
    return isinstance(trainer.strategy, FSDPStrategy)


TASK_KEYS = ("stage", "optim", "lora", "init_from", "activation_checkpointing", "compile", "seed")
"""The keys of the run config a task is built from."""


class GPTTask(L.LightningModule):
    """Holds ``self.model`` (our GPT), counts tokens seen and builds the optimizer.

    ``config``: the task's settings (:data:`TASK_KEYS`); ``model_config``: the final architecture
    (a ``GPTConfig`` as dict, the pretrained model's with ``init_from``); ``model``: a GPT with
    loaded weights, not a hyperparameter. ``run_config``: the whole resolved run config, and
    ``run_overrides``: the run's command-line overrides (what a resume re-composes, see
    :mod:`llmprep.resume`), both stored in each checkpoint.

    With ``config["lora"]["rank"] > 0`` only the LoRA adapters (``self.lora``, a
    :class:`~llmprep.model.lora.LoraRun`) and layers the stage added outside the adapted ones
    train; built without ``model``, such a task gets its base weights from its checkpoint.
    """

    def __init__(
        self, config: dict[str, Any], model_config: dict[str, Any], model: GPT | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.config = config
        self.run_config: dict[str, Any] | None = None
        self.run_overrides: list[str] | None = None
        base = model if model is not None else GPT(GPTConfig(**model_config))
        base_tensors = list(base.state_dict(keep_vars=True).values())
        self.model = self.adapt_model(base)
        self.model.activation_checkpointing = bool(config.get("activation_checkpointing", False))
        if config.get("compile", False):
            self.model.compile_blocks()
        self.lora = start_lora(
            self.model, config.get("lora"), base_tensors, config.get("init_from"), model is not None
        )
        self.tokens_seen = 0
        self.val_loss = MeanMetric()
        self.matrix_names = {n for n, p in self.named_parameters() if p.dim() >= 2}
        # FLOPs of the batch in flight, for ThroughputMonitor's FLOP/s and MFU (forward and
        # backward while training, forward alone in evaluation).
        self.flops_per_batch: int | None = None

    def adapt_model(self, model: GPT) -> torch.nn.Module:
        """The stage's changes to the GPT before training (a new head, frozen parts).

        Runs in ``__init__``, so a model restored by ``load_from_checkpoint`` gets them too.
        """
        return model

    @property
    def tokenizer(self):
        return get_tokenizer()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Next-token training (pretrain, instruct); a stage with another loss overrides the
        training, validation and test steps."""
        loss, _ = self.loss_and_tokens(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, tokens = self.loss_and_tokens(batch)
        if tokens:
            self.val_loss.update(loss, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/loss`` (token-weighted over all processes) and ``val/ppl``."""
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", perplexity(loss), sync_dist=False)

    def samples(self) -> list[dict[str, Any]]:
        """What the model writes at each validation, as rows of equal keys for
        ``SampleLogger``; a stage that writes nothing returns none."""
        return []

    def loss_and_tokens(self, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy over the batch's target tokens (``-100`` skipped) and
        their number; batches are ``(inputs, targets)`` or dicts with ``targets``."""
        targets = batch["targets"] if isinstance(batch, Mapping) else batch[1]
        loss = self.model.loss(batch_inputs(batch), targets)
        return loss, int((targets != IGNORE_INDEX).sum())

    def on_test_start(self) -> None:
        """One token-weighted loss per test loader, named by the data module's
        ``test_splits``."""
        self.test_splits = list(self.trainer.datamodule.test_splits)
        splits = range(len(self.test_splits))
        self.test_losses = torch.nn.ModuleList(MeanMetric() for _ in splits).to(self.device)
        self.test_tokens = torch.nn.ModuleList(SumMetric() for _ in splits).to(self.device)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, tokens = self.loss_and_tokens(batch)
        if tokens:
            self.test_losses[dataloader_idx].update(loss, weight=tokens)
            self.test_tokens[dataloader_idx].update(tokens)

    def on_test_epoch_end(self) -> None:
        """``test_results``: tokens, loss and perplexity of each split (over all processes);
        the ``train``/``val``/``test`` splits are also logged (see :func:`test_metric_prefix`)."""
        self.test_results = {}
        for split, losses, tokens in zip(
            self.test_splits, self.test_losses, self.test_tokens, strict=True
        ):
            count = int(tokens.compute())
            if not count:
                raise ValueError(f"nothing to score: the {split} split has no target tokens")
            loss = losses.compute()
            self.test_results[split] = {
                "tokens": count,
                "loss": float(loss),
                "perplexity": float(perplexity(loss)),
            }
            if split in SPLITS:
                prefix = test_metric_prefix(split)
                self.log(f"{prefix}/loss", loss, sync_dist=False)
                self.log(f"{prefix}/ppl", perplexity(loss), sync_dist=False)

    def _note_batch(self, batch: Any, training: bool) -> int:
        """Set ``flops_per_batch`` for ``batch``; return its number of input tokens."""
        inputs = batch_inputs(batch)
        per_token = self.model.flops_per_token(inputs.shape[-1], training=training)
        self.flops_per_batch = per_token * inputs.numel()
        return inputs.numel()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Add the batch's input tokens over all processes (padding included: what the model
        computed on) to ``tokens_seen``."""
        self.tokens_seen += self._note_batch(batch, training=True) * self.trainer.world_size

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("train/tokens_seen", float(self.tokens_seen), rank_zero_only=True)

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._note_batch(batch, training=False)

    on_test_batch_start = on_validation_batch_start

    def configure_optimizers(self) -> dict[str, Any]:
        optim: Mapping[str, Any] = self.config["optim"]
        optimizer = build_adamw(self.named_parameters(), optim, self.matrix_names)
        scheduler = LambdaLR(
            optimizer, lr_lambda(optim, int(self.trainer.estimated_stepping_batches))
        )
        return {
            "optimizer": optimizer,
            # LearningRateMonitor logs it as train/lr (see ``param_groups``).
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record ``tokens_seen``; a LoRA run's checkpoint keeps only what the run changed (see
        :func:`~llmprep.model.lora.save_lora`). Subclasses overriding this must call it."""
        checkpoint["tokens_seen"] = self.tokens_seen
        if self.run_config is not None:
            checkpoint["config"] = self.run_config
        if self.run_overrides is not None:
            checkpoint[OVERRIDES_KEY] = self.run_overrides
        save_lora(self.lora, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore ``tokens_seen`` and, for a task without one (not a resumed run, which keeps
        its own), the stored run config; a LoRA run's checkpoint gets its base weights back (see
        :func:`~llmprep.model.lora.restore_lora`). Subclasses overriding this must call it."""
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        if self.run_config is None:
            self.run_config = checkpoint.get("config")
        restore_lora(self.lora, self.model, checkpoint)

    @torch.no_grad()
    def continuations(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        stop: Sequence[str] = (),
        description: str | None = None,
    ) -> list[str]:
        """The decoded continuation of each token-id prompt, cut at ``<|endoftext|>`` and before
        the first of the ``stop`` strings, in the prompts' order.

        Prompts of any lengths run ``batch_size`` at a time, left-padded with an attention mask
        (``generate``), so a greedy answer is the one its prompt gets alone. Prompts are sorted by
        length first, so a batch holds prompts of near lengths and little padding. With a
        ``description``, a progress bar (count and ETA) advances as each batch is answered.
        """
        check(batch_size >= 1, "batch_size", "positive", batch_size)
        tok = self.tokenizer
        texts = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        bar = progress(len(prompts), description) if description else nullcontext(lambda _: None)
        with bar as advance:
            for start in range(0, len(order), batch_size):
                group = order[start : start + batch_size]
                idx, mask = left_pad([prompts[i] for i in group], tok.eot_id, self.device)
                out = generate(
                    self.model,
                    idx,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_k=top_k,
                    eos_id=tok.eot_id,
                    generator=generator,
                    attention_mask=mask,
                    stop=stop,
                    decode=tok.decode,
                )
                for row, index in enumerate(group):
                    new = out[row, idx.shape[1] :].tolist()
                    text = tok.decode(new[: new.index(tok.eot_id)] if tok.eot_id in new else new)
                    texts[index] = cut_at_stop(text, stop)
                advance(len(group))
        return texts
