"""Evaluating a classifier checkpoint: split scores, confusion matrices, predictions, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLASSIFIER, run_cli
from omegaconf import OmegaConf

from llmprep.stages import load_task
from llmprep.stages.classify.evaluate import predict_texts, read_texts, split_datamodule


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny classify run on 30 synthetic messages of three classes."""
    folder = tmp_path_factory.mktemp("classify")
    data = folder / "messages.jsonl"
    kinds = ["greeting", "offer", "question"]
    texts = ["hello there friend {}", "WIN cash prize {} now", "what time is it {}?"]
    data.write_text(
        "".join(
            json.dumps({"text": texts[i % 3].format(i), "label": kinds[i % 3]}) + "\n"
            for i in range(30)
        ),
        encoding="utf-8",
    )
    result = run_cli(
        "train.py",
        *TINY_CLASSIFIER,
        f"data.path={data}",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        f"hydra.run.dir={folder / 'run'}",
        "logger=csv",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


def test_evaluate_scores_every_split_like_the_run_did(run: Path) -> None:
    """Without ``stage=``: the checkpoint's stage (classify, not the default pretrain)."""
    ckpt = run / "checkpoints" / "best.ckpt"
    result = run_cli("evaluate.py", f"ckpt_path={ckpt}", f"hydra.run.dir={run / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Confusion matrices" in result.stdout
    for split in ("train", "val", "test"):
        assert split in result.stdout

    report = json.loads((run / "checkpoints" / "best.eval.json").read_text())
    assert report["labels"] == ["greeting", "offer", "question"]
    assert report["f1"] == "macro F1 over 3 labels"
    assert report["splits"].startswith("saved splits")
    results = report["results"]
    assert [results[s]["examples"] for s in ("train", "val", "test")] == [21, 3, 6]
    for scores in results.values():
        matrix = scores["confusion_matrix"]
        assert len(matrix) == 3 and sum(map(sum, matrix)) == scores["examples"]
        correct = sum(matrix[i][i] for i in range(3))
        assert scores["accuracy"] == pytest.approx(correct / scores["examples"])

    with (run / "csv" / "metrics.csv").open(encoding="utf-8") as fh:
        logged = {k: float(v) for row in csv.DictReader(fh) for k, v in row.items() if v}
    assert results["test"]["accuracy"] == pytest.approx(logged["test/acc"], abs=1e-6)
    assert results["train"]["loss"] == pytest.approx(logged["best/train/loss"], abs=1e-5)


def test_evaluate_labels_given_texts(run: Path, tmp_path: Path) -> None:
    ckpt = run / "checkpoints" / "best.ckpt"
    texts = tmp_path / "texts.txt"
    texts.write_text("WIN cash prize 99 now\n\nwhat time is it 7?\r\n", encoding="utf-8")
    result = run_cli(
        "evaluate.py",
        "stage=classify",
        f"ckpt_path={ckpt}",
        "eval.text=hello there friend",
        f"eval.texts_file={texts}",
        f"hydra.run.dir={run / 'predict'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predictions" in result.stdout

    out = json.loads((run / "checkpoints" / "best.predictions.json").read_text())
    rows = out["predictions"]
    assert [r["source"] for r in rows] == ["eval.text", f"{texts}:1", f"{texts}:3"]
    assert [r["text"] for r in rows] == [
        "hello there friend",
        "WIN cash prize 99 now",
        "what time is it 7?",
    ]
    for r in rows:
        assert r["label"] in {"greeting", "offer", "question"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)
        assert r["probability"] == max(r["probabilities"].values())


def test_splits_are_re_derived_identically_without_the_saved_files(
    run: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved" / "checkpoints" / "best.ckpt"
    moved.parent.mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "best.ckpt", moved)
    task = load_task(moved, "classify", torch.device("cpu"))
    task.run_config["paths"]["output_dir"] = str(tmp_path / "gone")
    saved, saved_origin = split_datamodule(task, run / "checkpoints" / "best.ckpt", batch_size=8)
    derived, derived_origin = split_datamodule(task, moved, batch_size=8)

    assert saved_origin.startswith("saved splits") and derived_origin.startswith("re-derived")
    for split in ("train", "val", "test"):
        ours = [(ex.text, ex.label) for ex in derived.splits[split]]
        assert ours == [(ex.text, ex.label) for ex in saved.splits[split]]
    assert derived.pad_length == saved.pad_length == task.hparams["pad_length"]


def test_texts_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"eval\.texts_file=.*missing\.txt"):
        read_texts(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 2: holds bytes that are not UTF-8"):
        read_texts(bad)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"blank\.txt: holds no texts"):
        read_texts(blank)


def test_empty_text_is_refused(run: Path) -> None:
    ckpt = run / "checkpoints" / "best.ckpt"
    task = load_task(ckpt, "classify", torch.device("cpu"))
    cfg = OmegaConf.create({"eval": {"text": "  ", "texts_file": None, "batch_size": 8}})
    with pytest.raises(ValueError, match=r"eval\.text is empty"):
        predict_texts(task, ckpt, cfg)
