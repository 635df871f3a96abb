"""Stage ``dpo``: Direct Preference Optimization of an instruction-tuned GPT (the book's chapter 7
bonus, ``ch07/04_preference-tuning-with-dpo``).

The policy starts as the instruction-tuned model and is pushed towards each pair's chosen answer
and away from its rejected one, relative to a **reference** that keeps the starting weights:

* full fine-tuning (``lora.rank=0``): the reference is a frozen copy of the starting weights,
  always run in eval mode (no dropout), as in the book. It costs a second model's memory.
* LoRA (``lora.rank>0``): no copy at all. The base weights are frozen anyway, so the reference is
  the same model with its adapters switched off (peft's ``enable_adapters(False)``), and DPO with
  LoRA costs one model's memory.

Checkpoints never hold the reference's weights (they are the starting weights, as big as the
policy): a checkpoint refers to them by ``init_from`` and the sha256 of its weights file, as a
LoRA checkpoint refers to its base (:func:`llmprep.model.lora.base_reference`), and loading
re-reads them from there, refusing a file whose sha256 changed. Only a run from random weights
(``init_from=null``), with nothing to refer to, stores its reference. With LoRA the reference is
the base, which the LoRA checkpoint already refers to.

The task subclasses the instruct stage's: DPO builds on instruction tuning, prompts in the same
styles and answers with the same ``respond``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from llmprep.data.records import SPLITS
from llmprep.errors import CheckpointError
from llmprep.model import GPT, GPTConfig
from llmprep.model.config import check, is_number
from llmprep.model.init import load_weights
from llmprep.model.lora import base_reference
from llmprep.model.modes import evaluating
from llmprep.stages.dpo.loss import LOGPROBS, METRICS, PairTerms, dpo_terms, sequence_logprobs
from llmprep.stages.instruct.task import InstructTask
from llmprep.training.task import test_metric_prefix

log = logging.getLogger(__name__)

REFERENCE_KEY = "dpo_reference"
"""Checkpoint entry naming the reference weights: ``{"init_from", "sha256"}``, or ``None`` when
they are stored in the state dict (a run from random weights) or are the LoRA base."""

REFERENCE_PREFIX = "reference."


@dataclass(frozen=True)
class DPOSettings:
    """The stage's DPO settings (``stage.beta``, ``stage.logprob``, ``stage.label_smoothing``),
    checked; see :mod:`llmprep.stages.dpo.loss` for what they do."""

    beta: float = 0.1
    logprob: str = "mean"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check(is_number(self.beta) and self.beta > 0, "stage.beta", "a number > 0", self.beta)
        check(self.logprob in LOGPROBS, "stage.logprob", "mean or sum", self.logprob)
        smoothing = self.label_smoothing
        ok = is_number(smoothing) and 0 <= smoothing < 0.5
        check(ok, "stage.label_smoothing", "a number in [0, 0.5)", smoothing)

    @classmethod
    def from_stage(cls, stage: Mapping[str, Any]) -> DPOSettings:
        return cls(
            beta=stage.get("beta", 0.1),
            logprob=stage.get("logprob", "mean"),
            label_smoothing=stage.get("label_smoothing", 0.0),
        )


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with every LoRA adapter switched off (the base weights alone) for the block."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class DPOTask(InstructTask):
    """Tunes the policy (``self.model``) on preference pairs against a reference (see the module
    docstring); ``self.reference`` is the frozen copy, ``None`` with LoRA.

    Batches hold the chosen sequences, then the rejected ones (``PreferenceDataModule``). Logged
    per split: ``loss``, ``chosen_reward``, ``rejected_reward``, ``margin`` and ``accuracy``,
    averaged over pairs (over all processes for validation and test).
    """

    def __init__(
        self,
        config: dict[str, Any],
        model_config: dict[str, Any],
        model: GPT | None = None,
        **instruct: Any,
    ) -> None:
        """``instruct``: :class:`InstructTask`'s settings (the ``prompt_style``)."""
        settings = DPOSettings.from_stage(config["stage"])
        self_copy = not (config.get("lora") or {}).get("rank", 0)
        reference = None
        if self_copy:
            reference = (
                copy.deepcopy(model) if model is not None else GPT(GPTConfig(**model_config))
            )
        super().__init__(config, model_config, model, **instruct)
        self.settings = settings
        self.reference = reference
        if reference is not None:
            reference.requires_grad_(False)
        init_from = config.get("init_from")
        if init_from is None and model is not None:
            log.warning(
                "stage dpo starts from random weights (init_from=null): DPO tunes an "
                "instruction-tuned model, e.g. init_from=<instruct run>/checkpoints/best.ckpt"
            )
        # Where the reference's weights come from, once it holds them; ``None`` otherwise.
        self.reference_source: dict[str, str] | None = (
            base_reference(init_from)
            if reference is not None and init_from and model is not None
            else None
        )
        self.val_metrics = nn.ModuleDict({name: MeanMetric() for name in METRICS})

    @contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The reference for the block, in eval mode and without gradients: the frozen copy, or
        with LoRA the policy with its adapters off; every mode is restored afterwards."""
        if self.reference is not None:
            with evaluating(self.reference) as reference:
                yield reference
        else:
            with evaluating(self.model) as model, adapters_disabled(model):
                yield model

    def pair_terms(self, batch: Mapping[str, torch.Tensor]) -> PairTerms:
        """The DPO figures of each pair of ``batch`` (chosen rows first, then rejected)."""
        inputs, targets = batch["input_ids"], batch["targets"]
        reduction = self.settings.logprob
        with self.reference_model() as reference:
            ref = sequence_logprobs(reference, inputs, targets, reduction)
        policy = sequence_logprobs(self.model, inputs, targets, reduction)
        pairs = inputs.shape[0] // 2
        return dpo_terms(
            policy[:pairs],
            policy[pairs:],
            ref[:pairs],
            ref[pairs:],
            self.settings.beta,
            self.settings.label_smoothing,
        )

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """The mean DPO loss of the batch; the step's figures are logged as ``train/*`` and the
        margin is handed to the loss plot beside the loss."""
        terms = self.pair_terms(batch)
        means = {name: value.mean() for name, value in terms._asdict().items()}
        for name, value in means.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss", "margin"))
        return {"loss": means["loss"], "margin": means["margin"]}

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        terms = self.pair_terms(batch)
        for name, value in terms._asdict().items():
            self.val_metrics[name].update(value.detach())

    def on_validation_epoch_end(self) -> None:
        """Log each figure as ``val/<name>``, averaged over every validation pair."""
        for name, metric in self.val_metrics.items():
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "loss", sync_dist=False)
            metric.reset()

    def on_test_start(self) -> None:
        self.test_splits = list(self.trainer.datamodule.test_splits)
        self.test_metrics = nn.ModuleList(
            nn.ModuleDict({name: MeanMetric() for name in METRICS}) for _ in self.test_splits
        ).to(self.device)
        self.test_pairs = nn.ModuleList(SumMetric() for _ in self.test_splits).to(self.device)

    def test_step(
        self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        terms = self.pair_terms(batch)
        for name, value in terms._asdict().items():
            self.test_metrics[dataloader_idx][name].update(value.detach())
        self.test_pairs[dataloader_idx].update(terms.loss.shape[0])

    def on_test_epoch_end(self) -> None:
        """``test_results``: each split's pair count and figures (over all processes); the
        ``train``/``val``/``test`` splits are also logged (``test_metric_prefix``)."""
        self.test_results = {}
        for split, metrics, pairs in zip(
            self.test_splits, self.test_metrics, self.test_pairs, strict=True
        ):
            values = {name: metric.compute() for name, metric in metrics.items()}
            self.test_results[split] = {
                "pairs": int(pairs.compute()),
                **{name: float(value) for name, value in values.items()},
            }
            if split in SPLITS:
                for name, value in values.items():
                    self.log(f"{test_metric_prefix(split)}/{name}", value, sync_dist=False)

    def samples(self) -> list[dict[str, Any]]:
        """The policy's greedy answers to the first ``stage.sample.count`` validation records,
        beside their chosen answers."""
        sample = self.config["stage"]["sample"]
        records = getattr(self.trainer.datamodule, "records", {}).get("val", [])
        if sample["count"] < 1 or not records:
            return []
        rows = self.respond(records[: sample["count"]], sample["max_new_tokens"])
        return [
            {
                "instruction": row["instruction"],
                "chosen": record["chosen"],
                "response": row["model_response"],
            }
            for row, record in zip(rows, records, strict=False)
        ]

    def reference_respond(
        self, records: Sequence[Mapping[str, str]], max_new_tokens: int, **generation: Any
    ) -> list[dict[str, str]]:
        """``respond`` with the reference in the policy's place: its answers as
        ``model_response``."""
        with self.reference_model() as reference:
            policy = self.model
            self.model = reference
            try:
                return self.respond(records, max_new_tokens, **generation)
            finally:
                self.model = policy

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the reference's weights when they can be re-read from ``init_from`` (see the
        module docstring) and record where from."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[REFERENCE_KEY] = self.reference_source
        if self.reference is not None and self.reference_source is not None:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(REFERENCE_PREFIX)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the reference's weights back into the checkpoint's state dict: this task's own
        when it was built from the weights the checkpoint refers to, else re-read from there;
        either way a weights file whose sha256 differs from the recorded one is refused."""
        super().on_load_checkpoint(checkpoint)
        source = checkpoint.get(REFERENCE_KEY)
        if self.reference is None or source is None:
            return
        found = self.reference_source or base_reference(source["init_from"])
        if found["sha256"] != source["sha256"]:
            raise CheckpointError(
                f"the DPO checkpoint was tuned against the reference init_from="
                f"{source['init_from']!r} (sha256 {source['sha256']}), but init_from="
                f"{found['init_from']!r} now has sha256 {found['sha256']}: its rewards and "
                "reference answers need the weights it started from"
            )
        if self.reference_source is not None:
            weights = self.reference.state_dict()
        else:
            weights = load_weights(source["init_from"], dropout=0.0).state_dict()
        checkpoint["state_dict"].update({REFERENCE_PREFIX + k: v for k, v in weights.items()})
        self.reference_source = dict(source)
