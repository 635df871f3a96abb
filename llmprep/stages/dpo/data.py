"""Preference records for the ``dpo`` stage: read, split, check, encode and batch them.

The default source is the book's ``instruction-data-with-preference.json`` (1,100 records with
``instruction``, ``input``, ``output``, ``chosen`` and ``rejected``), split in file order
85 / 10 / 5 into train / test / val exactly as the book does: 935 / 110 / 55. Any JSON, JSONL,
CSV or Parquet file the shared record reader takes works too, with configurable field names.

DPO builds on instruction tuning, as in the book: a prompt is the record in an instruct prompt
style and each response is encoded and batched as the ``instruct`` stage encodes and batches its
outputs (``encode_records``, ``collate_instruct`` with the prompt masked), so the pieces are
imported from ``llmprep.stages.instruct`` rather than written again.

A batch is ``{"input_ids": LongTensor[2B, T], "targets": LongTensor[2B, T]}``: the ``B`` chosen
sequences, then the ``B`` rejected ones, padded together so that one forward pass scores both.
Targets outside the responses (prompt, padding after the end token) hold ``-100``; each response
keeps its end token, which the instruct stage taught the model to write.

Bad records, decided per case:

* a record missing ``chosen`` or ``rejected`` (or holding a non-string there), and an empty or
  blank ``instruction``, ``chosen`` or ``rejected``: one ``DataError`` naming the file, the
  record and the field (the shared reader's checks);
* ``chosen`` identical to ``rejected``: skipped, with a warning that counts them and names the
  first records. Such a pair states no preference: its DPO gradient is zero without dropout and
  noise with it, and it can only lower the reward accuracy. The book's file holds six of them,
  so an error would refuse the book's own data;
* a pair whose chosen or rejected response is cut away entirely by ``max_length`` (its prompt
  fills every position): skipped with a warning count, in every split (its log-probability would
  be 0 / 0); a split left with no pair is a ``DataError``.

The splits are cut before anything is skipped, so the book's file keeps the book's 935 / 110 / 55
records; ``records`` and the saved split files hold the records as read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from llmprep.checkpoints import read_checkpoint
from llmprep.data import records
from llmprep.data.errors import DataError
from llmprep.data.records import Place, Record
from llmprep.data.resumable import ResumableLoader
from llmprep.stages.instruct.data import (
    RecordsDataModule,
    collate_instruct,
    encode_records,
    has_target,
)
from llmprep.stages.instruct.prompts import PromptStyle, get_style

log = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output", "chosen", "rejected")
NONBLANK = ("instruction", "chosen", "rejected")
DEFAULT_STYLE = "alpaca"

Pair = tuple[list[int], int, list[int], int]
"""One encoded pair: chosen ids (prompt + response), prompt length, rejected ids, prompt length."""


def checkpoint_style(init_from: str | None) -> str:
    """The prompt style a run starting from ``init_from`` prompts in: the style one of our
    instruct (or dpo) checkpoints was tuned in, stored as its ``prompt_style`` hyperparameter;
    ``alpaca`` (the book's) for any other start, a hub model or a pretraining checkpoint."""
    if init_from is None or not str(init_from).endswith(".ckpt"):
        return DEFAULT_STYLE
    stored = read_checkpoint(init_from).get("hyper_parameters", {}).get("prompt_style")
    return stored if isinstance(stored, str) else DEFAULT_STYLE


def encode_pairs(examples: Sequence[Record], style: PromptStyle) -> list[Pair]:
    """The chosen and rejected token ids of each record, each with its prompt's length, encoded
    as the instruct stage encodes an output (``encode_records``)."""
    chosen = encode_records([{**r, "output": r["chosen"]} for r in examples], style)
    rejected = encode_records([{**r, "output": r["rejected"]} for r in examples], style)
    return [(c, cp, r, rp) for (c, cp), (r, rp) in zip(chosen, rejected, strict=True)]


def collate_pairs(pairs: Sequence[Pair], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """One batch of ``pairs``: the chosen sequences, then the rejected ones, through
    ``collate_instruct`` with the prompt masked (the shared padding width keeps the two halves
    aligned), cut to ``max_length`` columns."""
    ids = [p[0] for p in pairs] + [p[2] for p in pairs]
    lengths = [p[1] for p in pairs] + [p[3] for p in pairs]
    return collate_instruct(ids, lengths, max_length, mask_prompt=True)


@dataclass(frozen=True)
class PairCollate:
    """Collates encoded pairs with ``collate_pairs`` (picklable, for loader workers)."""

    max_length: int | None = None

    def __call__(self, pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
        return collate_pairs(pairs, self.max_length)


def _described(places: Sequence[Place], shown: int = 3) -> str:
    """``records 4, 17, 230 of /data/file.json`` for the first ``shown`` places."""
    indices = ", ".join(str(p.index) for p in places[:shown])
    more = f" (and {len(places) - shown} more)" if len(places) > shown else ""
    return f"record{'s' if len(places) > 1 else ''} {indices}{more} of {places[0].path}"


class PreferenceDataModule(RecordsDataModule):
    """Train / val / test batches of preference pairs for DPO.

    ``path``: a source name (``instruction-data-with-preference``), a file that
    ``llmprep.data.records`` reads (``format`` forces one), a folder holding ``train``, ``val``
    (or ``validation``) and ``test`` files used as given, or ``hf:<dataset>``. ``fields`` renames
    the source keys (``field_names``). A single file is split in file order by ``split``, the
    ``[train, test]`` fractions.

    ``prompt_style``: a style of ``llmprep.stages.instruct.prompts``, or ``None`` for the style
    ``init_from`` was instruction-tuned in (``checkpoint_style``): DPO must prompt the model the
    way it learned to follow instructions. Sequences are cut to ``min(max_length,
    context_length)`` tokens. The last partial training batch is dropped as in the instruct
    stage, unless it would be the only one.

    ``context_length`` and ``output_dir`` come from the stage; with ``output_dir`` the splits are
    saved there as ``train.json``, ``val.json`` and ``test.json``. See the module docstring for
    what happens to bad records.
    """

    FIELDS = FIELDS
    NULLABLE = ("input", "output")

    def __init__(
        self,
        path: str = "instruction-data-with-preference",
        prompt_style: str | None = None,
        init_from: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(path, get_style(prompt_style or checkpoint_style(init_from)), **settings)
        self.datasets: dict[str, list[Pair]] = {}

    def _read(self, source: str | Path) -> list[tuple[Place, Record]]:
        places, rows = records.read_records(source, self.fields, self.format, nonblank=NONBLANK)
        return list(zip(places, rows, strict=True))

    def setup(self, stage: str | None = None) -> None:
        """Read, split, check and encode the records, and save the splits (first call only)."""
        if self.records:
            return
        splits, _ = records.read_splits(self.path, self._read, self.fractions)
        for split, part in splits.items():
            self.datasets[split] = self._usable(split, part)
        self.records = {split: [row for _, row in part] for split, part in splits.items()}
        if self.output_dir is not None:
            records.write_splits(self.records, self.output_dir, ".json")

    def _usable(self, split: str, part: Sequence[tuple[Place, Record]]) -> list[Pair]:
        """The encoded pairs of one split that DPO can score: identical pairs and pairs with a
        response cut away entirely are counted in a warning and skipped; none left is a
        ``DataError`` naming the source."""
        distinct = [(place, row) for place, row in part if row["chosen"] != row["rejected"]]
        if identical := [place for place, row in part if row["chosen"] == row["rejected"]]:
            log.warning(
                "%d of %d %s pairs have identical chosen and rejected responses and are "
                "skipped: %s",
                len(identical),
                len(part),
                split,
                _described(identical),
            )
        pairs = encode_pairs([row for _, row in distinct], self.style)
        limit = self.limit
        scored = [
            has_target(len(c), cp, limit, True) and has_target(len(r), rp, limit, True)
            for c, cp, r, rp in pairs
        ]
        kept = [pair for pair, ok in zip(pairs, scored, strict=True) if ok]
        if gone := [place for (place, _), ok in zip(distinct, scored, strict=True) if not ok]:
            log.warning(
                "%d of %d %s pairs lose a whole response to truncation and are skipped: their "
                "prompts fill all %d tokens (data.max_length=%s, context_length=%d); %s",
                len(gone),
                len(part),
                split,
                limit,
                self.max_length,
                self.context_length,
                _described(gone),
            )
        if not kept:
            source = part[0][0].path if part else self.path
            raise DataError(source, None, None, f"the {split} split has no pair left to score")
        return kept

    def task_settings(self) -> dict[str, Any]:
        """The prompt style the task trains and answers in."""
        return {"prompt_style": self.style.name}

    def train_dataloader(self) -> ResumableLoader:
        """Training batches in an order drawn from ``seed + epoch``, resumable mid-epoch."""
        dataset = self.datasets["train"]
        drop_last = len(dataset) > self.batch_size
        return self.train_loader(dataset, PairCollate(self.limit), drop_last)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order."""
        return self.eval_loader(self.datasets["val"], PairCollate(self.limit))

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order."""
        return self.eval_loader(self.datasets["test"], PairCollate(self.limit))
