r"""A corpus tokenized once into a uint16 memmap in the cache, reused while its files are unchanged.

Layout: ``cache_dir()/tokens/<key>.bin`` holds the token ids (native uint16, GPT-2's 50,257 ids
fit) and ``<key>.json`` the metadata. The key derives from the absolute source paths and the
tokenizer name, so each corpus has one store that is rebuilt in place when a source changes.

Files are read in chunks, encoded in batches on two threads (tiktoken releases the GIL), so a
corpus of many GB never sits in memory. A chunk may only end where cutting cannot change the
tokens. GPT-2 (as tiktoken implements it) first splits text with the regex

    '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s

and byte-pair-encodes each piece on its own, so a cut is safe when (a) the pieces of the whole
text have a boundary there and (b) matching each side alone finds the same pieces. Between a
non-whitespace and a whitespace character both hold: every alternative is either all
whitespace or holds whitespace only as one optional leading space, so no piece spans that
point; the piece ending at the non-whitespace character never depends on what follows (its
character classes stop there just as at the end of the text, and the whitespace-only
alternatives with ``$`` or a look-ahead cannot match it); and the regex has no look-behind, so
the right side is matched from the same state. The tempting "after a newline followed by text"
is NOT safe: the whole of ``"a\n\n\n\nB"`` splits as ``\n\n\n | \n | B`` (tokens 628 198 198)
but ``"a\n\n\n\n"`` alone as ``\n\n\n\n`` (``\s++$``, tokens 628 628). The non-whitespace side is
tested with Python's ``\S`` (Python's whitespace is a superset of Unicode's ``White_Space``, so
this errs on the safe side), the whitespace side with ASCII whitespace only.

Text is decoded as strict UTF-8 with universal newlines (``\r\n`` reads as ``\n``), exactly as
the book's ``open(path, encoding="utf-8").read()``, so token counts match the book's.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from llmprep.data.sources import cache_dir
from llmprep.files import atomic_path, file_sha256, write_json_atomically
from llmprep.tokenizer import get_tokenizer

FORMAT_VERSION = 2
"""Bumped whenever the same sources would give other tokens, so stores built before are rebuilt
(2: blank documents no longer add an end-of-text id)."""
DTYPE = "uint16"
CHUNK_CHARS = 1 << 20
NUM_THREADS = 2
_CHUNKS_PER_BATCH = 8
_SAFE_CUT_REVERSED = re.compile(r"[ \t\n\r\f\v]\S")


@dataclass
class TokenStore:
    """A built token store: the ``.bin`` file of token ids and its metadata."""

    bin_path: Path
    meta: dict[str, Any]

    @property
    def tokens(self) -> np.memmap:
        """The token ids, mapped read-only from disk (each access maps the file anew: keep it)."""
        return np.memmap(self.bin_path, dtype=np.dtype(DTYPE), mode="r", shape=(len(self),))

    def __len__(self) -> int:
        return int(self.meta["num_tokens"])


def build_token_store(
    paths: Sequence[str | Path], tokenizer_name: str = "gpt2", *, chunk_chars: int = CHUNK_CHARS
) -> TokenStore:
    """The token store of ``paths`` (one document per file, or per line of a ``.jsonl`` file),
    built only when needed.

    Documents are joined by the tokenizer's end-of-text id (between documents, not after the
    last); blank documents are skipped (``is_blank``); a literal ``<|endoftext|>`` inside a file
    is ordinary text. An existing store is reused while every source keeps its size and mtime,
    or, when only the mtime moved, its sha256; otherwise it is rebuilt. ``chunk_chars`` is the
    read size in bytes (the tokens do not depend on it).

    Writes are atomic: the old metadata is removed first, the ``.bin`` is renamed into place,
    and the ``.json`` last, so an interrupted build never leaves a store that looks complete;
    concurrent builders each write their own temporary files and the last rename wins.
    """
    if not paths:
        raise ValueError("build_token_store needs at least one source file")
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be a positive integer, got {chunk_chars!r}")
    files = [Path(p).expanduser().resolve() for p in paths]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"corpus file {file} does not exist or is not a file")
    tokenizer = get_tokenizer(tokenizer_name)
    if tokenizer.vocab_size > np.iinfo(DTYPE).max + 1:
        raise ValueError(
            f"tokenizer {tokenizer_name!r} has {tokenizer.vocab_size} ids, more than {DTYPE} holds"
        )
    folder = cache_dir() / "tokens"  # created by atomic_path when a store is built
    # The key: a readable prefix (the first file's stem), a digest of the paths and tokenizer.
    identity = json.dumps([tokenizer_name, [str(f) for f in files]]).encode()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", files[0].stem)[:40]
    key = f"{stem}-{hashlib.sha256(identity).hexdigest()[:16]}"
    bin_path, json_path = folder / f"{key}.bin", folder / f"{key}.json"
    store = _unchanged_store(bin_path, json_path, files, tokenizer_name)
    if store is not None:
        return store
    sources = [_fingerprint(f) for f in files]
    num_tokens = 0
    with atomic_path(bin_path) as temp, open(temp, "wb") as out:
        segments = _segments(files, chunk_chars)
        while batch := list(islice(segments, _CHUNKS_PER_BATCH)):
            texts = [segment for segment in batch if segment is not None]
            encoded = iter(tokenizer.encode_ordinary_batch(texts, num_threads=NUM_THREADS))
            for segment in batch:
                ids = [tokenizer.eot_id] if segment is None else next(encoded)
                np.asarray(ids, dtype=DTYPE).tofile(out)
                num_tokens += len(ids)
        if num_tokens == 0:
            raise ValueError(f"the corpus holds no text: {', '.join(map(str, files))}")
        json_path.unlink(missing_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_name,
        "dtype": DTYPE,
        "num_tokens": num_tokens,
        "eot_id": tokenizer.eot_id,
        "sources": sources,
    }
    write_json_atomically(json_path, meta)
    return TokenStore(bin_path, meta)


def split_tokens(tokens: np.ndarray, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The first ``train_fraction`` of the tokens and the rest, as views (no copies); 1.0
    leaves an empty validation part."""
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction!r}")
    cut = int(train_fraction * len(tokens))
    return tokens[:cut], tokens[cut:]


def _fingerprint(file: Path) -> dict[str, Any]:
    stat = file.stat()
    return {
        "path": str(file),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": file_sha256(file),
    }


def _unchanged_store(
    bin_path: Path, json_path: Path, files: Sequence[Path], tokenizer_name: str
) -> TokenStore | None:
    """The existing store when it is complete and its sources are unchanged, else ``None``
    (also for unreadable or foreign metadata). A moved mtime whose sha256 did not change is
    refreshed, so the next check is fast again."""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        recorded = meta["sources"]
        if (
            meta["format_version"] != FORMAT_VERSION
            or meta["tokenizer"] != tokenizer_name
            or meta["dtype"] != DTYPE
            or [entry["path"] for entry in recorded] != [str(f) for f in files]
            or bin_path.stat().st_size != meta["num_tokens"] * np.dtype(DTYPE).itemsize
        ):
            return None
        refreshed = False
        for entry, file in zip(recorded, files, strict=True):
            stat = file.stat()
            if stat.st_size != entry["size"]:
                return None
            if stat.st_mtime_ns != entry["mtime_ns"]:
                if file_sha256(file) != entry["sha256"]:
                    return None
                entry["mtime_ns"] = stat.st_mtime_ns
                refreshed = True
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if refreshed:
        write_json_atomically(json_path, meta)
    return TokenStore(bin_path, meta)


def is_blank(text: str) -> bool:
    """True for a document that holds nothing but whitespace (Python's ``str.isspace``), or
    nothing at all.

    Decision: such a document is skipped, not stored. Empty rows are common in hub datasets and
    empty files slip into globs; storing them would teach the model that an empty document (two
    ``<|endoftext|>`` in a row) is likely. Whitespace inside a real document is kept as is.
    """
    return not text or text.isspace()


def _segments(files: Sequence[Path], chunk_chars: int) -> Iterator[str | None]:
    """The text chunks of every non-blank document (``is_blank``), with ``None`` marking each
    boundary between two of them; a document is read ahead only up to its first chunk that is
    not blank, so it is still streamed."""
    first = True
    for file in files:
        for document in _documents(file, chunk_chars):
            chunks = iter(document)
            head: list[str] = []
            for chunk in chunks:
                head.append(chunk)
                if not is_blank(chunk):
                    if not first:
                        yield None
                    first = False
                    yield from head
                    yield from chunks
                    break


def _documents(file: Path, chunk_chars: int) -> Iterator[Iterable[str]]:
    """The documents of one file: the whole text, or each record's ``text`` of a ``.jsonl`` file
    (a downloaded hub dataset, a scraped corpus), each with its own end-of-text separators."""
    if file.suffix != ".jsonl":
        yield _text_chunks(file, chunk_chars)
        return
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{file}, line {number}: expected a JSON object with a string `text` ({err})"
                ) from None
            if not isinstance(text, str):
                raise ValueError(
                    f"{file}, line {number}: `text` is {type(text).__name__}, not a string"
                )
            yield [text]


def _text_chunks(file: Path, chunk_chars: int) -> Iterator[str]:
    """The file's text in pieces that each end at a safe cut (see the module docstring), decoded
    as text mode would (``IncrementalNewlineDecoder`` is what ``open`` uses), but counting bytes,
    so an invalid byte is named by its offset."""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    decoder = io.IncrementalNewlineDecoder(utf8, translate=True)
    carry, offset = "", 0
    with open(file, "rb") as f:
        while True:
            block = f.read(chunk_chars)
            try:
                text = carry + decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                byte = offset - len(utf8.getstate()[0]) + err.start
                raise ValueError(
                    f"corpus file {file} is not valid UTF-8: {err.reason} at byte {byte}"
                ) from None
            if not block:
                break
            offset += len(block)
            cut = _last_safe_cut(text, max(len(carry) - 1, 0))
            if cut:
                yield text[:cut]
            carry = text[cut:]
    if text:
        yield text


def _last_safe_cut(text: str, start: int) -> int:
    """The last index after ``start`` between a non-space and a space character, or 0."""
    match = _SAFE_CUT_REVERSED.search(text[start:][::-1])
    return 0 if match is None else len(text) - 1 - match.start()
