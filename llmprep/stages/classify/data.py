"""Labelled texts for the ``classify`` stage: read, balance, split, encode and batch them.

The default source is the UCI SMS Spam Collection, prepared the way the book's chapter 6 does
(see ``ClassificationDataModule``); any file ``llmprep.data.records`` reads with a text and a
label column goes through the same path, and so does a folder already split into train/val/test.

A batch is ``{"input_ids": LongTensor[B, T], "lengths": LongTensor[B], "labels": LongTensor[B]}``;
``lengths`` holds each text's true token count (at least 1), so a classifier can read the
hidden state of the last real token instead of the padding after it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from llmprep.data import records
from llmprep.data.errors import DataError
from llmprep.data.records import SPLITS, Place
from llmprep.data.resumable import ResumableDataModule, ResumableLoader
from llmprep.data.windows import truncation_limit
from llmprep.tokenizer import get_tokenizer

PAD_MODES = ("longest_train", "batch")
# How the registered sources are laid out, used when ``format``/``columns`` are left out: the SMS
# collection is ``label<TAB>text`` without a header and without a suffix to tell the format.
SOURCE_LAYOUTS: dict[str, dict[str, Any]] = {
    "sms-spam": {"format": "tsv", "columns": ["label", "text"]},
}
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text and the ``Place`` it was read at, so a later check can point back at
    its line."""

    text: str
    label: str
    place: Place


def read_examples(
    path: str | Path,
    format: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    columns: Sequence[str] | None = None,
) -> list[Example]:
    """Every example of one file (see ``read_records``), in file order: texts kept exactly,
    labels stripped of surrounding white space; neither may be empty."""
    fields = {"text": text_column, "label": label_column}
    places, rows = records.read_records(path, fields, format, columns, nonblank=fields)
    return [Example(r["text"], r["label"].strip(), at) for at, r in zip(places, rows, strict=True)]


def balance_classes(examples: Sequence[Example], seed: int) -> list[Example]:
    """Every class undersampled, with a seeded draw, to the size of the smallest class.

    The book's ham/spam balancing generalised to any number of classes; the result is grouped
    by class and is meant to be shuffled by ``split_records``.
    """
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    size = min(len(group) for group in by_label.values())
    rng = random.Random(seed)
    return [ex for label in sorted(by_label) for ex in rng.sample(by_label[label], size)]


def label_names_for(train: Sequence[Example]) -> list[str]:
    """The training split's labels in sorted order: numerically when every label is an integer.

    Sorted order gives the book's ids for the SMS data (ham 0, spam 1) and numeric order keeps
    labels such as ``0 .. 10`` on their own ids.
    """
    names = {ex.label for ex in train}
    if all(_INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def check_labels(
    examples: Iterable[Example], names: Sequence[str], label_column: str, source: str
) -> None:
    """A ``DataError`` at the first example whose label is not one of ``names`` (which came from
    ``source``, as the message says)."""
    known = set(names)
    for ex in examples:
        if ex.label not in known:
            message = f"unknown label {ex.label!r}: {source} are {list(names)}"
            raise ex.place.error(label_column, message)


def tokenize(texts: Sequence[str], limit: int, lowercase: bool = False) -> list[list[int]]:
    """GPT-2 token ids of each text, cut to its first ``limit`` tokens (the book keeps the start).

    ``<|endoftext|>`` written inside a text is encoded as plain text: a message must not be able
    to inject the padding token. ``lowercase`` lowers each text first: GPT-2's tokens are
    case-sensitive, so "FREE" and "free" share nothing unless a model learns that they mean the
    same, which a classifier trained from scratch on a thousand texts has little data for.
    """
    if lowercase:
        texts = [text.lower() for text in texts]
    return [ids[:limit] for ids in get_tokenizer().encode_ordinary_batch(texts)]


def pad(sequences: Sequence[Sequence[int]], length: int | None = None) -> dict[str, torch.Tensor]:
    """``input_ids`` padded with ``<|endoftext|>`` to ``length`` (cutting longer sequences to it)
    or else to the longest, and ``lengths``."""
    pad_id = get_tokenizer().eot_id
    rows = [torch.tensor(seq[:length], dtype=torch.long) for seq in sequences]
    input_ids = pad_sequence(rows, batch_first=True, padding_value=pad_id)
    if length is not None:
        input_ids = F.pad(input_ids, (0, length - input_ids.shape[1]), value=pad_id)
    return {"input_ids": input_ids, "lengths": torch.tensor([len(row) for row in rows])}


def encode_texts(
    texts: Sequence[str],
    context_length: int,
    pad_to_length: int | None = None,
    max_length: int | None = None,
    lowercase: bool = False,
) -> dict[str, torch.Tensor]:
    """A batch (``input_ids``, ``lengths``) for classifying arbitrary texts.

    The same rules as training: lowered when the data module's ``lowercase`` was set, truncated
    to ``context_length`` (and ``max_length``), padded to ``pad_to_length`` (the data module's
    ``pad_length``; longer texts are cut to it, as the book cuts validation texts to the
    training length) or else to the longest text given.
    """
    if not texts:
        raise ValueError("encode_texts needs at least one text")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"text {i} is empty; there is nothing to classify")
    limit = truncation_limit(context_length, max_length)
    return pad(tokenize(texts, limit, lowercase), pad_to_length)


@dataclass(frozen=True)
class PadCollate:
    """Collates ``(token ids, label id)`` items into a batch padded to ``length`` (or longest)."""

    length: int | None

    def __call__(self, items: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        batch = pad([ids for ids, _ in items], self.length)
        batch["labels"] = torch.tensor([label for _, label in items], dtype=torch.long)
        return batch


class ClassificationDataModule(ResumableDataModule):
    """Train/val/test batches of labelled texts for fine-tuning a GPT as a classifier.

    ``path``: a source name (``sms-spam``), a file or hub id that ``llmprep.data.records`` reads,
    or a folder holding ``train``, ``val`` (or ``validation``) and ``test`` files. ``format`` and
    ``columns`` left out are taken from a registered source's known layout (``SOURCE_LAYOUTS``),
    else from the file's suffix and header row, so the defaults read the SMS collection as the
    book does. A single file is balanced (unless ``balance=False``), shuffled and split here with
    ``seed`` (``split_records``); a folder's splits are used exactly as given, so ``balance``,
    the fractions and ``seed`` do not apply to it.

    ``labels``: the class names in id order; every example in every split must carry one of them.
    Left out, the classes are the training split's labels in sorted order
    (see ``label_names_for``) and a val or test label outside them is an error.

    ``pad_to``: ``longest_train`` pads every batch to the longest training text, as the book
    does, cutting longer val/test texts to it; ``batch`` pads each batch to its own longest
    text. Texts are cut to ``min(context_length, max_length)`` tokens first.

    ``lowercase``: lower every text before tokenizing it (see ``tokenize``); the saved splits
    keep the texts as read.

    ``context_length`` and ``output_dir`` come from the stage; with ``output_dir`` the splits
    are saved there as ``train.csv``, ``val.csv`` and ``test.csv`` with the columns
    ``text,label,label_id``: ``label`` is the class name, so the folder reads back as split
    input with the default columns, and ``label_id`` shows the id the model was trained on.
    """

    def __init__(
        self,
        path: str = "sms-spam",
        format: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        columns: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        balance: bool = True,
        train_fraction: float = 0.7,
        val_fraction: float = 0.1,
        seed: int = 123,
        pad_to: str = "longest_train",
        max_length: int | None = None,
        lowercase: bool = False,
        context_length: int = 1024,
        batch_size: int = 8,
        num_workers: int = 0,
        output_dir: str | None = None,
        drop_last_train: bool = True,
    ) -> None:
        super().__init__(output_dir, batch_size, num_workers, seed)
        self.fractions = records.check_fractions(
            {"train": train_fraction, "val": val_fraction}, "data.train_fraction, val_fraction"
        )
        self.limit = truncation_limit(context_length, max_length)
        self.path = path
        layout = SOURCE_LAYOUTS.get(path, {})
        self.format = format if format is not None else layout.get("format")
        self.columns = columns if columns is not None else layout.get("columns")
        self.text_column = text_column
        self.label_column = label_column
        self.labels = names = [str(name) for name in labels] if labels is not None else None
        if names is not None and not 2 <= len(set(names)) == len(names):
            raise ValueError(f"data.labels must list at least two distinct names, got {names}")
        self.balance = balance
        if pad_to not in PAD_MODES:
            raise ValueError(f"data.pad_to must be one of {list(PAD_MODES)}, got {pad_to!r}")
        self.pad_to = pad_to
        self.lowercase = lowercase
        self.drop_last_train = drop_last_train
        self.splits: dict[str, list[Example]] = {}
        # Each split's ``(token ids, label id)`` items, a dataset as DataLoader takes it.
        self.datasets: dict[str, list[tuple[list[int], int]]] = {}
        # Set by ``setup``: the class names (a name's index is its label id) and the length
        # every batch is padded to (``None``: each batch pads to its own longest text).
        self.label_names: list[str] = []
        self.pad_length: int | None = None

    def prepare_data(self) -> None:
        """Fetch the source once: a download or mirror check, or the hub dataset into its cache."""
        records.fetch(self.path)

    def setup(self, stage: str | None = None) -> None:
        """Read, balance, split, label and encode the data and save the splits; once only."""
        if self.splits:
            return
        balance = (lambda examples: balance_classes(examples, self.seed)) if self.balance else None
        splits, _ = records.read_splits(self.path, self._read, self.fractions, self.seed, balance)
        if self.labels is not None:
            names = list(self.labels)
        else:
            names = label_names_for(splits["train"])
            if len(names) < 2:
                raise DataError(
                    splits["train"][0].place.path,
                    None,
                    self.label_column,
                    f"the training split has the single class {names}; a classifier needs two",
                )
            for held_out in (splits["val"], splits["test"]):
                check_labels(held_out, names, self.label_column, "the training split's labels")
        ids = {name: i for i, name in enumerate(names)}
        train_ids = tokenize([ex.text for ex in splits["train"]], self.limit, self.lowercase)
        pad_length = max(len(t) for t in train_ids) if self.pad_to == "longest_train" else None
        cut = self.limit if pad_length is None else pad_length
        for split, examples in splits.items():
            tokens = train_ids
            if split != "train":
                tokens = tokenize([ex.text for ex in examples], cut, self.lowercase)
            labels = [ids[ex.label] for ex in examples]
            self.datasets[split] = list(zip(tokens, labels, strict=True))
        if self.output_dir is not None:
            rows = {
                split: [
                    {"text": ex.text, "label": ex.label, "label_id": ids[ex.label]}
                    for ex in examples
                ]
                for split, examples in splits.items()
            }
            records.write_splits(rows, self.output_dir, ".csv")
        self.splits, self.label_names, self.pad_length = splits, names, pad_length

    def _read(self, path: str | Path) -> list[Example]:
        """The examples of one file; explicit ``labels`` are checked on every example as read,
        before balancing could drop the offending row unseen."""
        examples = read_examples(
            path, self.format, self.text_column, self.label_column, self.columns
        )
        if self.labels is not None:
            check_labels(examples, self.labels, self.label_column, "the labels in data.labels")
        return examples

    @property
    def num_classes(self) -> int:
        """How many classes the classifier head needs."""
        return len(self.label_names)

    def train_dataloader(self) -> ResumableLoader:
        """Training batches in an order drawn from ``seed + epoch``, resumable mid-epoch
        (``EpochSampler``); the last partial batch is dropped as the book does."""
        size = len(self.datasets["train"])
        if self.drop_last_train and size < self.batch_size:
            raise DataError(
                self.splits["train"][0].place.path,
                None,
                None,
                f"the training split has {size} examples, fewer than batch_size="
                f"{self.batch_size}, so drop_last_train=true would leave no batch",
            )
        collate = PadCollate(self.pad_length)
        return self.train_loader(self.datasets["train"], collate, self.drop_last_train)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self.eval_loader(self.datasets["val"], PadCollate(self.pad_length))

    test_splits = SPLITS

    def test_dataloader(self) -> list[DataLoader]:
        """Every split in a fixed order, none dropped, the training split included: testing
        scores all three."""
        return [self.eval_loader(self.datasets[s], PadCollate(self.pad_length)) for s in SPLITS]

    def task_settings(self) -> dict[str, Any]:
        """The labels and text preparation the classifier is built with (see ``ClassifyTask``);
        reads the data on first use, since the head's size is the number of classes."""
        self.prepare_data()
        self.setup("fit")
        return {
            "label_names": self.label_names,
            "pad_length": self.pad_length,
            "max_length": self.limit,
            "lowercase": self.lowercase,
        }
