"""The LightningModule all stages share: our GPT built from plain config, AdamW and its schedule,
and LoRA adapters for any stage.

Hyperparameters are the run's resolved config as plain dicts (never modules), so
``load_from_checkpoint`` rebuilds the exact model without the Hydra run around it.

With ``lora.rank > 0`` a LoRA run's checkpoints hold only what the run changed (adapters, and
tensors the stage added such as a new head) plus a reference to the base weights (``init_from``
and its sha256); loading re-reads the base from there. A run from a random base (``init_from:
null``) has no base to refer to, so its checkpoints store the base too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import FSDPStrategy
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from llmprep.model import GPT, GPTConfig
from llmprep.model.generate import equal_length_batches, generate
from llmprep.model.init import load_lora_base
from llmprep.model.lora import (
    CHECKPOINT_KEY,
    LoraSettings,
    apply_lora,
    base_name,
    base_reference,
    check_base,
    fill_base_tensors,
)
from llmprep.tokenizer import get_tokenizer
from llmprep.training.optim import build_adamw, lr_lambda

MAX_LOG_PPL = 20.0
"""Perplexities are reported up to exp(20): beyond, an untrained or diverged model's number
says nothing more and overflows float16 loggers."""


def perplexity(loss: torch.Tensor | float) -> torch.Tensor:
    """exp(loss), capped at exp(``MAX_LOG_PPL``)."""
    return torch.exp(torch.as_tensor(loss, dtype=torch.float32).clamp(max=MAX_LOG_PPL))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; targets of -100 are ignored."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def batch_inputs(batch: Any) -> torch.Tensor:
    """The token ids [B, T] of any stage's batch: ``(inputs, targets)`` or a dict with
    ``input_ids``."""
    return batch["input_ids"] if isinstance(batch, Mapping) else batch[0]


def is_sharded(trainer: L.Trainer) -> bool:
    """True under FSDP, where every rank must take part in each forward pass (generation
    included) and the shards are gone once fitting ends."""
    return isinstance(trainer.strategy, FSDPStrategy)


class GPTTask(L.LightningModule):
    """Holds ``self.model`` (our GPT), counts tokens seen and builds the optimizer.

    ``config`` is the whole resolved run config (plain dict); ``model_config`` the final
    architecture (a ``GPTConfig`` as dict: with ``init_from`` it is the pretrained model's).
    ``model`` lets ``from_config`` hand in a GPT with loaded weights; it is not a hyperparameter.

    With ``config["lora"]["rank"] > 0`` the adapted model gets LoRA adapters (``self.lora``
    holds the settings, targets resolved) and only they, and layers the stage added outside the
    adapted ones, train. Built without ``model``, a LoRA task from a pretrained base gets its base
    weights from the checkpoint it is loaded from.
    """

    def __init__(
        self, config: dict[str, Any], model_config: dict[str, Any], model: GPT | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.config = config
        base = model if model is not None else GPT(GPTConfig(**model_config))
        base_tensors = {id(t) for t in base.state_dict(keep_vars=True).values()}
        self.model = self.adapt_model(base)
        self.model.activation_checkpointing = bool(config.get("activation_checkpointing", False))
        self.lora = LoraSettings.from_config(config.get("lora"))
        if self.lora is not None:
            self._setup_lora(base_tensors, holds_base=model is not None)
        self.tokens_seen = 0
        self.matrix_names = {n for n, p in self.named_parameters() if p.dim() >= 2}
        self._flops_per_batch: int | None = None

    def _setup_lora(self, base_tensors: set[int], holds_base: bool) -> None:
        """Inject the adapters and note what checkpoints must store and which base they refer to.

        Stored: every tensor not from the base (adapters, a new head) and anything trainable.
        ``holds_base`` says whether the model holds ``init_from``'s weights already (``model``
        handed in); otherwise a checkpoint must supply them before the task can be saved.
        """
        added = [
            t for t in self.model.state_dict(keep_vars=True).values() if id(t) not in base_tensors
        ]
        targets = apply_lora(self.model, self.lora, added)
        self.lora = dataclasses.replace(self.lora, targets=targets)
        state = self.model.state_dict(keep_vars=True)
        self._lora_stored = frozenset(
            name for name, t in state.items() if id(t) not in base_tensors or t.requires_grad
        )
        init_from = self.config.get("init_from")
        self._lora_base = base_reference(init_from) if init_from and holds_base else None
        self._lora_base_loaded = holds_base or not init_from

    @property
    def sharded(self) -> bool:
        """True under FSDP (see :func:`is_sharded`)."""
        return is_sharded(self.trainer)

    def adapt_model(self, model: GPT) -> torch.nn.Module:
        """The stage's changes to the GPT before training (a new head, frozen parts).

        Runs in ``__init__``, so a model restored by ``load_from_checkpoint`` gets them too.
        """
        return model

    @property
    def tokenizer(self):
        return get_tokenizer()

    def count_tokens(self, batch_tokens: int) -> int:
        """Add this batch's input tokens over all processes (padding included: what the model
        computed on) to ``tokens_seen`` and return them."""
        step_tokens = batch_tokens * self.trainer.world_size
        self.tokens_seen += step_tokens
        return step_tokens

    def log_loss(self, split: str, metric: MeanMetric) -> None:
        """Log ``<split>/loss`` (token-weighted over all processes) and ``<split>/ppl``, then
        reset the metric for the next epoch."""
        loss = metric.compute()
        metric.reset()
        self.log(f"{split}/loss", loss, prog_bar=split == "val", sync_dist=False)
        self.log(f"{split}/ppl", perplexity(loss), sync_dist=False)

    def after_fit(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """What a stage does once fitting is over (report, test, generate); rank 0 prints."""

    @property
    def flops_per_batch(self) -> int | None:
        """FLOPs of the batch in flight: read by Lightning's ``ThroughputMonitor`` for its FLOP/s
        and MFU figures (forward and backward while training, forward alone in evaluation)."""
        return self._flops_per_batch

    def _note_batch(self, batch: Any, training: bool) -> int:
        """Set :attr:`flops_per_batch` for ``batch``; return its number of input tokens."""
        inputs = batch_inputs(batch)
        per_token = self.model.flops_per_token(inputs.shape[-1], training=training)
        self._flops_per_batch = per_token * inputs.numel()
        return inputs.numel()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.count_tokens(self._note_batch(batch, training=True))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("train/tokens_seen", float(self.tokens_seen), rank_zero_only=True)

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._note_batch(batch, training=False)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._note_batch(batch, training=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optim: Mapping[str, Any] = self.config["optim"]
        optimizer = build_adamw(self.named_parameters(), optim, self.matrix_names)
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
            # LearningRateMonitor logs it as train/lr (see ``param_groups``).
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record ``tokens_seen``; for a LoRA run, drop the referenced base weights and record
        the settings and base reference (subclasses overriding this must call it)."""
        checkpoint["tokens_seen"] = self.tokens_seen
        if self.lora is None:
            return
        if not self._lora_base_loaded:
            raise RuntimeError(
                f"this LoRA task was built without its base weights (init_from="
                f"{self.config.get('init_from')!r}): build it with from_config, or restore it "
                "with load_from_checkpoint, before saving it"
            )
        if self._lora_base is not None:
            state = checkpoint["state_dict"]
            for name in self.model.state_dict():
                if name not in self._lora_stored:
                    state.pop(f"model.{name}", None)
        checkpoint[CHECKPOINT_KEY] = {**self.lora.to_dict(), "base": self._lora_base}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore ``tokens_seen``; for a LoRA run, put the base weights back into the state dict
        (from the model when it holds the same base, else re-read from the recorded reference),
        so Lightning's strict loading sees a complete state (subclasses must call it)."""
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        stored = checkpoint.get(CHECKPOINT_KEY)
        if self.lora is None:
            if stored is not None:
                raise ValueError(
                    f"the checkpoint holds LoRA adapters (rank {stored.get('rank')}) but this "
                    "run has lora.rank=0: set the same lora settings to resume it"
                )
            return
        if stored is None:
            raise ValueError(
                f"the checkpoint was trained without LoRA but this run has lora.rank="
                f"{self.lora.rank}: resume it with lora.rank=0, or start a LoRA run from it "
                "with init_from=<checkpoint>"
            )
        reference = stored.get("base")
        base: dict[str, torch.Tensor] = {}
        if reference is not None and self._lora_base_loaded and self._lora_base is not None:
            check_base(reference, self._lora_base)
            base = {base_name(n): t for n, t in self.model.state_dict().items()}
        elif reference is not None:
            base = load_lora_base(reference, self.config["model"]).state_dict()
        self._lora_base, self._lora_base_loaded = reference, True
        state = checkpoint["state_dict"]
        stored_model = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        full = fill_base_tensors(
            self.model, stored_model, base, "the LoRA checkpoint", required=self._lora_stored
        )
        state.update({f"model.{name}": t for name, t in full.items()})

    @torch.no_grad()
    def continuations(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """The decoded continuation of each token-id prompt, cut at ``<|endoftext|>``.

        Prompts of equal length run as one batch (``equal_length_batches``): our GPT has
        absolute positions and no attention mask, so batching them gives exactly the answers
        of one prompt at a time.
        """
        tok = self.tokenizer
        texts = [""] * len(prompts)
        for group in equal_length_batches([len(p) for p in prompts], batch_size):
            idx = torch.tensor(
                [list(prompts[i]) for i in group], dtype=torch.long, device=self.device
            )
            out = generate(
                self.model,
                idx,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                eos_id=tok.eot_id,
                generator=generator,
            )
            for row, index in enumerate(group):
                new = out[row, idx.shape[1] :].tolist()
                texts[index] = tok.decode(
                    new[: new.index(tok.eot_id)] if tok.eot_id in new else new
                )
        return texts

    def complete(
        self, prompt: str, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None
    ) -> str:
        """The model's continuation of ``prompt`` (stops at ``<|endoftext|>``)."""
        return self.continuations(
            [self.tokenizer.encode(prompt)], max_new_tokens, temperature, top_k
        )[0]
