"""One reader for labelled and instruction records, one split vocabulary and one split function.

The ``classify`` and ``instruct`` stages read their records here: from a CSV or TSV file, a JSON
list, JSON lines, a Parquet file or a Hugging Face hub dataset (``hf:<name>``), or from a folder
already split into one such file per split (``split_files``). ``datasets`` reads them; this
module picks each record's fields, checks their values and reports every problem as one
``DataError`` naming the file, the line where the record starts (in the formats with lines) and
the field. The splits are ``train``, ``val`` and ``test`` everywhere (``SPLITS``).

Why some reading is ours: ``datasets`` names no line in its errors (pandas counts rows, pyarrow
the rows of one read block, ujson a byte offset), and it takes a ``.json`` file holding JSON
lines, one object or a list of strings for records. So when it fails, when a ``.json`` file does
not open as a list of objects, or when a record turns out bad, the file is read again with the
standard library (``_scan``) to find the first malformed record or the bad one's line. A good
file is read once, by ``datasets``.

Local files are loaded into memory through a temporary folder, so ``datasets`` caches nothing
for them, neither in the user's cache nor beside a shared read-only file; hub datasets use the
hub's own cache (see ``llmprep.data.hub``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import random
import re
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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
_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
_LINED = ("csv", "tsv", "jsonl")
# What ``datasets`` reads as a JSON list of objects: the list opens with an object, or is empty.
_JSON_LIST = re.compile(rb"(\xef\xbb\xbf)?\s*\[\s*[{\]]")
# Bytes that are not UTF-8 survive decoding as lone surrogates (``errors="surrogateescape"``), so
# they can be reported at the field that holds them.
_UNDECODABLE = re.compile("[\udc80-\udcff]")

Record = dict[str, str]
T = TypeVar("T")


@dataclass(frozen=True)
class Origin:
    """Where records were read: a file, its format and a header-less file's column names, or a
    hub id (``format`` ``None``); it turns a problem with one record into a ``DataError``."""

    path: str | Path
    format: str | None = None
    columns: tuple[str, ...] | None = None

    def error(self, index: int, field: str | None, message: str) -> DataError:
        """A ``DataError`` at record ``index`` (0-based) and ``field``, with the record's line.

        The line is looked up only now, by reading the file again (``_scan``); a malformed
        record before it is reported instead, as the file's first problem.
        """
        line = None
        if self.format in _LINED:
            records = _scan(Path(self.path), self.format, self.columns)
            line = next(itertools.islice(records, index, None), (None, None))[0]
        return _record_error(self.path, self.format, line, index, field, message)


def _record_error(
    path: str | Path, fmt: str | None, line: int | None, index: int, field: str | None, message: str
) -> DataError:
    """A ``DataError`` about record ``index``: a CSV or TSV row is named by its line, a record of
    the other formats by its index too, since a JSON list or a hub dataset has no lines."""
    if fmt not in ("csv", "tsv"):
        message = f"record {index}: {message}"
    return DataError(path, line, field, message)


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
    folder = Path(spec).expanduser()
    if spec.startswith(HUB_PREFIX):
        return spec
    if spec not in SOURCES and folder.is_dir():
        return folder.resolve()
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
    """The train, val and test files of a split folder: exactly one file for each split, named
    after it (``SPLIT_STEMS``) with a suffix of ``SUFFIX_FORMATS``."""
    found = {}
    for split, stems in SPLIT_STEMS.items():
        names = [f"{stem}{suffix}" for stem in stems for suffix in SUFFIX_FORMATS]
        matches = [folder / name for name in names if (folder / name).is_file()]
        if len(matches) != 1:
            listed = ", ".join(p.name for p in matches) or "none"
            raise DataError(
                folder,
                None,
                None,
                f"a split folder needs exactly one {'/'.join(stems)} file "
                f"({', '.join(SUFFIX_FORMATS)}), found {listed}",
            )
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
) -> tuple[Origin, list[Record]]:
    """Every record of a file, or of a hub dataset's train split, as ``{name: value}`` in file
    order, and the ``Origin`` that points back into the file.

    ``fields`` maps each name to the key (the column) that holds it, or to ``None`` for a name
    left empty. Values must be strings; an integer (a label such as 0 or 1) is taken in its JSON
    spelling. The names in ``nonblank`` must hold more than white space. CSV is read with
    standard quoting and TSV with quoting off, since TSV has no quoting and a text may start with
    a quote (the SMS collection's do); both start with a header row unless ``columns`` names
    their columns. Blank lines are skipped; other keys are dropped.
    """
    keys = [key for key in fields.values() if key is not None]
    if str(source).startswith(HUB_PREFIX):
        origin = Origin(str(source))
        rows = _rows(origin, _hub(str(source)), keys)
    else:
        path = Path(source)
        origin = Origin(path, file_format(path, format), tuple(columns) if columns else None)
        rows = _load(origin, keys)
    if not rows:
        raise DataError(origin.path, None, None, "the file holds no records")
    return origin, [_record(origin, index, row, fields, nonblank) for index, row in enumerate(rows)]


def _record(
    origin: Origin,
    index: int,
    row: Mapping[str, Any],
    fields: Mapping[str, str | None],
    nonblank: Collection[str],
) -> Record:
    """The record of one row, or the ``DataError`` of its first bad field."""
    record = {}
    for name, key in fields.items():
        value = "" if key is None else row[key]
        if isinstance(value, bool | int):
            value = json.dumps(value)
        if value is None:
            raise origin.error(index, key, "missing, or null: expected a string, got None")
        if not isinstance(value, str):
            raise origin.error(index, key, f"expected a string, got {value!r:.80}")
        if name in nonblank and not value.strip():
            raise origin.error(index, key, f"empty {name}")
        record[name] = value
    return record


def _rows(origin: Origin, table: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The ``keys`` of each row of a ``datasets.Dataset``; a key it lacks is a ``DataError``."""
    for key in keys:
        if key not in table.column_names:
            message = f"missing: the records have {table.column_names}"
            raise DataError(origin.path, None, key, message)
    return table.select_columns(list(keys)).to_list()


def _load(origin: Origin, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The ``keys`` of each row of a file read by ``datasets`` into memory (``_rows``), or the
    ``DataError`` of the file's first problem.

    CSV/TSV columns are read as strings, exactly as written (``"007"`` stays ``"007"``, ``NA``
    stays ``NA``), and only the ``keys`` are kept.
    """
    from datasets import Features, Value, load_dataset

    path, fmt = Path(origin.path), origin.format
    options: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        options = {
            "sep": "\t" if fmt == "tsv" else ",",
            "quoting": csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
            "na_filter": False,
            "features": Features({key: Value("string") for key in keys}),
        }
        if origin.columns:
            options.update(header=None, names=list(origin.columns))
    elif origin.columns:
        raise ValueError(f"{path}: data.columns names the columns of CSV/TSV files, not {fmt}")
    try:
        if fmt == "json":
            with path.open("rb") as head:
                if not _JSON_LIST.match(head.read(256)):
                    raise ValueError("not a JSON list of objects")
        with _quiet_datasets(), tempfile.TemporaryDirectory() as scratch:
            table = load_dataset(
                _BUILDERS[fmt],
                data_files={"train": str(path)},
                split="train",
                cache_dir=scratch,
                keep_in_memory=True,
                **options,
            )
        return _rows(origin, table, keys)
    except DataError:
        raise
    except Exception as err:
        if fmt != "parquet" and not sum(1 for _ in _scan(path, fmt, origin.columns, keys)):
            raise DataError(path, None, None, "the file holds no records") from err
        raise DataError(
            path, None, None, f"cannot read it as {fmt}: {err.__cause__ or err}"
        ) from err


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """``datasets`` without its progress bars and error logs while it reads a local file: the
    read takes a blink, and a failure is reported once, as our ``DataError``."""
    import datasets

    logger, bars_off = logging.getLogger("datasets"), datasets.are_progress_bars_disabled()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_off:
            datasets.enable_progress_bars()


def _scan(
    path: Path, fmt: str, columns: Sequence[str] | None = None, required: Sequence[str] = ()
) -> Iterator[tuple[int | None, dict[str, Any]]]:
    """``(line, record)`` for each record of a CSV, TSV, JSON or JSON-lines file, read with the
    standard library to place an error (see the module docstring); the first malformed record
    (or a header without a ``required`` column) raises its ``DataError``. A JSON list has no
    record lines: its lines are ``None``, and bytes that are not UTF-8 are placed by their own.
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
    if fmt == "json":
        items: Iterator[tuple[int | None, Any]] = iter(_json_items(path, text))
    elif fmt == "jsonl":
        items = _jsonl_items(path, text)
    else:
        items = _delimited_items(path, text, fmt, columns, required)
    for index, (line, item) in enumerate(items):
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise _record_error(path, fmt, line, index, None, f"expected an object, got {kind}")
        for key, value in item.items():
            if _UNDECODABLE.search(key + (value if isinstance(value, str) else "")):
                message = "holds bytes that are not UTF-8"
                raise _record_error(path, fmt, line, index, key, message)
        yield line, item


def _json_items(path: Path, text: str) -> list[tuple[None, Any]]:
    """The elements of a file holding one JSON list."""
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
        kind = type(data).__name__
        raise DataError(path, None, None, f"expected a JSON list of records, got {kind}")
    return [(None, item) for item in data]


def _jsonl_items(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` for each non-blank line of a JSON-lines text (split at ``\\n`` only, so
    U+2028 and the other Unicode line breaks stay inside their strings)."""
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as err:
            message = f"invalid JSON at column {err.colno}: {err.msg}"
            raise DataError(path, line, None, message) from err
        yield line, item


def _delimited_items(
    path: Path, text: str, fmt: str, columns: Sequence[str] | None, required: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(first line, {column: value})`` for each row of a CSV or TSV text; rows that are blank
    but for white space are skipped, as pandas skips them."""

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
                raise DataError(
                    path,
                    line,
                    None,
                    f"the row has {len(row)} fields but the columns are {header} "
                    "(an unquoted delimiter inside a text?)",
                )
            else:
                yield line, dict(zip(header, row, strict=False))
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
    each; the third takes the rest. The book's chapter 6 ``{"train": 0.7, "val": 0.1}`` with
    seed 123 cuts 1,494 messages into 1,045 / 149 / 300; its chapter 7
    ``{"train": 0.85, "test": 0.10}`` cuts 1,100 records in file order into 935 train, 110 test
    and 55 val records. A split left empty is a ``DataError`` naming ``source``.
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
            raise DataError(
                source,
                None,
                None,
                f"{len(items)} records leave the {name} split empty (fractions {dict(fractions)})",
            )
    return {name: parts[name] for name in SPLITS}


def write_splits(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], folder: str | Path, suffix: str
) -> None:
    """Each split's rows as ``<split><suffix>`` in ``folder``: ``.csv`` with the rows' keys as
    header, or ``.json`` as an indented list, so the folder reads back as split input.

    The files are written to temporary names first and all renamed at the end, so a crash never
    leaves a half-written set.
    """
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
