"""Instruction records for the ``instruct`` stage: read, split, encode and batch them.

The default source is the book's chapter 7 ``instruction-data.json`` (1,100 records with
``instruction``, ``input`` and ``output``), split in file order 85 / 10 / 5 into train / test /
validation exactly as the book does: 935 / 110 / 55. Any JSON list or JSON-lines file of such
records (field names configurable), a folder already split into train / val / test files, or a
Hugging Face hub dataset (``hf:tatsu-lab/alpaca``) goes through the same path.

A batch is ``{"input_ids": LongTensor[B, T], "targets": LongTensor[B, T]}`` built by
``collate_instruct`` with the book's ``custom_collate_fn`` rules; targets the loss must skip hold
``-100``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from llmprep.data.errors import DataError
from llmprep.data.resumable import EpochSampler, ResumableDataModule, ResumableLoader
from llmprep.data.sources import SOURCES, resolve
from llmprep.data.windows import truncation_limit
from llmprep.files import write_json_atomically
from llmprep.stages.instruct.prompts import PromptStyle, get_style
from llmprep.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")
SPLITS = ("train", "val", "test")
FORMATS = ("json", "jsonl")
SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SPLIT_FILE_STEMS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
HUB_PREFIX = "hf:"
IGNORE_INDEX = -100

Record = dict[str, str]


def field_names(fields: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """Which key of a source record holds each of ``instruction``, ``input`` and ``output``.

    Unnamed fields keep their own name. ``input`` may map to ``None`` for data without an input
    column: every input is then empty.
    """
    names: dict[str, str | None] = {name: name for name in FIELDS}
    for name, key in (fields or {}).items():
        if name not in FIELDS:
            raise ValueError(f"data.fields: unknown field {name!r}; the fields are {list(FIELDS)}")
        if key is None and name != "input":
            raise ValueError(f"data.fields.{name} must name a key; only input may be null")
        names[name] = key
    return names


def file_format(path: Path, format: str | None = None) -> str:
    """``format`` when given, else ``jsonl`` for ``.jsonl``/``.ndjson`` names, else ``json``."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"{path}: data.format {format!r} is not one of {list(FORMATS)}")
        return format
    return SUFFIX_FORMATS.get(path.suffix.lower(), "json")


def read_records(
    path: str | Path,
    format: str | None = None,
    fields: Mapping[str, str | None] | None = None,
) -> list[Record]:
    """Every record of a JSON list or JSON-lines file as ``{instruction, input, output}`` strings.

    Keys other than the three fields are dropped. Problems raise one ``DataError`` naming the
    file, the record index (and for JSON lines the line), and the field: an empty file, invalid
    JSON (with its line and column), a record that is not an object, a missing field, a field
    that is not a string. Empty strings are accepted: an empty input is the common case, and
    whether an empty output is a mistake depends on the data.
    """
    path = Path(path)
    fmt = file_format(path, format)
    names = field_names(fields)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, None, None, f"cannot read the file ({err.strerror})") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(path, line, None, f"byte {err.start} is not UTF-8") from err
    if not text.strip():
        raise DataError(path, None, None, "the file is empty")
    items = _jsonl_items(path, text) if fmt == "jsonl" else _json_items(path, text)
    records = [
        to_record(path, line, index, item, names) for index, (line, item) in enumerate(items)
    ]
    if not records:
        raise DataError(path, None, None, "the file holds no records")
    return records


def _json_items(path: Path, text: str) -> list[tuple[None, Any]]:
    """The elements of a file holding one JSON list (no line numbers: records are indexed)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (JSON lines? name the file .jsonl or pass data.format=jsonl)"
        raise DataError(
            path,
            err.lineno,
            None,
            f"invalid JSON at column {err.colno}: {err.msg}"
            + (hint if err.msg == "Extra data" else ""),
        ) from err
    if not isinstance(data, list):
        raise DataError(
            path, None, None, f"expected a JSON list of records, got {type(data).__name__}"
        )
    return [(None, item) for item in data]


def _jsonl_items(path: Path, text: str) -> list[tuple[int, Any]]:
    """``(line, value)`` for each non-blank line of a JSON-lines text."""
    items = []
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            items.append((line, json.loads(raw)))
        except json.JSONDecodeError as err:
            raise DataError(
                path, line, None, f"invalid JSON at column {err.colno}: {err.msg}"
            ) from err
    return items


def to_record(
    source: str | Path,
    line: int | None,
    index: int,
    item: Any,
    names: Mapping[str, str | None],
) -> Record:
    """The canonical record of one source item, or a ``DataError`` at its first bad field."""
    if not isinstance(item, Mapping):
        raise DataError(
            source, line, None, f"record {index}: expected an object, got {type(item).__name__}"
        )
    record: Record = {}
    for name, key in names.items():
        if key is None:
            record[name] = ""
            continue
        if key not in item:
            raise DataError(
                source, line, key, f"record {index}: missing; the record has {sorted(item)}"
            )
        value = item[key]
        if not isinstance(value, str):
            raise DataError(
                source, line, key, f"record {index}: expected a string, got {value!r:.80}"
            )
        record[name] = value
    return record


def read_hub_records(name: str, fields: Mapping[str, str | None] | None = None) -> list[Record]:
    """The ``train`` split of a Hugging Face hub dataset as canonical records.

    Any failure to load (offline, unknown name, no network) becomes one ``DataError`` that says
    how to go on without the hub: pass the dataset's own JSON file as ``data.path``.
    """
    from datasets import load_dataset

    names = field_names(fields)
    source = f"{HUB_PREFIX}{name}"
    try:
        dataset = load_dataset(name, split="train")
    except Exception as err:
        raise DataError(
            source,
            None,
            None,
            f"cannot load {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Without a network, download its JSON file (for tatsu-lab/alpaca: alpaca_data.json "
            "from github.com/tatsu-lab/stanford_alpaca) and pass data.path=/path/to/that/file",
        ) from err
    return [to_record(source, None, i, row, names) for i, row in enumerate(dataset)]


def split_records(
    records: Sequence[Record], split: Sequence[float] = (0.85, 0.10), source: str | Path = "data"
) -> dict[str, list[Record]]:
    """``{"train", "val", "test"}`` cut in file order with the book's integer arithmetic.

    ``split`` is ``(train fraction, test fraction)``; validation takes the rest:
    ``train_end = int(n * 0.85)``, ``test_end = train_end + int(n * 0.10)``, so 1,100 records
    give 935 train, 110 test and 55 validation records. An empty split is an error.
    """
    train_fraction, test_fraction = check_split(split)
    n = len(records)
    train_end = int(n * train_fraction)
    test_end = train_end + int(n * test_fraction)
    splits = {
        "train": list(records[:train_end]),
        "val": list(records[test_end:]),
        "test": list(records[train_end:test_end]),
    }
    for name, part in splits.items():
        if not part:
            raise DataError(
                source,
                None,
                None,
                f"{n} records leave the {name} split empty (split={list(split)})",
            )
    return splits


def check_split(split: Sequence[float]) -> tuple[float, float]:
    """``(train fraction, test fraction)``, both positive and summing below 1."""
    if len(split) != 2:
        raise ValueError(f"data.split is [train fraction, test fraction], got {list(split)}")
    train_fraction, test_fraction = float(split[0]), float(split[1])
    if not (train_fraction > 0 and test_fraction > 0 and train_fraction + test_fraction < 1):
        raise ValueError(
            "data.split needs 0 < train, 0 < test and train + test < 1 (validation takes the "
            f"rest), got {list(split)}"
        )
    return train_fraction, test_fraction


def find_split_files(folder: Path) -> dict[str, Path]:
    """The train / val (or validation) / test files of an already split folder.

    Each split needs exactly one file named after it with a ``.json``, ``.jsonl`` or
    ``.ndjson`` suffix.
    """
    found: dict[str, Path] = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        matches = [folder / f"{stem}{suffix}" for stem in stems for suffix in SUFFIX_FORMATS]
        matches = [p for p in matches if p.is_file()]
        if len(matches) != 1:
            listed = "none" if not matches else ", ".join(p.name for p in matches)
            wanted = "/".join(stems)
            raise DataError(
                folder,
                None,
                None,
                f"a split folder needs exactly one {wanted}.json/.jsonl file, found {listed}",
            )
        found[split] = matches[0]
    return found


def encode_records(records: Sequence[Record], style: PromptStyle) -> list[tuple[list[int], int]]:
    """``(token ids of prompt + response, prompt token count)`` for each record.

    Prompt and response are encoded separately and joined, so the prompt's tokens are exactly
    the ones generation later starts from and the prompt/response boundary is a token boundary;
    on the book's 1,100 records this gives the same ids as encoding the whole text (all three
    styles). ``<|endoftext|>`` written inside a record is encoded as plain text, so a record
    cannot end itself early.
    """
    if not records:
        return []
    prompts, responses = zip(*(style.format_example(r) for r in records), strict=True)
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode_ordinary_batch(prompts)
    response_ids = tokenizer.encode_ordinary_batch(responses)
    return [(p + r, len(p)) for p, r in zip(prompt_ids, response_ids, strict=True)]


def has_target(length: int, prompt_length: int, limit: int, mask_prompt: bool) -> bool:
    """Whether ``collate_instruct`` leaves an example of ``length`` tokens, ``prompt_length`` of
    them prompt, at least one target the loss reads once cut to ``limit`` columns.

    The example's targets are its own positions ``0 .. length - 1`` (the last predicts the end
    token); ``mask_prompt`` ignores the first ``prompt_length - 1``, and the cut drops every
    position from ``limit`` on.
    """
    first = max(prompt_length - 1, 0) if mask_prompt else 0
    return first < min(length, limit)


def collate_instruct(
    batch: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int] | None = None,
    pad_id: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    mask_prompt: bool = False,
) -> dict[str, torch.Tensor]:
    """The book's instruction batch: ``input_ids`` and shifted ``targets``.

    Each example gets one ``pad_id`` (``<|endoftext|>``) appended as its end token and is padded
    with ``pad_id`` to the longest example + 1; ``input_ids`` drop the last column and
    ``targets`` the first. Every padding target after the end token becomes ``ignore_index``,
    so the model learns to emit the end token once. The padding is found by position, not by
    value, so an end-token id inside an example is never masked. ``mask_prompt`` also ignores
    the targets that predict prompt tokens: target ``j`` predicts token ``j + 1``, so for a
    prompt of ``p`` tokens ``targets[:p - 1]`` are ignored and the first response token is
    still learned. Finally both are cut to ``max_length`` columns (``None``: no cut).
    """
    if not batch:
        raise ValueError("collate_instruct needs at least one example")
    if mask_prompt and prompt_lengths is None:
        raise ValueError("mask_prompt=True needs the prompt_lengths")
    if prompt_lengths is not None and len(prompt_lengths) != len(batch):
        raise ValueError(f"{len(prompt_lengths)} prompt lengths for {len(batch)} examples")
    width = max(len(ids) for ids in batch) + 1
    pad_id = get_tokenizer().eot_id if pad_id is None else pad_id
    padded = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(batch):
        padded[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    input_ids = padded[:, :-1]
    targets = padded[:, 1:].clone()
    for row, ids in enumerate(batch):
        targets[row, len(ids) :] = ignore_index
        if mask_prompt:
            targets[row, : max(prompt_lengths[row] - 1, 0)] = ignore_index
    if max_length is not None:
        input_ids, targets = input_ids[:, :max_length], targets[:, :max_length]
    return {"input_ids": input_ids.contiguous(), "targets": targets}


@dataclass(frozen=True)
class InstructCollate:
    """Collates ``(token ids, prompt length)`` items with ``collate_instruct`` (picklable)."""

    max_length: int | None = None
    mask_prompt: bool = False

    def __call__(self, items: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        return collate_instruct(
            [ids for ids, _ in items],
            [length for _, length in items],
            max_length=self.max_length,
            mask_prompt=self.mask_prompt,
        )


class EncodedInstructions(Dataset):
    """One split's encoded examples; items are ``(token ids, prompt length)``."""

    def __init__(self, examples: list[tuple[list[int], int]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.examples[index]


class InstructDataModule(ResumableDataModule):
    """Train / validation / test batches of instruction records for supervised fine-tuning.

    ``path``: a source name (``instruction-data``, resolved by ``llmprep.data.sources``), a JSON
    list or JSON-lines file (``format`` forces one), a folder holding ``train``, ``val`` (or
    ``validation``) and ``test`` files used as given, or ``hf:<dataset>`` for a Hugging Face
    hub dataset (its ``train`` split). ``fields`` renames the source keys (see ``field_names``).
    A single file or hub dataset is split in file order by ``split`` (see ``split_records``).

    ``prompt_style`` names a style in ``llmprep.stages.instruct.prompts``. Examples are cut to
    ``min(max_length, context_length)`` tokens at batching time (the book's 1024).
    ``mask_prompt`` leaves only the response (and its end token) in the loss; a training example
    whose prompt fills all those tokens then has nothing to learn and is dropped, with a warning
    that counts them (see ``_trainable``).

    Training batches are shuffled with ``seed`` and the epoch, resumably (``EpochSampler``);
    the last partial batch is dropped as in the book, unless it would be the only one.
    ``bucket`` groups training examples of similar length (``EpochSampler``'s bucketed order).
    Validation and test batches keep file order.

    ``context_length`` and ``output_dir`` come from the stage; with ``output_dir`` the splits are
    saved there as ``train.json``, ``val.json`` and ``test.json`` with the canonical field names
    (a folder that reads back as split input with the default ``fields``). The raw records stay
    available as ``train_records``, ``val_records`` and ``test_records`` for generating and
    judging responses.
    """

    def __init__(
        self,
        path: str = "instruction-data",
        format: str | None = None,
        fields: Mapping[str, str | None] | None = None,
        prompt_style: str = "alpaca",
        split: Sequence[float] = (0.85, 0.10),
        mask_prompt: bool = False,
        max_length: int | None = 1024,
        context_length: int = 1024,
        batch_size: int = 8,
        num_workers: int = 0,
        bucket: bool = False,
        seed: int = 123,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        if format is not None and format not in FORMATS:
            raise ValueError(f"data.format {format!r} is not one of {list(FORMATS)}")
        self.style = get_style(prompt_style)
        self.fields = field_names(fields)
        self.split = check_split(split)
        self.limit = truncation_limit(context_length, max_length)
        self.max_length, self.context_length = max_length, context_length
        self.path = str(path)
        self.format = format
        self.mask_prompt = mask_prompt
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.bucket = bucket
        self.seed = seed
        self.output_dir = output_dir
        self.records: dict[str, list[Record]] = {}
        self.datasets: dict[str, EncodedInstructions] = {}

    def prepare_data(self) -> None:
        """Fetch the source once: a download or mirror check, or the hub dataset into its cache."""
        if self.path.startswith(HUB_PREFIX):
            read_hub_records(self.path.removeprefix(HUB_PREFIX), self.fields)
        elif not self._is_folder():
            resolve(self.path)

    def setup(self, stage: str | None = None) -> None:
        """Read, split and encode the records, and save the splits (first call only).

        Training examples left without a target token (see ``_trainable``) are dropped here.
        """
        if self.records:
            return
        records, train_source = self._read_splits()
        for split in SPLITS:
            self.datasets[split] = EncodedInstructions(encode_records(records[split], self.style))
        self._report_lengths()
        self.datasets["train"] = self._trainable(self.datasets["train"], train_source)
        if self.output_dir is not None:
            for split in SPLITS:
                write_json_atomically(Path(self.output_dir) / f"{split}.json", records[split])
        self.records = records

    def _is_folder(self) -> bool:
        return self.path not in SOURCES and Path(self.path).expanduser().is_dir()

    def _read_splits(self) -> tuple[dict[str, list[Record]], str | Path]:
        """The records of each split, and where the training split was read from."""
        if self.path.startswith(HUB_PREFIX):
            records = read_hub_records(self.path.removeprefix(HUB_PREFIX), self.fields)
            return split_records(records, self.split, self.path), self.path
        if self._is_folder():
            files = find_split_files(Path(self.path).expanduser())
            splits = {s: read_records(files[s], self.format, self.fields) for s in SPLITS}
            return splits, files["train"]
        source = resolve(self.path)
        records = read_records(source, self.format, self.fields)
        return split_records(records, self.split, source), source

    def _report_lengths(self) -> None:
        """Log how many training examples the truncation cuts."""
        examples = self.datasets["train"].examples
        cut = sum(len(ids) > self.limit for ids, _ in examples)
        if cut:
            log.info(
                "%d of %d training examples exceed %d tokens and are cut",
                cut,
                len(examples),
                self.limit,
            )

    def _trainable(self, dataset: EncodedInstructions, source: str | Path) -> EncodedInstructions:
        """The training examples that keep a target token (``has_target``); the others are
        counted in a warning, and a split left empty is a ``DataError`` naming ``source``.

        With ``mask_prompt`` a prompt that fills all ``limit`` tokens leaves nothing to learn,
        and a batch of only such examples has a NaN loss (0 / 0 tokens) that AdamW would still
        step on. Decision: they are dropped once here, so every process and every accumulated
        step sees the same batches, rather than skipped in ``training_step``, which DDP and
        gradient accumulation do not allow. Only training is filtered: ``train_records`` and
        the saved ``train.json`` keep the split as read, and validation and test keep every
        record (their losses already skip batches without targets, and their records are
        answered).
        """
        kept = [
            (ids, prompt)
            for ids, prompt in dataset.examples
            if has_target(len(ids), prompt, self.limit, self.mask_prompt)
        ]
        dropped = len(dataset) - len(kept)
        settings = (
            f"data.max_length={self.max_length}, context_length="
            f"{self.context_length}, data.mask_prompt={self.mask_prompt}"
        )
        if dropped and not kept:
            raise DataError(
                source,
                None,
                None,
                f"all {dropped} training examples have no target token: their prompts fill "
                f"all {self.limit} tokens ({settings}); raise data.max_length or the model's "
                "context, or set data.mask_prompt=false",
            )
        if dropped:
            log.warning(
                "%d of %d training examples have no target token and are dropped: their "
                "prompts fill all %d tokens (%s)",
                dropped,
                len(dataset),
                self.limit,
                settings,
            )
        return EncodedInstructions(kept)

    def _ready(self) -> None:
        if not self.records:
            raise RuntimeError("InstructDataModule: call setup() before reading its data")

    @property
    def train_records(self) -> list[Record]:
        """The training split's records (``instruction``, ``input``, ``output``)."""
        self._ready()
        return self.records["train"]

    @property
    def val_records(self) -> list[Record]:
        """The validation split's records."""
        self._ready()
        return self.records["val"]

    @property
    def test_records(self) -> list[Record]:
        """The test split's records, the ones responses are generated and judged for."""
        self._ready()
        return self.records["test"]

    def _collate(self) -> InstructCollate:
        return InstructCollate(max_length=self.limit, mask_prompt=self.mask_prompt)

    def train_dataloader(self) -> ResumableLoader:
        """Training batches in an order drawn from ``seed + epoch`` (length-bucketed with
        ``bucket``), resumable mid-epoch (``EpochSampler``)."""
        self._ready()
        dataset = self.datasets["train"]
        lengths = [len(ids) for ids, _ in dataset.examples] if self.bucket else None
        sampler = EpochSampler(len(dataset), self.seed, self.batch_size, lengths)
        loader = ResumableLoader(
            dataset,
            sampler,
            self.batch_size,
            drop_last=len(dataset) > self.batch_size,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
        )
        return self.resume_loader(loader)

    def _eval_loader(self, split: str) -> DataLoader:
        self._ready()
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self._eval_loader("test")
