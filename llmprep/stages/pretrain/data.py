"""Pretraining data: a corpus tokenized once into the token store, sampled as sliding windows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from llmprep.data.resumable import ResumableDataModule, ResumableLoader
from llmprep.data.sources import resolve_many, resolve_named
from llmprep.data.token_store import build_token_store, is_blank, split_tokens
from llmprep.data.windows import TokenWindows
from llmprep.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


class PretrainDataModule(ResumableDataModule):
    """Next-token windows over a corpus of text files, source names, globs or a hub dataset.

    ``split_by="tokens"`` (default) splits the token store's stream, which never loads the corpus
    into memory. ``split_by="characters"`` splits the text first and tokenizes each part, as the
    book's chapter 5 does; it reads the whole corpus into memory, so use it for small corpora.
    ``max_length`` defaults to the model's context and is capped by it (a corpus config can ask
    for shorter windows than large models allow); ``stride`` defaults to ``max_length``.

    Training windows come in an order drawn from ``seed + epoch`` (``EpochSampler``), and the
    loader's position is saved in checkpoints, so a resumed run sees the same windows in the same
    order as an uninterrupted one; the last partial batch is dropped.

    Testing scores the validation split and each of ``test_files`` (sources, files or globs,
    e.g. ``evaluate.py``'s ``eval.files``), windowed like the training data.
    """

    def __init__(
        self,
        paths: Sequence[str] = ("the-verdict",),
        context_length: int = 1024,
        max_length: int | None = None,
        stride: int | None = None,
        train_fraction: float = 0.9,
        split_by: str = "tokens",
        batch_size: int = 8,
        num_workers: int = 0,
        hf_dataset: str | None = None,
        hf_config: str | None = None,
        hf_split: str = "train",
        hf_text_field: str = "text",
        seed: int = 123,
        test_files: Sequence[str] = (),
        output_dir: str | None = None,
    ) -> None:
        super().__init__(output_dir, batch_size, num_workers, seed)
        if split_by not in {"tokens", "characters"}:
            raise ValueError(f"data.split_by={split_by!r}: expected 'tokens' or 'characters'")
        if not paths and not hf_dataset:
            raise ValueError("data.paths is empty: name a source, a file or a glob")
        self.paths = list(paths)
        self.max_length = min(max_length or context_length, context_length)
        if max_length and max_length > context_length:
            log.info(
                "data.max_length=%d capped at the model's context of %d", max_length, context_length
            )
        self.stride = stride or self.max_length
        self.train_fraction = train_fraction
        self.split_by = split_by
        self.hf = (hf_dataset, hf_config, hf_split, hf_text_field) if hf_dataset else None
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None
        self.test_files = resolve_named(list(test_files))

    def _files(self) -> list[Path]:
        files = resolve_many(self.paths)
        if self.hf is not None:
            from llmprep.data.hub import hub_text_file

            files.append(hub_text_file(*self.hf))
        return files

    def prepare_data(self) -> None:
        files = self._files()
        if self.split_by == "tokens":
            build_token_store(files)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files = self._files()
        if self.split_by == "tokens":
            train, val = split_tokens(build_token_store(files).tokens, self.train_fraction)
        else:
            train, val = self._split_characters(files)
        self.train_set = TokenWindows(train, self.max_length, self.stride, "training split")
        self.val_set = (
            TokenWindows(val, self.max_length, self.stride, "validation split")
            if len(val)
            else None
        )

    def _split_characters(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """The first ``train_fraction`` of the characters of all documents, and the rest, each
        tokenized like the token store does (text as ordinary text, one end-of-text id between
        documents, blank documents skipped), so both splits agree on what a literal
        ``<|endoftext|>`` in a file means and the fraction is one of the real text."""
        for file in files:
            if file.suffix == ".jsonl":
                raise ValueError(
                    f"data.split_by=characters splits plain text files, but {file} is JSON Lines "
                    "(as hub datasets are stored): use data.split_by=tokens"
                )
        documents = [text for f in files if not is_blank(text := f.read_text(encoding="utf-8"))]
        cut = int(self.train_fraction * sum(len(d) for d in documents))
        train, val, seen = [], [], 0
        for doc in documents:
            split = min(max(cut - seen, 0), len(doc))
            if split:
                train.append(doc[:split])
            if split < len(doc):
                val.append(doc[split:])
            seen += len(doc)
        return _encode_documents(train), _encode_documents(val)

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled training windows, resumable mid-epoch."""
        return self.train_loader(self.train_set)

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The validation split (when the run has one), then each test file by the name it was
        given by (``tinyshakespeare``, not its resolved path)."""
        return ("val",) * (self.val_set is not None) + tuple(self.test_files)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self.eval_loader(self.val_set)

    def test_dataloader(self) -> list[DataLoader]:
        sets = [self.val_set] if self.val_set is not None else []
        for name, path in self.test_files.items():
            tokens = np.asarray(build_token_store([path]).tokens)
            sets.append(TokenWindows(tokens, self.max_length, self.stride, name))
        if not sets:
            raise ValueError("nothing to test: the run has no validation split and no test files")
        return [self.eval_loader(windows) for windows in sets]


def _encode_documents(documents: Sequence[str]) -> np.ndarray:
    """Token ids of ``documents`` joined by one end-of-text id each, their text as plain text."""
    tok = get_tokenizer()
    ids = [t for tokens in tok.encode_ordinary_batch(documents) for t in (tok.eot_id, *tokens)]
    return np.asarray(ids[1:], dtype=np.int64)
