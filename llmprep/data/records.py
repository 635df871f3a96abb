"""One reader for labelled and instruction records, one split vocabulary and one split function.

The ``classify`` and ``instruct`` stages read their records here: from a CSV or TSV file, a JSON
list, JSON lines, a Parquet file or a Hugging Face hub dataset (``hf:<name>``), or from a folder
already split into one such file per split (``split_files``). This module picks each record's
fields, checks their values and reports every problem as one ``DataError`` naming the file, the
line where the record starts (in the formats with lines) and the field. The splits are
``train``, ``val`` and ``test`` everywhere (``SPLITS``).

Decision: the text formats are read with the standard library, in one pass that knows each
record's line; ``datasets`` reads hub datasets and ``pyarrow`` Parquet files. ``datasets`` names
no line in its errors, caches every local file it loads, and takes a ``.json`` file holding JSON
lines, one object or a list of strings for records.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypeVar

from llmprep.data.errors import DataError
from llmprep.data.hub import HUB_PREFIX, load_hub
from llmprep.data.sources import SOURCES, resolve
from llmprep.files import atomic_path

SPLITS = ("train", "val", "test")
# The file names of a split folder's splits; ``validation`` is what runs saved before ``val``.
SPLIT_STEMS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
# Bytes that are not UTF-8 survive decoding as lone surrogates (``errors="surrogateescape"``), so
# they can be reported at the field that holds them.
_UNDECODABLE = re.compile("[\udc80-\udcff]")

Record = dict[str, str]
T = TypeVar("T")


@dataclass(frozen=True)
class Place:
    """Where one record was read: record ``index`` (0-based) of a file in ``format`` (``None``
    for a hub dataset), starting at ``line`` (``None`` where the format has no record lines)."""

    path: str | Path
    format: str | None
    line: int | None
    index: int

    def error(self, field: str | None, message: str) -> DataError:
        """A ``DataError`` at ``field`` of this record, named by its index too outside CSV/TSV."""
        if self.format not in ("csv", "tsv"):
            message = f"record {self.index}: {message}"
        return DataError(self.path, self.line, field, message)


def file_format(path: Path, format: str | None = None) -> str:
    """``format`` when given, else the one the file's suffix names (``SUFFIX_FORMATS``)."""
    if format is None:
        format = SUFFIX_FORMATS.get(path.suffix.lower())
        if format is None:
            raise ValueError(
                f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                f"name it with data.format (one of {list(FORMATS)})"
            )
    if format not in FORMATS:
        raise ValueError(f"{path}: data.format={format!r} is not one of {list(FORMATS)}")
    return format


def _source_path(spec: str) -> str | Path:
    """What a data module's ``path`` names: a hub id (``hf:...``) as given, a folder of split
    files, or the checked local file of a source name or path (fetched by ``resolve``)."""
    if spec.startswith(HUB_PREFIX):
        return spec
    if spec not in SOURCES and Path(spec).expanduser().is_dir():
        return Path(spec).expanduser().resolve()
    return resolve(spec)


def fetch(spec: str) -> None:
    """Fetch what a data module's ``path`` names, once, for its ``prepare_data``: a source name
    into the cache (or found in a mirror), a hub dataset into the hub's cache."""
    if spec.startswith(HUB_PREFIX):
        _hub(spec)
    else:
        _source_path(spec)


def _hub(spec: str) -> Any:
    """The train split of the hub dataset ``hf:<name>`` (see ``load_hub``)."""
    return load_hub(spec.removeprefix(HUB_PREFIX), None, "train", "data.path=/path/to/its/file")


def split_files(folder: Path) -> dict[str, Path]:
    """The train, val and test files of a split folder: exactly one per split (``SPLIT_STEMS``
    and ``SUFFIX_FORMATS``)."""
    found = {}
    for split, stems in SPLIT_STEMS.items():
        names = [f"{stem}{suffix}" for stem in stems for suffix in SUFFIX_FORMATS]
        matches = [folder / name for name in names if (folder / name).is_file()]
        if len(matches) != 1:
            listed = ", ".join(p.name for p in matches) or "none"
            need = f"exactly one {'/'.join(stems)} file ({', '.join(SUFFIX_FORMATS)})"
            raise DataError(folder, None, None, f"a split folder needs {need}, found {listed}")
        found[split] = matches[0]
    return found


def read_splits(
    spec: str,
    read: Callable[[str | Path], list[T]],
    fractions: Mapping[str, float],
    seed: int | None = None,
    prepare: Callable[[list[T]], list[T]] | None = None,
) -> tuple[dict[str, list[T]], str | Path]:
    """The ``SPLITS`` of what ``spec`` names (``_source_path``), each read by ``read``, and where
    the training split came from: a split folder's files as given, else the one file or hub
    dataset passed through ``prepare`` and cut by ``split_records``."""
    source = _source_path(spec)
    if isinstance(source, Path) and source.is_dir():
        files = split_files(source)
        return {split: read(file) for split, file in files.items()}, files["train"]
    items = read(source)
    if prepare is not None:
        items = prepare(items)
    return split_records(items, fractions, source, seed), source


def read_records(
    source: str | Path,
    fields: Mapping[str, str | None],
    format: str | None = None,
    columns: Sequence[str] | None = None,
    nonblank: Collection[str] = (),
) -> tuple[list[Place], list[Record]]:
    """Every record of a file, or of a hub dataset's train split, as ``{name: value}`` in file
    order, and the ``Place`` of each.

    ``fields`` maps each name to the key (the column) that holds it, or to ``None`` for a name
    left empty. Values must be strings; an integer (a label such as 0 or 1) is taken in its JSON
    spelling. The names in ``nonblank`` must hold more than white space. TSV is read with quoting
    off, since a text may start with a quote (the SMS collection's do); CSV and TSV start with a
    header row unless ``columns`` names their columns. Other keys are dropped.
    """
    keys = [key for key in fields.values() if key is not None]
    fmt = None if str(source).startswith(HUB_PREFIX) else file_format(Path(source), format)
    path = Path(source) if fmt else str(source)
    if columns and fmt not in (None, "csv", "tsv"):
        raise ValueError(f"{path}: data.columns names the columns of CSV/TSV files, not {fmt}")
    if fmt in ("csv", "tsv", "json", "jsonl"):
        rows = list(_text_records(Path(path), fmt, columns, keys))
        names = list(dict.fromkeys(key for _, row in rows for key in row))
    else:
        table = _parquet(Path(path)) if fmt else _hub(str(path)).with_format("arrow")[:]
        names = table.column_names
        picked = table.select([name for name in names if name in keys]).to_pylist()
        rows = [(Place(path, fmt, None, index), row) for index, row in enumerate(picked)]
    if not rows:
        raise DataError(path, None, None, "the file holds no records")
    for key in keys:
        if key not in names:
            raise DataError(path, None, key, f"missing: the records have {names}")
    places = [place for place, _ in rows]
    return places, [_record(place, row, fields, nonblank) for place, row in rows]


def _record(
    place: Place,
    row: Mapping[str, Any],
    fields: Mapping[str, str | None],
    nonblank: Collection[str],
) -> Record:
    """The record of one row, or the ``DataError`` of its first bad field."""
    record = {}
    for name, key in fields.items():
        value = "" if key is None else row.get(key)
        if isinstance(value, bool | int):
            value = json.dumps(value)
        if value is None:
            raise place.error(key, "missing, or null: expected a string, got None")
        if not isinstance(value, str):
            raise place.error(key, f"expected a string, got {value!r:.80}")
        if name in nonblank and not value.strip():
            raise place.error(key, f"empty {name}")
        record[name] = value
    return record


def _parquet(path: Path) -> Any:
    """The table of a Parquet file (a ``pyarrow.Table``), or the ``DataError`` of its problem."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (OSError, ValueError) as err:
        raise DataError(path, None, None, f"cannot read it as parquet: {err}") from err


def _text_records(
    path: Path, fmt: str, columns: Sequence[str] | None = None, required: Sequence[str] = ()
) -> Iterator[tuple[Place, dict[str, Any]]]:
    """``(place, record)`` for each record of a text file; the first malformed record (or a
    header without a ``required`` column) raises its ``DataError``. A JSON list has no record
    lines, so bytes that are not UTF-8 are placed by their own line.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, None, None, f"cannot read the file ({err.strerror})") from err
    if fmt == "json":
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise DataError(path, line, None, f"byte {err.start} is not UTF-8") from err
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    if not text.strip():
        raise DataError(path, None, None, "the file is empty")
    if fmt in ("json", "jsonl"):
        items = _json_items(path, text, lines=fmt == "jsonl")
    else:
        items = _delimited_items(path, text, fmt, columns, required)
    for index, (line, item) in enumerate(items):
        place = Place(path, fmt, line, index)
        if not isinstance(item, dict):
            raise place.error(None, f"expected an object, got {type(item).__name__}")
        for key, value in item.items():
            if _UNDECODABLE.search(key + (value if isinstance(value, str) else "")):
                raise place.error(key, "holds bytes that are not UTF-8")
        yield place, item


def _json_items(path: Path, text: str, lines: bool) -> Iterator[tuple[int | None, Any]]:
    """The elements of a file holding one JSON list (lines ``None``), or ``(line, value)`` for
    each non-blank line of JSON lines (split at ``\\n`` only, so U+2028 and the other Unicode
    line breaks stay inside their strings)."""
    pieces = enumerate(text.split("\n"), start=1) if lines else [(None, text)]
    for line, raw in pieces:
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            extra = not lines and err.msg == "Extra data"
            hint = " (JSON lines? name the file .jsonl or pass data.format=jsonl)" if extra else ""
            message = f"invalid JSON at column {err.colno}: {err.msg}{hint}"
            raise DataError(path, line or err.lineno, None, message) from err
        if lines:
            yield line, data
        elif isinstance(data, list):
            yield from ((None, item) for item in data)
        else:
            kind = type(data).__name__
            raise DataError(path, None, None, f"expected a JSON list of records, got {kind}")


def _delimited_items(
    path: Path, text: str, fmt: str, columns: Sequence[str] | None, required: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(first line, {column: value})`` for each row of a CSV or TSV text; rows that are blank
    but for white space are skipped, and a short row's missing fields are empty."""

    def header_of(names: list[str], line: int | None) -> list[str]:
        for name in required:
            if name not in names:
                raise DataError(path, line, name, f"no such column in {names}")
        return names

    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter="\t" if fmt == "tsv" else ",",
        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
        strict=True,
    )
    header = header_of(list(columns), None) if columns else None
    next_line = 1
    try:
        for row in reader:
            line, next_line = next_line, reader.line_num + 1
            if len(row) < 2 and not "".join(row).strip():
                continue
            if header is None:
                header = header_of(row, line)
            elif len(row) > len(header):
                message = f"the row has {len(row)} fields but the columns are {header}"
                hint = " (an unquoted delimiter inside a text?)"
                raise DataError(path, line, None, message + hint)
            else:
                yield line, dict(zip_longest(header, row, fillvalue=""))
    except csv.Error as err:
        raise DataError(
            path, next_line, None, f"malformed {fmt.upper()} in the record starting here: {err}"
        ) from err


def check_fractions(fractions: Mapping[str, float], setting: str) -> dict[str, float]:
    """``fractions`` (of two splits) as floats, each above 0 and together below 1 since the
    third split takes the rest; else a ``ValueError`` naming ``setting``."""
    values = {name: float(fraction) for name, fraction in fractions.items()}
    if not (all(f > 0 for f in values.values()) and sum(values.values()) < 1):
        rest = next(name for name in SPLITS if name not in values)
        raise ValueError(
            f"{setting} needs fractions above 0 that sum below 1 (the {rest} split takes the "
            f"rest), got {values}"
        )
    return values


def split_records(
    items: Sequence[T], fractions: Mapping[str, float], source: str | Path, seed: int | None = None
) -> dict[str, list[T]]:
    """``items`` cut into ``SPLITS`` with the book's integer arithmetic, after a shuffle by
    ``random.Random(seed)`` unless ``seed`` is ``None`` (file order).

    The two splits in ``fractions`` are cut first, in its order, ``int(n * fraction)`` items
    each; the third takes the rest (the book's chapter 7 ``{"train": 0.85, "test": 0.10}`` cuts
    1,100 records into 935 / 110 / 55). A split left empty is a ``DataError`` naming ``source``.
    """
    items = list(items)
    if seed is not None:
        random.Random(seed).shuffle(items)
    parts, start = {}, 0
    for name, fraction in fractions.items():
        end = start + int(len(items) * fraction)
        parts[name], start = items[start:end], end
    parts.update({name: items[start:] for name in SPLITS if name not in fractions})
    for name in SPLITS:
        if not parts[name]:
            message = f"{len(items)} records leave the {name} split empty"
            raise DataError(source, None, None, f"{message} (fractions {dict(fractions)})")
    return {name: parts[name] for name in SPLITS}


def write_splits(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], folder: str | Path, suffix: str
) -> None:
    """Each split's rows as ``<split><suffix>`` (``.csv`` or ``.json``) in ``folder``, so the
    folder reads back as split input; all are renamed into place at the end, so a crash never
    leaves a half-written set."""
    with ExitStack() as staged:
        for name, rows in splits.items():
            temp = staged.enter_context(atomic_path(Path(folder) / f"{name}{suffix}"))
            with temp.open("w", encoding="utf-8", newline="") as out:
                if suffix == ".json":
                    out.write(json.dumps(list(rows), indent=2, ensure_ascii=False) + "\n")
                else:
                    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
