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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, classification

from llmprep.model import GPT
from llmprep.model.modes import evaluating
from llmprep.stages.classify.data import encode_texts
from llmprep.training.task import GPTTask, test_metric_prefix

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
    raise ValueError(f"stage.pooling={pooling!r}: expected one of {list(POOLINGS)}")


def set_trainable(model: GPT, trainable: str, n_blocks: int = 1) -> None:
    """Freeze the GPT except the part ``trainable`` names (see conf/stage/classify.yaml).

    ``last_block`` is the book's choice: retraining only the top of the network is enough to read
    a class off pretrained features, and far cheaper than training it all.
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"stage.trainable={trainable!r}: expected one of {list(TRAINABLE)}")
    if trainable == "all":
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    model.out_head.requires_grad_(True)
    if trainable == "head":
        return
    if trainable == "last_block":
        n_blocks = 1
    elif not 1 <= n_blocks <= len(model.blocks):
        raise ValueError(
            f"stage.n_blocks={n_blocks}: expected 1 to the model's {len(model.blocks)} blocks"
        )
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
        self.accuracy = classification.MulticlassAccuracy(num_classes, average="micro")
        self.f1 = (
            classification.BinaryF1Score()
            if num_classes == 2
            else classification.MulticlassF1Score(num_classes, average="macro")
        )
        self.loss = MeanMetric()
        self.confusion = classification.MulticlassConfusionMatrix(num_classes)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of class logits [B, C] and true label ids [B]."""
        preds = logits.argmax(dim=-1)
        self.accuracy.update(preds, labels)
        self.f1.update(preds, labels)
        self.loss.update(F.cross_entropy(logits.float(), labels, reduction="none"))
        self.confusion.update(preds, labels)

    def compute(self) -> dict[str, Any]:
        """``examples``, ``accuracy``, ``f1``, ``loss`` and ``confusion_matrix`` (rows: true,
        columns: predicted label ids) as plain numbers; then the scores start over."""
        confusion = self.confusion.compute()
        values = {
            "examples": int(confusion.sum()),
            "accuracy": float(self.accuracy.compute()),
            "f1": float(self.f1.compute()),
            "loss": float(self.loss.compute()),
            "confusion_matrix": confusion.tolist(),
        }
        for metric in self.children():
            metric.reset()
        return values


@dataclass(frozen=True)
class Prediction:
    """A text's most probable label, its probability, and every label's probability."""

    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


class ClassifyTask(GPTTask):
    """Fine-tunes the GPT to label texts; logs loss, accuracy and F1 per split.

    What the data module says of its texts (``task_settings()``) are hyperparameters, so a
    checkpoint alone classifies new texts the way its training data was prepared:
    ``label_names`` (a name's index is its id), ``pad_length`` (what every text was padded to,
    ``None`` when each batch padded to its own longest), ``max_length`` (the truncation) and
    ``lowercase``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        model_config: dict[str, Any],
        label_names: Sequence[str],
        pad_length: int | None = None,
        max_length: int | None = None,
        lowercase: bool = False,
        model: GPT | None = None,
    ) -> None:
        super().__init__(config, model_config, model)
        self.label_names = list(label_names)
        self.pooling = config["stage"]["pooling"]
        self.train_scores = ClassificationScores(self.num_classes)
        self.val_scores = ClassificationScores(self.num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.hparams["label_names"])

    def adapt_model(self, model: GPT) -> nn.Module:
        """A fresh ``Linear(emb_dim, num_classes)`` head, then freeze per ``stage.trainable``.

        A model that already has a classifier head of ``num_classes`` outputs (``init_from`` one
        of our classify checkpoints) keeps it, so fine-tuning continues from the trained head.
        """
        settings = self.config["stage"]
        if settings["pooling"] not in POOLINGS:
            raise ValueError(
                f"stage.pooling={settings['pooling']!r}: expected one of {list(POOLINGS)}"
            )
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs two labels, got {self.hparams['label_names']}")
        head = model.out_head
        trained = head.out_features == self.num_classes != model.config.vocab_size
        if not (trained and head.bias is not None):
            model.out_head = nn.Linear(model.config.emb_dim, self.num_classes)
        set_trainable(model, settings["trainable"], settings.get("n_blocks", 1))
        return model

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits [B, num_classes] of token ids [B, T] with ``lengths`` real tokens each."""
        return pool_logits(self.model(input_ids), lengths, self.pooling)

    def _scored_loss(
        self, batch: dict[str, torch.Tensor], scores: ClassificationScores
    ) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["lengths"])
        scores.update(logits.detach(), batch["labels"])
        return F.cross_entropy(logits, batch["labels"])

    def _log_scores(
        self, scores: ClassificationScores, name: str, keys: Sequence[str] = ("acc", "f1", "loss")
    ) -> dict[str, Any]:
        """Log ``scores`` (and start them over) as ``{name}/acc``, ``{name}/f1``,
        ``{name}/loss``; return them."""
        values = scores.compute()
        for key in keys:
            value = values["accuracy" if key == "acc" else key]
            self.log(f"{name}/{key}", value, prog_bar=key == "acc", sync_dist=False)
        return values

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._scored_loss(batch, self.train_scores)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        """Accuracy and F1 of the epoch's training batches (as trained, dropout on); the loss
        is logged per step."""
        self._log_scores(self.train_scores, "train", keys=("acc", "f1"))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._scored_loss(batch, self.val_scores)

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_scores, "val")

    def on_test_start(self) -> None:
        """One set of scores per test loader, named by the data module's ``test_splits``."""
        self.test_splits = list(self.trainer.datamodule.test_splits)
        self.test_scores = nn.ModuleList(
            ClassificationScores(self.num_classes) for _ in self.test_splits
        ).to(self.device)

    def test_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._scored_loss(batch, self.test_scores[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        """``test_results``: each split's scores and confusion matrix; logged as ``test/*``,
        ``best/train/*`` and ``best/val/*`` (see ``test_metric_prefix``)."""
        self.test_results = {
            split: self._log_scores(scores, test_metric_prefix(split))
            for split, scores in zip(self.test_splits, self.test_scores, strict=True)
        }

    def classify(self, texts: Sequence[str], batch_size: int = 8) -> list[Prediction]:
        """The label of each text, prepared as the training texts were (same truncation and
        padding, from the hyperparameters). The task runs in eval mode (no dropout), so a text
        always gets the same probabilities, and is left in the mode it was in."""
        context_length = self.hparams["model_config"]["context_length"]
        max_length, lowercase = self.hparams["max_length"], self.hparams["lowercase"]
        predictions: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            batch = encode_texts(
                chunk, context_length, self.hparams["pad_length"], max_length, lowercase
            )
            with evaluating(self):
                logits = self(batch["input_ids"].to(self.device), batch["lengths"].to(self.device))
            for text, probs in zip(chunk, logits.float().softmax(dim=-1).tolist(), strict=True):
                probabilities = dict(zip(self.label_names, probs, strict=True))
                label = max(probabilities, key=probabilities.__getitem__)
                predictions.append(Prediction(text, label, probabilities[label], probabilities))
        return predictions
