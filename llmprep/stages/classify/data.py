"""Labelled texts for the ``classify`` stage: read, balance, split, encode and batch them.

The default source is the UCI SMS Spam Collection, prepared the way the book's chapter 6 does:
the majority class undersampled to the minority's size, a seeded shuffle, a 70/10/20 split with
the book's integer arithmetic, and every text padded with ``<|endoftext|>`` (50256) to the
longest training example. Any CSV, TSV or JSON-lines file with a text and a label column goes
through the same path, and so does a folder already split into train/validation/test files.

A batch is ``{"input_ids": LongTensor[B, T], "lengths": LongTensor[B], "labels": LongTensor[B]}``;
``lengths`` holds each text's true token count (at least 1), so a classifier can read the
hidden state of the last real token instead of the padding after it.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from llmprep.data.errors import DataError
from llmprep.data.resumable import EpochSampler, ResumableDataModule, ResumableLoader
from llmprep.data.sources import SOURCES, resolve
from llmprep.data.windows import truncation_limit
from llmprep.files import atomic_path
from llmprep.tokenizer import get_tokenizer

SPLITS = ("train", "validation", "test")
PAD_MODES = ("longest_train", "batch")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
FORMATS = ("csv", "tsv", "jsonl")
# How the registered sources are laid out, used when ``format``/``columns`` are left out: the SMS
# collection is ``label<TAB>text`` without a header and without a suffix to tell the format.
SOURCE_LAYOUTS: dict[str, dict[str, Any]] = {
    "sms-spam": {"format": "tsv", "columns": ["label", "text"]},
}

# Bytes that are not UTF-8 survive decoding as lone surrogates (``errors="surrogateescape"``), so
# they can be reported at the field that holds them instead of at a byte offset.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text and where it was read, so later checks can point back at the file."""

    text: str
    label: str
    path: Path
    line: int


@dataclass(frozen=True, slots=True)
class Splits:
    """The train, validation and test examples."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def items(self) -> Iterable[tuple[str, list[Example]]]:
        """``(split name, examples)`` in the order train, validation, test."""
        return zip(SPLITS, (self.train, self.validation, self.test), strict=True)


def file_format(path: Path, format: str | None = None) -> str:
    """The format of ``path``: ``format`` when given, else read off the file's suffix."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"{path}: format {format!r} is not one of {list(FORMATS)}")
        return format
    found = SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise ValueError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
            f"name it with data.format (one of {list(FORMATS)})"
        )
    return found


def read_examples(
    path: str | Path,
    format: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    columns: Sequence[str] | None = None,
) -> list[Example]:
    """Every example of one CSV, TSV or JSON-lines file, in file order.

    CSV is read with standard quoting; TSV with quoting off, since TSV has no quoting and a
    text may start with a quote (the SMS collection does). CSV/TSV files start with a header row
    unless ``columns`` names their columns. Labels are stripped of surrounding whitespace and
    kept as strings; texts are kept exactly. Blank lines are skipped. Any other problem (a
    missing column, an empty text or label, bytes that are not UTF-8, a malformed line) raises
    one ``DataError`` naming the file, line and column.
    """
    path = Path(path)
    fmt = file_format(path, format)
    if columns is not None and fmt == "jsonl":
        raise ValueError(f"{path}: data.columns applies to CSV/TSV files, not JSON lines")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, None, None, f"cannot read the file ({err.strerror})") from err
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    if fmt == "jsonl":
        records = _jsonl_records(path, text)
    else:
        records = _delimited_records(path, text, fmt, columns, (text_column, label_column))
    examples = [_example(path, line, fields, text_column, label_column) for line, fields in records]
    if not examples:
        raise DataError(path, None, None, "the file holds no examples")
    return examples


def _delimited_records(
    path: Path, text: str, fmt: str, columns: Sequence[str] | None, required: Sequence[str]
) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(first line, {column: value})`` for each row of a CSV or TSV text.

    A header row without one of the ``required`` columns is an error at the header itself.
    """
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter="\t" if fmt == "tsv" else ",",
        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
        strict=True,
    )
    header = list(columns) if columns is not None else None
    next_line = 1
    try:
        for row in reader:
            line, next_line = next_line, reader.line_num + 1
            if not row:
                continue
            if header is None:
                header = [name.strip() for name in row]
                for name in required:
                    if name not in header:
                        raise DataError(path, line, name, f"no such column in the header {header}")
                continue
            if len(row) < len(header):
                raise DataError(
                    path,
                    line,
                    header[len(row)],
                    f"missing: the row has {len(row)} of the {len(header)} columns {header}",
                )
            if len(row) > len(header):
                raise DataError(
                    path,
                    line,
                    None,
                    f"the row has {len(row)} fields but the columns are {header} "
                    "(an unquoted delimiter inside a text?)",
                )
            yield line, dict(zip(header, row, strict=True))
    except csv.Error as err:
        raise DataError(
            path, next_line, None, f"malformed {fmt.upper()} in the record starting here: {err}"
        ) from err


def _jsonl_records(path: Path, text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each non-blank line of a JSON-lines text."""
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            if _UNDECODABLE.search(raw):
                raise DataError(path, line, None, "holds bytes that are not UTF-8") from err
            raise DataError(
                path, line, None, f"not valid JSON ({err.msg} at character {err.colno})"
            ) from err
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise DataError(path, line, None, f"expected a JSON object, got a JSON {kind}")
        yield line, record


def _example(
    path: Path, line: int, fields: Mapping[str, Any], text_column: str, label_column: str
) -> Example:
    """The example in one record's fields, or a ``DataError`` at the first bad field."""
    for name, value in fields.items():
        if _UNDECODABLE.search(name) or (isinstance(value, str) and _UNDECODABLE.search(value)):
            raise DataError(path, line, name, "holds bytes that are not UTF-8")
    for name in (text_column, label_column):
        if name not in fields:
            raise DataError(path, line, name, f"missing: the record has {sorted(fields)}")
    text, label = fields[text_column], fields[label_column]
    if not isinstance(text, str):
        raise DataError(path, line, text_column, f"expected a string, got {text!r}")
    if not text.strip():
        raise DataError(path, line, text_column, "empty text")
    if isinstance(label, bool | int):
        label = json.dumps(label)
    elif not isinstance(label, str):
        raise DataError(path, line, label_column, f"expected a string or integer, got {label!r}")
    if not label.strip():
        raise DataError(path, line, label_column, "empty label")
    return Example(text=text, label=label.strip(), path=path, line=line)


def balance_classes(examples: Sequence[Example], seed: int) -> list[Example]:
    """Every class undersampled, with a seeded draw, to the size of the smallest class.

    The book's ham/spam balancing generalised to any number of classes; the result is grouped
    by class and is meant to be shuffled by ``split_examples``.
    """
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    size = min(len(group) for group in by_label.values())
    rng = random.Random(seed)
    return [ex for label in sorted(by_label) for ex in rng.sample(by_label[label], size)]


def split_examples(
    examples: Sequence[Example], train_fraction: float, val_fraction: float, seed: int
) -> Splits:
    """A seeded shuffle cut into train/validation/test with the book's arithmetic.

    ``train_end = int(n * train_fraction)``, ``val_end = train_end + int(n * val_fraction)``
    and the test split takes the rest: 1,494 examples give 1,045 / 149 / 300.
    """
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    train_end = int(n * train_fraction)
    val_end = train_end + int(n * val_fraction)
    splits = Splits(shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:])
    for name, part in splits.items():
        if not part:
            raise DataError(
                examples[0].path,
                None,
                None,
                f"{n} examples leave the {name} split empty "
                f"(train_fraction={train_fraction}, val_fraction={val_fraction})",
            )
    return splits


def find_split_files(folder: Path) -> dict[str, Path]:
    """The train/validation/test files of an already split folder (``train.csv`` and so on)."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        matches = [folder / f"{split}{suffix}" for suffix in SUFFIX_FORMATS]
        matches = [p for p in matches if p.is_file()]
        if len(matches) != 1:
            listed = "none" if not matches else ", ".join(p.name for p in matches)
            raise DataError(
                folder,
                None,
                None,
                f"a split folder needs exactly one {split}.csv/.tsv/.jsonl file, found {listed}",
            )
        found[split] = matches[0]
    return found


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
    examples: Iterable[Example], names: Sequence[str], label_column: str, origin: str
) -> None:
    """A ``DataError`` at the first example whose label is not one of ``names``.

    ``origin`` says where ``names`` came from, for the message.
    """
    known = set(names)
    for ex in examples:
        if ex.label not in known:
            raise DataError(
                ex.path,
                ex.line,
                label_column,
                f"unknown label {ex.label!r}: {origin} are {list(names)}",
            )


def write_splits(splits: Splits, label_names: Sequence[str], output_dir: str | Path) -> None:
    """``train.csv``, ``validation.csv`` and ``test.csv`` with columns ``text,label,label_id``.

    ``label`` is the class name, so the folder reads back as split input with the default
    columns; ``label_id`` shows the id the model was trained on. All three files are written
    to temporary names first and then renamed, so a crash never leaves a half-written set.
    """
    folder = Path(output_dir)
    ids = {name: i for i, name in enumerate(label_names)}
    with ExitStack() as staged:
        for split, examples in splits.items():
            tmp = staged.enter_context(atomic_path(folder / f"{split}.csv"))
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label", "label_id"])
                writer.writerows([ex.text, ex.label, ids[ex.label]] for ex in examples)


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
    """``input_ids`` padded with ``<|endoftext|>`` to ``length`` (else the longest) and ``lengths``.

    Sequences longer than ``length`` are cut to it.
    """
    pad_id = get_tokenizer().eot_id
    width = length if length is not None else max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    lengths = torch.empty(len(sequences), dtype=torch.long)
    for row, seq in enumerate(sequences):
        seq = seq[:width]
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        lengths[row] = len(seq)
    return {"input_ids": input_ids, "lengths": lengths}


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
    if pad_to_length is not None:
        limit = min(limit, pad_to_length)
    return pad(tokenize(texts, limit, lowercase), pad_to_length)


class EncodedExamples(Dataset):
    """Token ids and label ids of one split; items are ``(token ids, label id)``."""

    def __init__(self, token_ids: list[list[int]], labels: list[int]):
        self.token_ids = token_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.token_ids[index], self.labels[index]


@dataclass(frozen=True)
class PadCollate:
    """Collates ``(token ids, label id)`` items into a batch padded to ``length`` (or longest)."""

    length: int | None

    def __call__(self, items: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        batch = pad([ids for ids, _ in items], self.length)
        batch["labels"] = torch.tensor([label for _, label in items], dtype=torch.long)
        return batch


class ClassificationDataModule(ResumableDataModule):
    """Train/validation/test batches of labelled texts for fine-tuning a GPT as a classifier.

    ``path``: a source name (``sms-spam``), a CSV/TSV/JSON-lines file, or a folder holding
    ``train``, ``validation`` and ``test`` files. ``format`` and ``columns`` left out are taken
    from a registered source's known layout (``SOURCE_LAYOUTS``), else from the file's suffix
    and header row, so the defaults read the SMS collection as the book does. A single file is
    balanced (unless ``balance=False``), shuffled and split here with ``seed``; a folder's splits
    are used exactly as given, so ``balance``, the fractions and ``seed`` do not apply to it.

    ``labels``: the class names in id order; every example in every split must carry one of them.
    Left out, the classes are the training split's labels in sorted order
    (see ``label_names_for``) and a validation or test label outside them is an error.

    ``pad_to``: ``longest_train`` pads every batch to the longest training text, as the book
    does, cutting longer validation/test texts to it; ``batch`` pads each batch to its own
    longest text. Texts are cut to ``min(context_length, max_length)`` tokens first.

    ``lowercase``: lower every text before tokenizing it (see ``tokenize``); the saved splits
    keep the texts as read.

    ``context_length`` and ``output_dir`` come from the stage; with ``output_dir`` the splits
    are saved there as CSV (see ``write_splits``).
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
        super().__init__(output_dir)
        layout = SOURCE_LAYOUTS.get(path, {})
        format = format if format is not None else layout.get("format")
        columns = columns if columns is not None else layout.get("columns")
        columns = list(columns) if columns is not None else None
        labels = [str(name) for name in labels] if labels is not None else None
        if columns is not None and not {text_column, label_column} <= set(columns):
            raise ValueError(
                f"data.columns {columns} must name text_column {text_column!r} "
                f"and label_column {label_column!r}"
            )
        if labels is not None and (len(labels) < 2 or len(set(labels)) != len(labels)):
            raise ValueError(f"data.labels must list at least two distinct names, got {labels}")
        if not (train_fraction > 0 and val_fraction > 0 and train_fraction + val_fraction < 1):
            raise ValueError(
                "need 0 < train_fraction, 0 < val_fraction and train_fraction + val_fraction < 1,"
                f" got {train_fraction} and {val_fraction}"
            )
        if pad_to not in PAD_MODES:
            raise ValueError(f"data.pad_to must be one of {list(PAD_MODES)}, got {pad_to!r}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        self.limit = truncation_limit(context_length, max_length)
        self.path = path
        self.format = format
        self.text_column = text_column
        self.label_column = label_column
        self.columns = columns
        self.labels = labels
        self.balance = balance
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.seed = seed
        self.pad_to = pad_to
        self.max_length = max_length
        self.lowercase = lowercase
        self.context_length = context_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last_train = drop_last_train
        self.splits: Splits | None = None
        self.datasets: dict[str, EncodedExamples] = {}
        self._label_names: list[str] = []
        self._pad_length: int | None = None

    def prepare_data(self) -> None:
        """Resolve the source once: a named source is checked in the cache or mirror, or fetched."""
        self._source()

    def _source(self) -> Path:
        """The file or split folder that ``path`` names (``resolve`` takes files only)."""
        folder = Path(self.path).expanduser()
        if self.path not in SOURCES and folder.is_dir():
            return folder.resolve()
        return resolve(self.path)

    def setup(self, stage: str | None = None) -> None:
        """Read, balance, split, label and encode the data and save the splits; once only."""
        if self.splits is not None:
            return
        splits = self._read_splits(self._source())
        if self.labels is not None:
            names = list(self.labels)
        else:
            names = label_names_for(splits.train)
            if len(names) < 2:
                raise DataError(
                    splits.train[0].path,
                    None,
                    self.label_column,
                    f"the training split has the single class {names}; a classifier needs two",
                )
            for held_out in (splits.validation, splits.test):
                check_labels(held_out, names, self.label_column, "the training split's labels")
        ids = {name: i for i, name in enumerate(names)}
        train_ids = tokenize([ex.text for ex in splits.train], self.limit, self.lowercase)
        pad_length = max(len(t) for t in train_ids) if self.pad_to == "longest_train" else None
        cut = self.limit if pad_length is None else pad_length
        for split, examples in splits.items():
            if split == "train":
                tokens = train_ids
            else:
                tokens = tokenize([ex.text for ex in examples], cut, self.lowercase)
            self.datasets[split] = EncodedExamples(tokens, [ids[ex.label] for ex in examples])
        if self.output_dir is not None:
            write_splits(splits, names, self.output_dir)
        self.splits, self._label_names, self._pad_length = splits, names, pad_length

    def _read_splits(self, source: Path) -> Splits:
        """The three splits of ``source``: a split folder as given, else one file split here.

        Explicit ``labels`` are checked on every example as read, before balancing could drop
        the offending row unseen.
        """
        if source.is_dir():
            files = find_split_files(source)
            return Splits(*(self._read(files[split]) for split in SPLITS))
        examples = self._read(source)
        if self.balance:
            examples = balance_classes(examples, self.seed)
        return split_examples(examples, self.train_fraction, self.val_fraction, self.seed)

    def _read(self, path: Path) -> list[Example]:
        examples = read_examples(
            path, self.format, self.text_column, self.label_column, self.columns
        )
        if self.labels is not None:
            check_labels(examples, self.labels, self.label_column, "the labels in data.labels")
        return examples

    def _ready(self) -> None:
        if self.splits is None:
            raise RuntimeError("ClassificationDataModule: call setup() before reading its data")

    @property
    def num_classes(self) -> int:
        """How many classes the classifier head needs."""
        self._ready()
        return len(self._label_names)

    @property
    def label_names(self) -> list[str]:
        """The class names; a name's index is its label id."""
        self._ready()
        return list(self._label_names)

    @property
    def pad_length(self) -> int | None:
        """The length every batch is padded to, or ``None`` when each batch pads to its own."""
        self._ready()
        return self._pad_length

    def _loader(self, split: str) -> DataLoader:
        """Every example of ``split`` in a fixed order, none dropped."""
        self._ready()
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=PadCollate(self._pad_length),
        )

    def train_dataloader(self) -> ResumableLoader:
        """Training batches in an order drawn from ``seed + epoch``, resumable mid-epoch
        (``EpochSampler``); the last partial batch is dropped as the book does."""
        self._ready()
        size = len(self.datasets["train"])
        if self.drop_last_train and size < self.batch_size:
            raise DataError(
                self.splits.train[0].path,
                None,
                None,
                f"the training split has {size} examples, fewer than batch_size="
                f"{self.batch_size}, so drop_last_train=true would leave no batch",
            )
        sampler = EpochSampler(size, self.seed)
        loader = ResumableLoader(
            self.datasets["train"],
            sampler,
            self.batch_size,
            self.drop_last_train,
            collate_fn=PadCollate(self._pad_length),
            num_workers=self.num_workers,
        )
        return self.resume_loader(loader)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader("validation")

    test_splits = SPLITS

    def test_dataloader(self) -> list[DataLoader]:
        """Every split in a fixed order, none dropped, the training split included: testing
        scores all three."""
        return [self._loader(split) for split in SPLITS]

    def task_settings(self) -> dict[str, Any]:
        """The labels and text preparation the classifier is built with (see ``ClassifyTask``);
        reads the data on first use, since the head's size is the number of classes."""
        self.prepare_data()
        self.setup("fit")
        return {
            "label_names": self.label_names,
            "pad_length": self.pad_length,
            "max_length": self.max_length,
            "lowercase": self.lowercase,
        }
