"""Evaluation of a classifier checkpoint: accuracy, F1 and confusion matrix of every split, or
the labels of given texts (``eval.text``, ``eval.texts_file``).

The splits are the run's own: the ``train``/``val``/``test`` CSVs the data module saved
in the run folder when they are there (the exact examples trained on, whatever happened to the
source since), else re-derived from the run's data config and seed (the same examples as long
as the source file is unchanged); the JSON names which was used.
"""

from __future__ import annotations

import codecs
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from llmprep.data.records import SPLIT_STEMS
from llmprep.files import write_json_atomically
from llmprep.stages import load_task, stored_datamodule
from llmprep.stages.classify.data import SPLITS, ClassificationDataModule
from llmprep.stages.classify.task import ClassifyTask
from llmprep.training.report import eval_trainer, print_table, results_path, score


def saved_splits(ckpt_path: Path, config: dict[str, Any]) -> Path | None:
    """The run folder holding the saved split CSVs: the checkpoint's run folder (it sits in
    ``<run>/checkpoints``) or the run's recorded output folder; ``None`` when neither has them."""
    recorded = config.get("paths", {}).get("output_dir")
    candidates = [ckpt_path.parent.parent] + ([Path(recorded)] if recorded else [])
    for folder in candidates:
        if all(
            any((folder / f"{s}.csv").is_file() for s in SPLIT_STEMS[split]) for split in SPLITS
        ):
            return folder
    return None


def split_datamodule(
    task: ClassifyTask, ckpt_path: Path, batch_size: int
) -> tuple[ClassificationDataModule, str]:
    """The run's data module with its three splits set up, and where the splits came from."""
    data = dict(task.run_config["data"])
    folder = saved_splits(ckpt_path, task.run_config)
    if folder is not None:
        data.update(path=str(folder), format=None, columns=None, text_column="text")
        data.update(label_column="label")
        origin = f"saved splits in {folder}"
    else:
        origin = f"re-derived from {data['path']} with seed {data['seed']}"
    data.update(labels=task.label_names, batch_size=batch_size, num_workers=0)
    datamodule = stored_datamodule(
        "classify", data, context_length=task.hparams["model_config"]["context_length"]
    )
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule, origin


def f1_meaning(label_names: list[str]) -> str:
    """What the reported F1 is (see ``llmprep.stages.classify.task``)."""
    if len(label_names) == 2:
        return f"binary F1 of label {label_names[1]!r}"
    return f"macro F1 over {len(label_names)} labels"


def report(
    trainer: L.Trainer,
    task: ClassifyTask,
    datamodule: ClassificationDataModule,
    ckpt_path: Path | None,
    cfg: DictConfig,
    load: bool = True,
    origin: str = "the run's splits",
) -> dict[str, Any]:
    """Accuracy, F1 and loss of train, validation and test (``score``), their confusion
    matrices, and ``<checkpoint>.eval.json``; rank 0 prints and writes."""
    names = task.label_names
    weights = ckpt_path.name if ckpt_path else "final weights"
    title = f"{weights} ({origin}; F1: {f1_meaning(names)})"
    results = score(trainer, task, datamodule, ckpt_path, load, title)
    if not trainer.is_global_zero:
        return results
    print_table(
        "Confusion matrices (rows: true label, columns: predicted)",
        [
            {"split": split, "true": names[i], **dict(zip(names, row, strict=True))}
            for split, r in results.items()
            for i, row in enumerate(r["confusion_matrix"])
        ],
    )
    out = write_json_atomically(
        results_path(ckpt_path, trainer),
        {
            "checkpoint": str(ckpt_path),
            "labels": names,
            "splits": origin,
            "f1": f1_meaning(names),
            "results": results,
        },
    )
    print(f"results written to {out}")
    return results


def read_texts(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, text)`` for each non-blank line of a UTF-8 file (one text per line)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
        lines = raw.decode("utf-8").split("\n")
    except OSError as err:
        raise FileNotFoundError(f"eval.texts_file={str(path)!r}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        number = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {number}: holds bytes that are not UTF-8") from None
    texts = [(n, line.rstrip("\r")) for n, line in enumerate(lines, start=1) if line.strip()]
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
                **{k: r[k] for k in ("source", "label", "probability")},
                "text": r["text"] if len(r["text"]) <= 60 else r["text"][:57] + "...",
            }
            for r in rows
        ],
    )
    out = write_json_atomically(
        ckpt_path.with_name(f"{ckpt_path.stem}.predictions.json"),
        {"checkpoint": str(ckpt_path), "labels": task.label_names, "predictions": rows},
    )
    print(f"predictions written to {out}")
    return rows


def evaluate(cfg: DictConfig, ckpt_path: Path) -> Any:
    """``predict_texts`` when ``eval.text`` or ``eval.texts_file`` is given, else :func:`report`
    on the run's splits; results go to ``<checkpoint>.predictions.json`` or ``.eval.json``."""
    task = load_task(ckpt_path, "classify")
    if cfg.eval.text is not None or cfg.eval.texts_file is not None:
        return predict_texts(task, ckpt_path, cfg)
    datamodule, origin = split_datamodule(task, ckpt_path, cfg.eval.batch_size)
    return report(eval_trainer(cfg), task, datamodule, ckpt_path, cfg, load=False, origin=origin)
