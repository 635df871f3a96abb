"""The classify stage's data: the book's SMS splits, padding, generic files and bad input."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from llmprep.data.errors import DataError
from llmprep.stages.classify.data import ClassificationDataModule, encode_texts, read_examples

PAD = 50256


def words(n: int) -> str:
    """A text of exactly ``n`` GPT-2 tokens ("hi hi hi ...")."""
    return " ".join(["hi"] * n)


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def module(path: Path, **kwargs) -> ClassificationDataModule:
    dm = ClassificationDataModule(path=str(path), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_sms_spam_config_gives_the_books_balanced_splits(
    mirror: Path, tmp_path: Path, compose_run
) -> None:
    cfg = compose_run("stage=classify").data
    dm = instantiate(cfg, context_length=1024, output_dir=str(tmp_path / "splits"))
    dm.prepare_data()
    dm.setup("fit")

    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [1045, 149, 300]
    everything = dm.splits["train"] + dm.splits["val"] + dm.splits["test"]
    assert Counter(ex.label for ex in everything) == {"ham": 747, "spam": 747}
    assert dm.label_names == ["ham", "spam"] and dm.num_classes == 2
    ids = [dm.datasets["train"][i][1] for i in range(len(dm.splits["train"]))]
    assert ids == [int(ex.label == "spam") for ex in dm.splits["train"]]

    for split, size in (("train", 1045), ("val", 149), ("test", 300)):
        with (tmp_path / "splits" / f"{split}.csv").open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == size
        assert {(r["label"], r["label_id"]) for r in rows} == {("ham", "0"), ("spam", "1")}


def test_sms_file_is_read_with_quoting_off(mirror: Path) -> None:
    examples = read_examples(mirror / "SMSSpamCollection", "tsv", columns=["label", "text"])
    assert len(examples) == 5574
    assert Counter(ex.label for ex in examples) == {"ham": 4827, "spam": 747}
    assert any(ex.text.startswith('"') for ex in examples)


def test_the_same_seed_gives_the_same_splits_and_another_seed_others(tmp_path: Path) -> None:
    rows = [[f"message number {i}", "a" if i % 3 else "b"] for i in range(90)]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)

    def texts(seed: int) -> list[str]:
        return [ex.text for ex in module(path, seed=seed).splits["train"]]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


def test_batches_pad_to_the_longest_training_text_and_keep_lengths(tmp_path: Path) -> None:
    rows = [[words(n), "a" if n % 2 else "b"] for n in range(1, 21)]
    dm = module(
        write_csv(tmp_path / "d.csv", ["text", "label"], rows),
        balance=False,
        batch_size=4,
        drop_last_train=False,
    )
    longest = max(len(ex.text.split()) for ex in dm.splits["train"])
    assert dm.pad_length == longest

    test_loader = dm.test_dataloader()[dm.test_splits.index("test")]
    for loader, split in ((dm.train_dataloader(), "train"), (test_loader, "test")):
        seen = 0
        for batch in loader:
            ids, lengths = batch["input_ids"], batch["lengths"]
            assert ids.dtype == lengths.dtype == batch["labels"].dtype == torch.long
            assert ids.shape[1] == longest
            for row, length in zip(ids, lengths.tolist(), strict=True):
                assert length >= 1
                assert (row[length:] == PAD).all() and (row[:length] != PAD).all()
            seen += len(lengths)
        assert seen == len(dm.datasets[split])
    test_lengths = torch.cat([b["lengths"] for b in test_loader]).tolist()
    assert test_lengths == [min(len(ex.text.split()), longest) for ex in dm.splits["test"]]


def test_batch_padding_pads_each_batch_to_its_own_longest_text(tmp_path: Path) -> None:
    rows = [[words(n), "a" if n % 2 else "b"] for n in range(1, 41)]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)
    dm = module(path, balance=False, pad_to="batch", batch_size=2)
    assert dm.pad_length is None
    batches = list(dm.val_dataloader())
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == [int(b["lengths"].max()) for b in batches]
    assert len(set(widths)) == len(widths) == 2
    assert all(
        (b["input_ids"][b["lengths"] < w][:, -1] == PAD).all()
        for b, w in zip(batches, widths, strict=True)
    )


def test_texts_are_cut_to_the_context_and_to_max_length(tmp_path: Path) -> None:
    rows = [[words(n), "a" if n % 2 else "b"] for n in range(3, 33)]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)
    dm = module(path, context_length=5, drop_last_train=False)
    assert dm.pad_length == 5
    assert all(int(b["lengths"].max()) <= 5 for b in dm.train_dataloader())
    assert module(path, context_length=8, max_length=6).pad_length == 6


def test_encode_texts_follows_the_training_rules() -> None:
    batch = encode_texts([words(2), words(9)], context_length=6)
    assert batch["input_ids"].tolist()[0] == [5303, 23105, PAD, PAD, PAD, PAD]
    assert batch["lengths"].tolist() == [2, 6]
    padded = encode_texts([words(2)], context_length=1024, pad_to_length=4)
    assert padded["input_ids"].tolist() == [[5303, 23105, PAD, PAD]]
    assert encode_texts([words(7)], 1024, pad_to_length=4)["lengths"].tolist() == [4]
    with pytest.raises(ValueError, match="text 1 is empty"):
        encode_texts(["fine", "  "], context_length=8)


def test_lowercase_lowers_the_tokens_but_not_the_saved_splits(tmp_path: Path) -> None:
    rows = [[f"WIN a FREE prize {i}", "spam"] for i in range(10)]
    rows += [[f"See you at Lunch {i}", "ham"] for i in range(10)]
    path = write_csv(tmp_path / "sms.csv", ["text", "label"], rows)
    plain = module(path, context_length=32, output_dir=str(tmp_path / "plain"))
    lowered = module(path, context_length=32, lowercase=True, output_dir=str(tmp_path / "low"))
    assert plain.splits == lowered.splits
    for split, examples in lowered.splits.items():
        texts = [ex.text.lower() for ex in examples]
        expected = encode_texts(texts, context_length=32)["input_ids"].tolist()
        got = [ids for ids, _ in lowered.datasets[split]]
        assert got == [[t for t in row if t != PAD] for row in expected]
        assert got != [ids for ids, _ in plain.datasets[split]]
        saved = (tmp_path / "low" / f"{split}.csv").read_text(encoding="utf-8")
        assert saved == (tmp_path / "plain" / f"{split}.csv").read_text(encoding="utf-8")
    assert torch.equal(
        encode_texts(["FREE Prize"], 32, lowercase=True)["input_ids"],
        encode_texts(["free prize"], 32)["input_ids"],
    )


def test_generic_files_with_custom_columns_and_no_balancing(tmp_path: Path) -> None:
    counts = {"pos": 30, "neg": 20, "mixed": 10}
    rows = [[f"review {i} {name}", name, "x"] for name, n in counts.items() for i in range(n)]
    tsv = write_csv(tmp_path / "r.tsv", ["review", "sentiment", "other"], rows, delimiter="\t")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s, _ in rows))
    for path in (tsv, jsonl):
        dm = module(path, text_column="review", label_column="sentiment", balance=False)
        everything = dm.splits["train"] + dm.splits["val"] + dm.splits["test"]
        assert Counter(ex.label for ex in everything) == counts
        assert dm.num_classes == 3 and dm.label_names == ["mixed", "neg", "pos"]

    headerless = tmp_path / "plain.txt"
    headerless.write_text("".join(f"{s},{t}\n" for t, s, _ in rows))
    dm = module(
        headerless,
        format="csv",
        columns=["sentiment", "review"],
        text_column="review",
        label_column="sentiment",
    )
    balanced = dm.splits["train"] + dm.splits["val"] + dm.splits["test"]
    assert Counter(ex.label for ex in balanced) == {"pos": 10, "neg": 10, "mixed": 10}
    assert {ex.text for ex in balanced} <= {t for t, _, _ in rows}


def test_integer_labels_take_their_numeric_order(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    records = [{"text": f"t {i}", "label": [2, 10][i % 2]} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in records))
    assert module(path).label_names == ["2", "10"]


def test_saved_splits_read_back_as_a_split_folder(tmp_path: Path) -> None:
    rows = [[f"text {i}", "yes" if i % 4 else "no"] for i in range(60)]
    out = tmp_path / "out"
    first = module(write_csv(tmp_path / "d.csv", ["text", "label"], rows), output_dir=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["test.csv", "train.csv", "val.csv"]
    again = module(out)
    for split in ("train", "val", "test"):
        assert [ex.text for ex in again.splits[split]] == [ex.text for ex in first.splits[split]]
        assert again.datasets[split] == first.datasets[split]


@pytest.mark.parametrize(
    ("name", "content", "line", "column"),
    [
        ("no_column.csv", b"body,label\nhello,a\n", 1, "text"),
        ("short_row.csv", b"text,label\nhello,a\nhello\n", 3, "label"),
        ("empty_text.csv", b"text,label\nhello,a\n  ,b\n", 3, "text"),
        ("empty_label.tsv", b"text\tlabel\nhello\ta\nbye\t\n", 3, "label"),
        ("bad_bytes.csv", b'text,label\nhello,a\n"two\nlines \xff",b\n', 3, "text"),
        (
            "bad_bytes.jsonl",
            b'{"text": "ok", "label": "a"}\n{"text": "\xfe", "label": "b"}\n',
            2,
            "text",
        ),
        (
            "missing_key.jsonl",
            b'{"text": "ok", "label": "a"}\n\n{"text": "no label"}\n',
            3,
            "label",
        ),
        ("unknown.csv", b"text,label\nhello,ham\nbuy now,spam\nwhat,eggs\n", 4, "label"),
        ("unclosed.csv", b'text,label\nhello,a\n"open,b\nmore\n', 3, None),
    ],
)
def test_bad_input_names_the_file_line_and_column(
    tmp_path: Path, name: str, content: bytes, line: int, column: str | None
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        module(path, labels=["ham", "spam"]) if name == "unknown.csv" else module(path)
    err = caught.value
    assert (err.path.name, err.line, err.column) == (name, line, column)
    assert str(path) in str(err) and f"line {line}" in str(err)
    assert column is None or f"column {column!r}" in str(err)


def test_a_held_out_label_missing_from_training_is_an_error(tmp_path: Path) -> None:
    header = ["text", "label"]
    folder = tmp_path / "split"
    folder.mkdir()
    write_csv(folder / "train.csv", header, [["a", "x"], ["b", "y"]])
    write_csv(folder / "validation.csv", header, [["c", "x"], ["d", "z"]])
    write_csv(folder / "test.csv", header, [["e", "y"]])
    with pytest.raises(DataError, match="unknown label 'z'") as caught:
        module(folder, batch_size=1)
    assert (caught.value.path.name, caught.value.line, caught.value.column) == (
        "validation.csv",
        3,
        "label",
    )
