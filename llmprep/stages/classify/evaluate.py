"""Evaluation of a classifier checkpoint: accuracy, F1 and confusion matrix of every split, or
the labels of given texts (``eval.text``, ``eval.texts_file``).

The splits are the run's own: the ``train``/``validation``/``test`` CSVs the data module saved
in the run folder when they are there (the exact examples trained on, whatever happened to the
source since), else re-derived from the run's data config and seed (the same examples as long
as the source file is unchanged); the JSON names which was used.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from llmprep.files import write_json_atomically
from llmprep.stages import load_task, stored_datamodule
from llmprep.stages.classify.data import SPLITS, ClassificationDataModule
from llmprep.stages.classify.task import ClassificationScores, ClassifyTask
from llmprep.training.report import (
    eval_device,
    print_table,
    results_path,
)


def saved_splits(ckpt_path: Path, config: dict[str, Any]) -> Path | None:
    """The run folder holding the saved split CSVs: the checkpoint's run folder (it sits in
    ``<run>/checkpoints``) or the run's recorded output folder; ``None`` when neither has them."""
    recorded = config.get("paths", {}).get("output_dir")
    candidates = [ckpt_path.parent.parent] + ([Path(recorded)] if recorded else [])
    for folder in candidates:
        if all((folder / f"{split}.csv").is_file() for split in SPLITS):
            return folder
    return None


def split_datamodule(
    task: ClassifyTask, ckpt_path: Path, batch_size: int
) -> tuple[ClassificationDataModule, str]:
    """The run's data module with its three splits set up, and where the splits came from."""
    data = dict(task.config["data"])
    folder = saved_splits(ckpt_path, task.config)
    if folder is not None:
        data.update(path=str(folder), format=None, columns=None, text_column="text")
        data.update(label_column="label")
        origin = f"saved splits in {folder}"
    else:
        origin = f"re-derived from {data['path']} with seed {data['seed']}"
    data.update(labels=task.label_names, batch_size=batch_size, num_workers=0)
    datamodule = stored_datamodule(
        "classify",
        data,
        context_length=task.hparams["model_config"]["context_length"],
        output_dir=None,
    )
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule, origin


@torch.no_grad()
def score_split(
    task: ClassifyTask, datamodule: ClassificationDataModule, split: str, device: torch.device
) -> dict[str, Any]:
    """Accuracy, F1, loss and confusion matrix of ``task`` on one split."""
    scores = ClassificationScores(task.num_classes).to(device)
    for batch in datamodule.eval_dataloader(split):
        batch = {key: value.to(device) for key, value in batch.items()}
        scores.update(task(batch["input_ids"], batch["lengths"]), batch["labels"])
    return scores.compute()


def f1_meaning(label_names: list[str]) -> str:
    """What the reported F1 is (see ``llmprep.stages.classify.task``)."""
    if len(label_names) == 2:
        return f"binary F1 of label {label_names[1]!r}"
    return f"macro F1 over {len(label_names)} labels"


def evaluate_splits(task: ClassifyTask, ckpt_path: Path, cfg: DictConfig) -> dict[str, Any]:
    """Score train, validation and test; print them and their confusion matrices; write JSON."""
    datamodule, origin = split_datamodule(task, ckpt_path, cfg.eval.batch_size)
    results = {split: score_split(task, datamodule, split, task.device) for split in SPLITS}
    names = task.label_names
    print_table(
        f"{ckpt_path.name} ({origin}; F1: {f1_meaning(names)})",
        [
            {
                "split": split,
                "examples": r["examples"],
                "accuracy": r["acc"],
                "f1": r["f1"],
                "loss": r["loss"],
            }
            for split, r in results.items()
        ],
    )
    print_table(
        "Confusion matrices (rows: true label, columns: predicted)",
        [
            {"split": split, "true": names[i], **dict(zip(names, row, strict=True))}
            for split, r in results.items()
            for i, row in enumerate(r["confusion"])
        ],
    )
    report = {
        "checkpoint": str(ckpt_path),
        "labels": names,
        "splits": origin,
        "f1": f1_meaning(names),
        "results": {
            split: {
                "examples": r["examples"],
                "accuracy": r["acc"],
                "f1": r["f1"],
                "loss": r["loss"],
                "confusion_matrix": r["confusion"],
            }
            for split, r in results.items()
        },
    }
    out = write_json_atomically(results_path(ckpt_path), report)
    print(f"results written to {out}")
    return report


def read_texts(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, text)`` for each non-blank line of a UTF-8 file (one text per line)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"eval.texts_file={str(path)!r}: {err.strerror}") from None
    texts = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise ValueError(f"{path}, line {number}: holds bytes that are not UTF-8") from None
        if text.strip():
            texts.append((number, text))
    if not texts:
        raise ValueError(f"{path}: holds no texts (expected one text per line)")
    return texts


def predict_texts(task: ClassifyTask, ckpt_path: Path, cfg: DictConfig) -> list[dict[str, Any]]:
    """Label ``eval.text`` and each line of ``eval.texts_file``; print them and write JSON."""
    sources: list[tuple[str, str]] = []
    if cfg.eval.text is not None:
        if not str(cfg.eval.text).strip():
            raise ValueError("eval.text is empty: there is nothing to classify")
        sources.append(("eval.text", str(cfg.eval.text)))
    if cfg.eval.texts_file is not None:
        file = Path(cfg.eval.texts_file)
        sources += [(f"{file}:{n}", text) for n, text in read_texts(file)]
    predictions = task.classify([text for _, text in sources], cfg.eval.batch_size)
    rows = [
        {"source": source, **asdict(p)} for (source, _), p in zip(sources, predictions, strict=True)
    ]
    print_table(
        f"{ckpt_path.name}: predictions",
        [
            {
                "source": r["source"],
                "label": r["label"],
                "probability": r["probability"],
                "text": r["text"] if len(r["text"]) <= 60 else r["text"][:57] + "...",
            }
            for r in rows
        ],
    )
    out = write_json_atomically(
        results_path(ckpt_path, "predictions"),
        {"checkpoint": str(ckpt_path), "labels": task.label_names, "predictions": rows},
    )
    print(f"predictions written to {out}")
    return rows


def evaluate(cfg: DictConfig, ckpt_path: Path) -> Any:
    """``predict_texts`` when ``eval.text`` or ``eval.texts_file`` is given, else
    ``evaluate_splits``; results go to ``<checkpoint>.predictions.json`` or ``.eval.json``."""
    task = load_task(ckpt_path, "classify", eval_device(cfg))
    if cfg.eval.text is not None or cfg.eval.texts_file is not None:
        return predict_texts(task, ckpt_path, cfg)
    return evaluate_splits(task, ckpt_path, cfg)
