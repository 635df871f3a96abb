"""The one record reader: every format, split folders, the split function and clear errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from llmprep.data.errors import DataError
from llmprep.data.records import (
    read_records,
    read_splits,
    split_files,
    split_records,
    write_splits,
)

FIELDS = {"text": "text", "label": "label"}
INSTRUCT = {"instruction": "instruction", "input": "input", "output": "output"}


def rows(n: int) -> list[dict[str, str]]:
    return [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(n)]


def instructions(n: int) -> list[dict[str, str]]:
    return [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(n)]


def read(path: Path, **kwargs) -> list[dict[str, str]]:
    return read_records(path, FIELDS, nonblank=FIELDS, **kwargs)[1]


def test_every_format_reads_the_same_records(tmp_path: Path) -> None:
    import pandas as pd

    data = rows(4)
    write_splits({"d": data}, tmp_path, ".csv")
    write_splits({"d": data}, tmp_path, ".json")
    (tmp_path / "d.tsv").write_text(
        "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in data)
    )
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    pd.DataFrame(data).to_parquet(tmp_path / "d.parquet")
    for suffix in (".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        assert read(tmp_path / f"d{suffix}") == data, suffix


def test_csv_values_stay_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label,extra\n007,1,x\nNA,2\n"two\r\nlines, quoted",3,y\n\n  \nnull,4,\n')
    assert read(path) == [
        {"text": "007", "label": "1"},
        {"text": "NA", "label": "2"},
        {"text": "two\r\nlines, quoted", "label": "3"},
        {"text": "null", "label": "4"},
    ]


def test_tsv_is_read_with_quoting_off_and_headerless_columns(tmp_path: Path) -> None:
    path = tmp_path / "sms"
    path.write_text('ham\t"quoted start\nspam\tsays "hi\n')
    got = read(path, format="tsv", columns=["label", "text"])
    assert got == [{"text": '"quoted start', "label": "ham"}, {"text": 'says "hi', "label": "spam"}]


def test_json_integers_are_labels_and_unnamed_fields_are_empty(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"t": "a", "y": 0}\n{"t": "b", "y": 1, "other": [1]}\n')
    _, got = read_records(path, {"text": "t", "label": "y", "input": None})
    assert got == [
        {"text": "a", "label": "0", "input": ""},
        {"text": "b", "label": "1", "input": ""},
    ]


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    record = {"text": "Say hi\u2028twice", "label": "a\x85b\u2029c"}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read(path) == [record]


def test_local_files_leave_nothing_in_any_cache(tmp_path: Path) -> None:
    from datasets import config

    caches = [Path(config.HF_DATASETS_CACHE), Path(os.environ["LLMPREP_CACHE"])]
    before = [set(cache.rglob("*")) for cache in caches]
    write_splits({"d": rows(3)}, tmp_path, ".csv")
    assert len(read(tmp_path / "d.csv")) == 3
    assert [set(cache.rglob("*")) for cache in caches] == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.csv"]


@pytest.mark.parametrize(
    ("name", "content", "line", "column", "message"),
    [
        ("quoted.csv", b'text,label\n"a\nb",x\n"c\n\nd",y\n,z\n', 7, "text", "empty text"),
        ("long.csv", b"text,label\nhello,a\nx,y,z\n", 3, None, "3 fields"),
        ("unclosed.csv", b'text,label\nhello,a\n"open,b\nmore\n', 3, None, "malformed CSV"),
        ("none.tsv", b"text\tlabel\n", None, None, "holds no records"),
        ("empty.jsonl", b"\n  \n", None, None, "the file is empty"),
        ("list.jsonl", b'{"text": "a", "label": "b"}\n[1]\n', 2, None, "got list"),
        ("float.jsonl", b'{"text": "a", "label": 0.5}\n', 1, "label", "got 0.5"),
        ("nokey.jsonl", b'{"text": "a"}\n', None, "label", "missing: the records have"),
    ],
)
def test_bad_files_name_the_line_of_the_record(
    tmp_path: Path, name: str, content: bytes, line: int | None, column: str | None, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        read(path)
    assert (caught.value.path, caught.value.line, caught.value.column) == (path, line, column)


def test_missing_field_names_file_record_and_field(tmp_path: Path) -> None:
    data = instructions(4)
    del data[2]["output"]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.json, column 'output': record 2: missing") as err:
        read_records(path, INSTRUCT)
    assert err.value.path == path


def test_non_string_field_in_jsonl_names_line_and_record(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in instructions(2)]
    lines += ["", json.dumps({**instructions(1)[0], "input": None})]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl, line 4, column 'input': record 2: .*None"):
        read_records(path, INSTRUCT)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.json", " \n", r"empty\.json: the file is empty"),
        ("none.json", "[]", r"none\.json: the file holds no records"),
        ("bad.json", '[\n {"instruction": "a",,}\n]', r"bad\.json, line 2: invalid JSON at column"),
        ("lines.json", '{"a": 1}\n{"a": 2}\n', r"lines\.json, line 2: .*data\.format=jsonl"),
        ("bad.jsonl", '{"a": 1}\n{"a": \n', r"bad\.jsonl, line 2: invalid JSON"),
        ("obj.json", '{"instruction": "a"}', r"obj\.json: expected a JSON list of records"),
        ("str.json", '["just text"]', r"str\.json: record 0: expected an object, got str"),
    ],
)
def test_bad_file_gets_one_clear_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_records(path, INSTRUCT)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n{"instruction": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"d\.json, line 2: byte 22 is not UTF-8"):
        read_records(path, INSTRUCT)


def test_the_format_is_named_or_read_off_the_suffix(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("text,label\na,b\n")
    with pytest.raises(ValueError, match=r"suffix '\.txt'.*data\.format"):
        read(tmp_path / "d.txt")
    assert read(tmp_path / "d.txt", format="csv") == [{"text": "a", "label": "b"}]
    with pytest.raises(ValueError, match=r"data\.format='xml'"):
        read(tmp_path / "d.txt", format="xml")


def test_split_uses_the_books_integer_arithmetic() -> None:
    parts = split_records(range(101), {"train": 0.85, "test": 0.10}, "data")
    assert list(parts) == ["train", "val", "test"]
    assert [len(parts[s]) for s in ("train", "test", "val")] == [85, 10, 6]
    assert parts["train"] + parts["test"] + parts["val"] == list(range(101))
    shuffled = split_records(range(1494), {"train": 0.7, "val": 0.1}, "data", seed=123)
    assert [len(shuffled[s]) for s in ("train", "val", "test")] == [1045, 149, 300]
    again = split_records(range(1494), {"train": 0.7, "val": 0.1}, "data", seed=123)
    assert shuffled == again != split_records(range(1494), {"train": 0.7, "val": 0.1}, "d", seed=1)


def test_split_that_leaves_a_part_empty_is_an_error() -> None:
    with pytest.raises(DataError, match="5 records leave the test split empty"):
        split_records(range(5), {"train": 0.85, "test": 0.10}, "data")


def test_split_folders_take_val_or_the_older_validation(tmp_path: Path) -> None:
    write_splits({"train": rows(4), "validation": rows(2), "test": rows(3)}, tmp_path, ".csv")
    assert {s: p.name for s, p in split_files(tmp_path).items()} == {
        "train": "train.csv",
        "val": "validation.csv",
        "test": "test.csv",
    }
    splits, train = read_splits(str(tmp_path), read, {"train": 0.5, "test": 0.2})
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 2, 3]
    assert train == tmp_path / "train.csv"
    write_splits({"val": rows(2)}, tmp_path, ".json")
    with pytest.raises(DataError, match=r"exactly one val/validation file.*val\.json, validation"):
        split_files(tmp_path)


def test_written_splits_are_csv_with_a_header_or_indented_json(tmp_path: Path) -> None:
    data = [{"text": 'say "hi", then\nbye', "label": "a", "label_id": 0}]
    write_splits({"train": data}, tmp_path, ".csv")
    with (tmp_path / "train.csv").open(newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh)) == [{**data[0], "label_id": "0"}]
    write_splits({"train": data}, tmp_path, ".json")
    assert json.loads((tmp_path / "train.json").read_text(encoding="utf-8")) == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_hub_id_offline_is_a_data_error_naming_what_to_pass(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"hf:nobody/nothing: cannot load.*data\.path="):
        read_records("hf:nobody/nothing", FIELDS)
