"""Stage ``classify``: the GPT fine-tuned as a text classifier (the book's chapter 6).

The vocabulary head becomes ``Linear(emb_dim, num_classes)`` and one position's outputs are the
class logits. Which position (``classify.pooling``):

- ``last_real`` (default): each text's last real token, read off the batch's ``lengths``. Under
  causal attention that token has seen the whole text and no padding, so a text gets the same
  logits however much padding its batch adds.
- ``last``: the last position, pad or not, as the book does. Its texts are all padded to the
  longest training text, so the logits then depend on that padding.
- ``mean``: the mean over the real tokens. The head is affine, so the mean of its outputs is the
  head applied to the mean hidden state: pooling before or after the head is the same.

Scores: accuracy, and F1 with a choice that depends on the number of classes. With two classes
it is the F1 of label id 1 (``spam`` for the SMS data: the class a detector exists to find, and
what "F1" means for a binary detector); with more it is the macro F1 (every class weighs the
same, whatever its size).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from llmprep.model import GPT
from llmprep.model.init import build_model
from llmprep.model.modes import evaluating
from llmprep.stages.classify.data import SPLITS, ClassificationDataModule, encode_texts
from llmprep.training.config import plain_config
from llmprep.training.report import print_table
from llmprep.training.task import GPTTask

log = logging.getLogger(__name__)

POOLINGS = ("last_real", "last", "mean")
TRAINABLE = ("last_block", "last_n_blocks", "head", "all")


def pool_logits(
    logits: torch.Tensor, lengths: torch.Tensor | None, pooling: str = "last_real"
) -> torch.Tensor:
    """Class logits [B, C] from per-position logits [B, T, C] (see the module docstring).

    ``lengths`` [B] is each row's number of real tokens; ``last_real`` needs it, ``mean`` without
    it averages over every position.
    """
    if pooling == "last":
        return logits[:, -1]
    if pooling == "last_real":
        if lengths is None:
            raise ValueError("pooling='last_real' needs the batch's `lengths`")
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, lengths.to(logits.device) - 1]
    if pooling == "mean":
        if lengths is None:
            return logits.mean(dim=1)
        lengths = lengths.to(logits.device)
        real = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
        summed = (logits * real.unsqueeze(-1).to(logits.dtype)).sum(dim=1)
        return summed / lengths.unsqueeze(-1).to(logits.dtype)
    raise ValueError(f"classify.pooling={pooling!r}: expected one of {list(POOLINGS)}")


def set_trainable(model: GPT, trainable: str, n_blocks: int = 1) -> None:
    """Freeze the GPT except the part ``trainable`` names (see conf/stage/classify.yaml).

    ``last_block`` is the book's choice: retraining only the top of the network is enough to read
    a class off pretrained features, and far cheaper than training it all.
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"classify.trainable={trainable!r}: expected one of {list(TRAINABLE)}")
    if trainable == "all":
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    model.out_head.requires_grad_(True)
    if trainable == "head":
        return
    if trainable == "last_n_blocks":
        if not 1 <= n_blocks <= len(model.blocks):
            raise ValueError(
                f"classify.n_blocks={n_blocks}: expected 1 to the model's "
                f"{len(model.blocks)} blocks"
            )
    else:
        n_blocks = 1
    for block in model.blocks[-n_blocks:]:
        block.requires_grad_(True)
    model.final_norm.requires_grad_(True)


class ClassificationScores(nn.Module):
    """Accuracy, F1, mean cross-entropy and the confusion matrix of a stream of predictions.

    torchmetrics states, so the scores of a split add up over all DDP processes on ``compute``.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.f1 = (
            BinaryF1Score() if num_classes == 2 else MulticlassF1Score(num_classes, average="macro")
        )
        self.loss = MeanMetric()
        self.confusion = MulticlassConfusionMatrix(num_classes)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of class logits [B, C] and true label ids [B]."""
        preds = logits.argmax(dim=-1)
        self.accuracy.update(preds, labels)
        self.f1.update(preds, labels)
        self.loss.update(F.cross_entropy(logits.float(), labels, reduction="none"))
        self.confusion.update(preds, labels)

    def compute(self) -> dict[str, Any]:
        """``acc``, ``f1``, ``loss``, ``examples`` and ``confusion`` (rows: true, columns:
        predicted label ids) as plain numbers."""
        confusion = self.confusion.compute()
        return {
            "acc": float(self.accuracy.compute()),
            "f1": float(self.f1.compute()),
            "loss": float(self.loss.compute()),
            "examples": int(confusion.sum()),
            "confusion": confusion.tolist(),
        }

    def reset(self) -> None:
        for metric in (self.accuracy, self.f1, self.loss, self.confusion):
            metric.reset()


@dataclass(frozen=True)
class Prediction:
    """A text's most probable label, its probability, and every label's probability."""

    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


class ClassifyTask(GPTTask):
    """Fine-tunes the GPT to label texts; logs loss, accuracy and F1 per split.

    ``label_names`` (a name's index is its id) and ``pad_length`` (what the data module padded
    every text to, ``None`` when each batch padded to its own longest) are hyperparameters, so a
    checkpoint alone classifies new texts the way its training data was prepared.
    """

    def __init__(
        self,
        config: dict[str, Any],
        model_config: dict[str, Any],
        label_names: Sequence[str],
        pad_length: int | None = None,
        model: GPT | None = None,
    ) -> None:
        super().__init__(config, model_config, model)
        self.label_names = list(label_names)
        self.pooling = config["classify"]["pooling"]
        self.train_scores = ClassificationScores(self.num_classes)
        self.val_scores = ClassificationScores(self.num_classes)
        self.test_scores = ClassificationScores(self.num_classes)
        self.test_splits: list[str] = ["test"]
        self.test_results: dict[str, dict[str, Any]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.hparams["label_names"])

    def adapt_model(self, model: GPT) -> nn.Module:
        """A fresh ``Linear(emb_dim, num_classes)`` head, then freeze per ``classify.trainable``.

        A model that already has a classifier head of ``num_classes`` outputs (``init_from`` one
        of our classify checkpoints) keeps it, so fine-tuning continues from the trained head.
        """
        settings = self.config["classify"]
        if settings["pooling"] not in POOLINGS:
            raise ValueError(
                f"classify.pooling={settings['pooling']!r}: expected one of {list(POOLINGS)}"
            )
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs two labels, got {self.hparams['label_names']}")
        head = model.out_head
        trained = head.out_features == self.num_classes != model.config.vocab_size
        if not (trained and head.bias is not None):
            model.out_head = nn.Linear(model.config.emb_dim, self.num_classes)
        set_trainable(model, settings["trainable"], settings.get("n_blocks", 1))
        return model

    @classmethod
    def from_config(
        cls, cfg: DictConfig, output_dir: Path
    ) -> tuple[ClassifyTask, ClassificationDataModule]:
        """The task and its data module; the data is read here, since the head's size is the
        number of classes it holds, and its splits are saved into the run folder."""
        model = build_model(cfg.model, cfg.init_from)
        datamodule = instantiate(
            cfg.data, context_length=model.config.context_length, output_dir=str(output_dir)
        )
        datamodule.prepare_data()
        datamodule.setup("fit")
        task = cls(
            plain_config(cfg),
            asdict(model.config),
            datamodule.label_names,
            datamodule.pad_length,
            model=model,
        )
        return task, datamodule

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits [B, num_classes] of token ids [B, T] with ``lengths`` real tokens each."""
        return pool_logits(self.model(input_ids), lengths, self.pooling)

    def scores(self, prefix: str) -> ClassificationScores:
        """The running scores of the ``train``, ``val`` or ``test`` metric prefix."""
        return getattr(self, f"{prefix}_scores")

    def _scored_loss(self, batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["lengths"])
        self.scores(prefix).update(logits.detach(), batch["labels"])
        return F.cross_entropy(logits, batch["labels"])

    def _log_scores(
        self, prefix: str, name: str, keys: Sequence[str] = ("acc", "f1", "loss")
    ) -> dict[str, Any]:
        """Log and reset the ``prefix`` scores as ``{name}/acc`` and so on; return them."""
        scores = self.scores(prefix).compute()
        self.scores(prefix).reset()
        for key in keys:
            self.log(f"{name}/{key}", scores[key], prog_bar=key == "acc", sync_dist=False)
        return scores

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._scored_loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        """Accuracy and F1 of the epoch's training batches (as trained, dropout on); the loss
        is logged per step."""
        self._log_scores("train", "train", keys=("acc", "f1"))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._scored_loss(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", "val")

    def test_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._scored_loss(batch, self.test_splits[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        """Log each tested split: the test split as ``test/*``, the others (re-scored after
        fitting) as ``best/train/*`` and ``best/val/*``."""
        self.test_results = {}
        for split in self.test_splits:
            name = split if split == "test" else f"best/{split}"
            self.test_results[split] = self._log_scores(split, name)

    def after_fit(self, trainer: L.Trainer, datamodule: ClassificationDataModule) -> None:
        """Score train, validation and test with the best checkpoint (the last weights when no
        checkpoint was kept) through ``trainer.test``, which shards them over DDP processes;
        rank 0 prints the table."""
        callback = trainer.checkpoint_callback
        ckpt_path = "best" if callback is not None and callback.best_model_path else None
        self.test_splits = list(SPLITS)
        loaders = [datamodule.eval_dataloader(split) for split in SPLITS]
        try:
            trainer.test(self, dataloaders=loaders, ckpt_path=ckpt_path, verbose=False)
        finally:
            self.test_splits = ["test"]
        if trainer.is_global_zero:
            weights = callback.best_model_path if ckpt_path else "the last weights"
            print_table(
                f"Scores of {weights}",
                [
                    {
                        "split": split,
                        "examples": r["examples"],
                        "accuracy": r["acc"],
                        "f1": r["f1"],
                        "loss": r["loss"],
                    }
                    for split, r in self.test_results.items()
                ],
            )

    def classify(self, texts: Sequence[str], batch_size: int = 8) -> list[Prediction]:
        """The label of each text, prepared as the training texts were (same truncation and
        padding, from the hyperparameters). The task runs in eval mode (no dropout), so a text
        always gets the same probabilities, and is left in the mode it was in."""
        context_length = self.hparams["model_config"]["context_length"]
        max_length = self.config["data"].get("max_length")
        # Checkpoints from before the option have no `lowercase` key: their texts were not lowered.
        lowercase = self.config["data"].get("lowercase", False)
        predictions: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            batch = encode_texts(
                chunk, context_length, self.hparams["pad_length"], max_length, lowercase
            )
            with evaluating(self):
                logits = self(batch["input_ids"].to(self.device), batch["lengths"].to(self.device))
            for text, probs in zip(chunk, logits.float().softmax(dim=-1).tolist(), strict=True):
                best = max(range(len(probs)), key=probs.__getitem__)
                predictions.append(
                    Prediction(
                        text=text,
                        label=self.label_names[best],
                        probability=probs[best],
                        probabilities=dict(zip(self.label_names, probs, strict=True)),
                    )
                )
        return predictions
