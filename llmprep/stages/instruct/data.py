"""Instruction records for the ``instruct`` stage: read, split, encode and batch them.

The default source is the book's chapter 7 ``instruction-data.json`` (1,100 records with
``instruction``, ``input`` and ``output``), split in file order 85 / 10 / 5 into train / test /
val exactly as the book does: 935 / 110 / 55. Other sources: see ``InstructDataModule``.

A batch is ``{"input_ids": LongTensor[B, T], "targets": LongTensor[B, T]}`` built by
``collate_instruct`` with the book's ``custom_collate_fn`` rules; targets the loss must skip hold
``-100``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from llmprep.data import records
from llmprep.data.errors import DataError
from llmprep.data.records import Record
from llmprep.data.resumable import ResumableDataModule, ResumableLoader
from llmprep.data.windows import truncation_limit
from llmprep.model.gpt import IGNORE_INDEX
from llmprep.stages.instruct.prompts import PromptStyle, get_style
from llmprep.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")


def field_names(
    fields: Mapping[str, str | None] | None = None,
    known: Sequence[str] = FIELDS,
    nullable: Sequence[str] = ("input",),
) -> dict[str, str | None]:
    """Which key of a source record holds each of the ``known`` fields (``instruction``,
    ``input`` and ``output`` here; the dpo stage adds its pair).

    Unnamed fields keep their own name. A ``nullable`` field may map to ``None`` for data
    without that column (``input`` here: every input is then empty).
    """
    names: dict[str, str | None] = {name: name for name in known}
    for name, key in (fields or {}).items():
        if name not in known:
            raise ValueError(f"data.fields: unknown field {name!r}; the fields are {list(known)}")
        if key is None and name not in nullable:
            raise ValueError(
                f"data.fields.{name} must name a key; only {' and '.join(nullable)} may be null"
            )
        names[name] = key
    return names


def encode_records(examples: Sequence[Record], style: PromptStyle) -> list[tuple[list[int], int]]:
    """``(token ids of prompt + response, prompt token count)`` for each record of ``examples``.

    Prompt and response are encoded separately and joined, so the prompt's tokens are exactly
    the ones generation later starts from and the prompt/response boundary is a token boundary;
    on the book's 1,100 records this gives the same ids as encoding the whole text (all three
    styles). ``<|endoftext|>`` written inside a record is encoded as plain text, so a record
    cannot end itself early.
    """
    texts = [style.format_example(r) for r in examples]
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode_ordinary_batch([prompt for prompt, _ in texts])
    response_ids = tokenizer.encode_ordinary_batch([response for _, response in texts])
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
    max_length: int | None = None,
    mask_prompt: bool = False,
) -> dict[str, torch.Tensor]:
    """The book's instruction batch: ``input_ids`` and shifted ``targets``.

    Each example gets one ``<|endoftext|>`` appended as its end token and is padded with it to
    the longest example + 1; ``input_ids`` drop the last column and ``targets`` the first.
    Every padding target after the end token becomes ``IGNORE_INDEX``, so the model learns to
    emit the end token once. The padding is found by position, not by value, so an end-token id
    inside an example is never masked. ``mask_prompt`` also ignores the targets that predict
    prompt tokens: target ``j`` predicts token ``j + 1``, so for a prompt of ``p`` tokens
    ``targets[:p - 1]`` are ignored and the first response token is still learned. Finally both
    are cut to ``max_length`` columns (``None``: no cut).
    """
    if not batch:
        raise ValueError("collate_instruct needs at least one example")
    if mask_prompt and prompt_lengths is None:
        raise ValueError("mask_prompt=True needs the prompt_lengths")
    if prompt_lengths is not None and len(prompt_lengths) != len(batch):
        raise ValueError(f"{len(prompt_lengths)} prompt lengths for {len(batch)} examples")
    width = max(len(ids) for ids in batch) + 1
    padded = torch.full((len(batch), width), get_tokenizer().eot_id, dtype=torch.long)
    for row, ids in enumerate(batch):
        padded[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    input_ids = padded[:, :-1]
    targets = padded[:, 1:].clone()
    for row, ids in enumerate(batch):
        targets[row, len(ids) :] = IGNORE_INDEX
        if mask_prompt:
            targets[row, : max(prompt_lengths[row] - 1, 0)] = IGNORE_INDEX
    if max_length is not None:
        input_ids, targets = input_ids[:, :max_length], targets[:, :max_length]
    return {"input_ids": input_ids.contiguous(), "targets": targets}


@dataclass(frozen=True)
class InstructCollate:
    """Collates ``(token ids, prompt length)`` items with ``collate_instruct`` (picklable)."""

    max_length: int | None = None
    mask_prompt: bool = False

    def __call__(self, items: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        ids, lengths = [ids for ids, _ in items], [length for _, length in items]
        return collate_instruct(ids, lengths, self.max_length, self.mask_prompt)


class RecordsDataModule(ResumableDataModule):
    """What the data modules of instruction records share (this stage's and dpo's), settings
    a subclass takes as its ``**settings``: ``fields`` renames the source keys of the class's
    ``FIELDS`` (``field_names``; those in ``NULLABLE`` may be null), ``format`` forces a file
    format, ``split`` is the ``[train, test]`` fractions, examples are cut to
    ``min(max_length, context_length)`` tokens, and ``batch_size``, ``num_workers``, ``seed`` and
    ``output_dir`` are ``ResumableDataModule``'s. The records by split land in ``records``."""

    FIELDS: tuple[str, ...] = FIELDS
    NULLABLE: tuple[str, ...] = ("input",)

    def __init__(
        self,
        path: str,
        style: PromptStyle,
        fields: Mapping[str, str | None] | None = None,
        format: str | None = None,
        split: Sequence[float] = (0.85, 0.10),
        max_length: int | None = 1024,
        context_length: int = 1024,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 123,
        output_dir: str | None = None,
    ) -> None:
        super().__init__(output_dir, batch_size, num_workers, seed)
        if len(split) != 2:
            raise ValueError(f"data.split is [train fraction, test fraction], got {list(split)}")
        self.style = style
        self.fields = field_names(fields, self.FIELDS, self.NULLABLE)
        self.fractions = records.check_fractions(
            {"train": split[0], "test": split[1]}, "data.split"
        )
        self.limit = truncation_limit(context_length, max_length)
        self.max_length, self.context_length = max_length, context_length
        self.path = str(path)
        self.format = format
        self.records: dict[str, list[Record]] = {}

    def prepare_data(self) -> None:
        """Fetch the source once: a download or mirror check, or the hub dataset into its cache."""
        records.fetch(self.path)


class InstructDataModule(RecordsDataModule):
    """Train / val / test batches of instruction records for supervised fine-tuning.

    ``path``: a source name (``instruction-data``, resolved by ``llmprep.data.sources``), a file
    that ``llmprep.data.records`` reads (``format`` forces one), a folder holding ``train``,
    ``val`` (or ``validation``) and ``test`` files used as given, or ``hf:<dataset>`` for a
    Hugging Face hub dataset (its ``train`` split). ``fields`` renames the source keys (see
    ``field_names``). A single file or hub dataset is split in file order by ``split``, the
    ``[train, test]`` fractions (see ``split_records``).

    ``prompt_style`` names a style in ``llmprep.stages.instruct.prompts``. Examples are cut to
    ``min(max_length, context_length)`` tokens at batching time (the book's 1024).
    ``mask_prompt`` leaves only the response (and its end token) in the loss; a training example
    whose prompt fills all those tokens then has nothing to learn and is dropped, with a warning
    that counts them (see ``_trainable``).

    ``bucket`` groups training examples of similar length (``EpochSampler``'s bucketed order);
    the last partial training batch is dropped as in the book, unless it would be the only one.

    ``context_length`` and ``output_dir`` come from the stage; with ``output_dir`` the splits are
    saved there as ``train.json``, ``val.json`` and ``test.json`` with the canonical field names
    (a folder that reads back as split input with the default ``fields``). The raw records stay
    available in ``records`` by split: validation answers a few ``val`` records, and the
    ``test`` records are answered and judged.
    """

    def __init__(
        self,
        path: str = "instruction-data",
        prompt_style: str = "alpaca",
        mask_prompt: bool = False,
        bucket: bool = False,
        **settings: Any,
    ) -> None:
        super().__init__(path, get_style(prompt_style), **settings)
        self.mask_prompt = mask_prompt
        self.bucket = bucket
        # Each split's ``(token ids, prompt length)`` items, a dataset as DataLoader takes it.
        self.datasets: dict[str, list[tuple[list[int], int]]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Read, split and encode the records, and save the splits (first call only).

        Training examples left without a target token (see ``_trainable``) are dropped here.
        Length bucketing is refused with more than one process: the bucketed order is cut into
        batches for one process, and split across ranks each rank's batch would mix buckets.
        """
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.bucket and world_size > 1:
            raise ValueError(
                f"data.bucket=true works with one process only, but this run has {world_size}; "
                "set data.bucket=false for multi-device training"
            )
        if self.records:
            return
        # Empty strings are accepted: an empty input is the common case, and whether an empty
        # output is a mistake depends on the data.
        splits, train_source = records.read_splits(
            self.path,
            lambda path: records.read_records(path, self.fields, self.format)[1],
            self.fractions,
        )
        for split, part in splits.items():
            self.datasets[split] = encode_records(part, self.style)
        self.datasets["train"] = self._trainable(self.datasets["train"], train_source)
        if self.output_dir is not None:
            records.write_splits(splits, self.output_dir, ".json")
        self.records = splits

    def _trainable(
        self, examples: list[tuple[list[int], int]], source: str | Path
    ) -> list[tuple[list[int], int]]:
        """The training examples that keep a target token (``has_target``); the others are
        counted in a warning, and a split left empty is a ``DataError`` naming ``source``. How
        many examples the truncation cuts is logged.

        With ``mask_prompt`` a prompt that fills all ``limit`` tokens leaves nothing to learn,
        and a batch of only such examples has a NaN loss (0 / 0 tokens) that AdamW would still
        step on. Decision: they are dropped once here, so every process and every accumulated
        step sees the same batches, rather than skipped in ``training_step``, which DDP and
        gradient accumulation do not allow. Only training is filtered: ``records["train"]`` and
        the saved ``train.json`` keep the split as read, and val and test keep every record
        (their losses already skip batches without targets, and their records are answered).
        """
        total, limit = len(examples), self.limit
        cut = sum(len(ids) > limit for ids, _ in examples)
        if cut:
            log.info("%d of %d training examples exceed %d tokens and are cut", cut, total, limit)
        kept = [(ids, p) for ids, p in examples if has_target(len(ids), p, limit, self.mask_prompt)]
        dropped = total - len(kept)
        why = (
            f"their prompts fill all {limit} tokens (data.max_length={self.max_length}, "
            f"context_length={self.context_length}, data.mask_prompt={self.mask_prompt})"
        )
        if dropped and not kept:
            fix = "raise data.max_length or the model's context, or set data.mask_prompt=false"
            message = f"all {dropped} training examples have no target token: {why}; {fix}"
            raise DataError(source, None, None, message)
        if dropped:
            log.warning(
                "%d of %d training examples have no target token and are dropped: %s",
                dropped,
                total,
                why,
            )
        return kept

    def task_settings(self) -> dict[str, Any]:
        """The prompt style the task trains and answers in."""
        return {"prompt_style": self.style.name}

    def _collate(self) -> InstructCollate:
        return InstructCollate(max_length=self.limit, mask_prompt=self.mask_prompt)

    def train_dataloader(self) -> ResumableLoader:
        """Training batches in an order drawn from ``seed + epoch`` (length-bucketed with
        ``bucket``), resumable mid-epoch (``EpochSampler``)."""
        dataset = self.datasets["train"]
        lengths = [len(ids) for ids, _ in dataset] if self.bucket else None
        drop_last = len(dataset) > self.batch_size
        return self.train_loader(dataset, self._collate(), drop_last, lengths)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self.eval_loader(self.datasets["val"], self._collate())

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self.eval_loader(self.datasets["test"], self._collate())
