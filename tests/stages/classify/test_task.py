"""The classify stage's task: pooling, padding, freezing, checkpoints and a fit through train.py."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from conftest import TINY_CLASSIFIER, run_cli

from llmprep.model import GPTConfig
from llmprep.stages.classify.data import encode_texts
from llmprep.stages.classify.task import ClassifyTask, pool_logits
from llmprep.training.optim import build_adamw

PAD = 50256


def make_task(
    pooling: str = "last_real",
    trainable: str = "last_block",
    n_blocks: int = 1,
    labels: tuple[str, ...] = ("ham", "spam"),
    dropout: float = 0.0,
    lowercase: bool = False,
) -> ClassifyTask:
    """A 3-block, 16-wide classifier with random weights, in eval mode."""
    torch.manual_seed(0)
    config = {
        "stage": {"pooling": pooling, "trainable": trainable, "n_blocks": n_blocks},
        "optim": {"lr": 1e-2, "weight_decay": 0.1, "decay_all": True},
        "lora": {"rank": 0, "alpha": 16, "dropout": 0.0},
    }
    model_config = asdict(
        GPTConfig(context_length=32, emb_dim=16, n_layers=3, n_heads=2, dropout=dropout)
    )
    return ClassifyTask(config, model_config, list(labels), lowercase=lowercase).eval()


def test_pooling_reads_the_chosen_position() -> None:
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    lengths = torch.tensor([2, 4])

    assert torch.equal(pool_logits(logits, lengths, "last_real"), logits[[0, 1], [1, 3]])
    assert torch.equal(pool_logits(logits, lengths, "last"), logits[:, -1])
    mean = torch.stack([logits[0, :2].mean(0), logits[1].mean(0)])
    assert torch.allclose(pool_logits(logits, lengths, "mean"), mean)
    with pytest.raises(ValueError, match="lengths"):
        pool_logits(logits, None, "last_real")
    with pytest.raises(ValueError, match=r"stage\.pooling='first'"):
        pool_logits(logits, lengths, "first")


@pytest.mark.parametrize("pooling", ["last_real", "mean"])
def test_padding_after_the_text_does_not_change_its_logits(pooling: str) -> None:
    task = make_task(pooling)
    texts = ["Win a free prize now", "see you at lunch, ok?"]
    short = encode_texts(texts, context_length=32)
    padded = encode_texts(texts, context_length=32, pad_to_length=24)
    assert (padded["input_ids"][:, 12:] == PAD).all()

    with torch.no_grad():
        a = task(short["input_ids"], short["lengths"])
        b = task(padded["input_ids"], padded["lengths"])
    assert a.shape == (2, 2)
    assert torch.allclose(a, b, atol=1e-5)


def test_book_pooling_reads_the_padding() -> None:
    task = make_task("last")
    short = encode_texts(["see you at lunch"], context_length=32)
    padded = encode_texts(["see you at lunch"], context_length=32, pad_to_length=24)
    with torch.no_grad():
        a = task(short["input_ids"], short["lengths"])
        b = task(padded["input_ids"], padded["lengths"])
    assert not torch.allclose(a, b, atol=1e-5)


def trainable_names(task: ClassifyTask) -> set[str]:
    return {name for name, p in task.model.named_parameters() if p.requires_grad}


def test_last_block_trains_only_the_top_and_the_new_head() -> None:
    task = make_task(trainable="last_block", labels=("a", "b", "c"))
    assert task.model.out_head.out_features == 3 and task.model.out_head.bias is not None
    names = trainable_names(task)
    assert names == {n for n, _ in task.model.named_parameters() if n.startswith("blocks.2.")} | {
        "final_norm.weight",
        "final_norm.bias",
        "out_head.weight",
        "out_head.bias",
    }

    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    optimizer = build_adamw(task.named_parameters(), task.config["optim"])
    batch = encode_texts(["Win a free prize now", "see you at lunch"], context_length=32)
    loss = torch.nn.functional.cross_entropy(
        task.train()(batch["input_ids"], batch["lengths"]), torch.tensor([1, 0])
    )
    loss.backward()
    optimizer.step()

    for name, p in task.model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in names), name


def test_other_trainable_choices() -> None:
    assert trainable_names(make_task(trainable="head")) == {"out_head.weight", "out_head.bias"}
    two = trainable_names(make_task(trainable="last_n_blocks", n_blocks=2))
    assert {n.split(".")[1] for n in two if n.startswith("blocks.")} == {"1", "2"}
    everything = make_task(trainable="all")
    assert trainable_names(everything) == {n for n, _ in everything.model.named_parameters()}
    with pytest.raises(ValueError, match=r"stage\.n_blocks=4"):
        make_task(trainable="last_n_blocks", n_blocks=4)
    with pytest.raises(ValueError, match=r"stage\.trainable='top'"):
        make_task(trainable="top")


def test_checkpoint_restores_the_head_and_labels(tmp_path: Path) -> None:
    task = make_task(labels=("neg", "neu", "pos"))
    path = tmp_path / "task.ckpt"
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    restored = ClassifyTask.load_from_checkpoint(path, weights_only=True).eval()
    assert restored.label_names == ["neg", "neu", "pos"]
    batch = encode_texts(["how was the film"], context_length=32)
    with torch.no_grad():
        assert torch.equal(restored(**batch), task(**batch))
    [prediction] = restored.classify(["how was the film"])
    assert prediction.label in {"neg", "neu", "pos"}
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert prediction.probability == max(prediction.probabilities.values())


def test_classify_runs_without_dropout_and_keeps_the_training_mode() -> None:
    task = make_task(dropout=0.5).train()
    texts = ["WIN a free prize, call now", "see you at lunch"]
    first, second = task.classify(texts), task.classify(texts)
    assert [p.probabilities for p in first] == [p.probabilities for p in second]
    assert task.training and all(module.training for module in task.modules())


def test_a_classifier_trained_on_lowered_texts_lowers_what_it_classifies() -> None:
    def probabilities(task: ClassifyTask, text: str) -> dict[str, float]:
        return task.classify([text])[0].probabilities

    lowered, cased = make_task(lowercase=True), make_task()
    shouted, quiet = "WIN A FREE PRIZE NOW", "win a free prize now"
    assert probabilities(lowered, shouted) == probabilities(lowered, quiet)
    assert probabilities(cased, shouted) != probabilities(cased, quiet)


def write_dataset(path: Path, rows: int = 40) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["message", "kind"])
        for i in range(rows):
            if i % 2:
                writer.writerow([f"WIN cash prize {i} now, call 0800", "junk"])
            else:
                writer.writerow([f"see you at lunch on day {i}", "ok"])
    return path


def test_fit_through_the_command_line(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "messages.csv")
    run = tmp_path / "run"
    result = run_cli(
        "train.py",
        *TINY_CLASSIFIER,
        f"data.path={data}",
        "data.text_column=message",
        "data.label_column=kind",
        "data.batch_size=4",
        "stage.trainable=all",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        f"hydra.run.dir={run}",
        "logger=csv",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best.ckpt (the run's splits" in result.stdout and "accuracy" in result.stdout
    assert "parameters:" in result.stderr + result.stdout

    assert (run / "checkpoints" / "best.ckpt").is_file()
    splits = {
        split: list(csv.DictReader((run / f"{split}.csv").open(encoding="utf-8")))
        for split in ("train", "val", "test")
    }
    assert [len(rows) for rows in splits.values()] == [28, 4, 8]
    assert {row["label"] for row in splits["train"]} == {"junk", "ok"}

    with (run / "csv" / "metrics.csv").open(encoding="utf-8") as fh:
        metrics = list(csv.DictReader(fh))
    logged = {key for row in metrics for key, value in row.items() if value}
    assert {"train/acc", "val/acc", "val/f1", "val/loss", "test/acc", "test/f1"} <= logged
    assert {"best/train/acc", "best/val/acc"} <= logged
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["params/trainable"] == hparams["params/total"]

    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["label_names"] == ["junk", "ok"]
    assert ckpt["state_dict"]["model.out_head.weight"].shape == (2, 64)


def test_bad_data_stops_the_command_with_the_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("text,label\nhello there,ok\n,spam\n", encoding="utf-8")
    result = run_cli(
        "train.py",
        *TINY_CLASSIFIER,
        f"data.path={data}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=none",
    )
    assert result.returncode != 0
    assert f"{data}, line 3, column 'text': empty text" in result.stderr


def test_experiments_compose_to_their_documented_settings(compose_run) -> None:
    book = compose_run("experiment=book_ch06")
    scratch = compose_run("experiment=spam_from_scratch")
    assert book.stage.name == scratch.stage.name == "classify"
    assert (book.model.name, book.init_from, book.seed) == (
        "gpt2-small",
        "openai-community/gpt2",
        123,
    )
    assert (book.stage.trainable, book.stage.pooling) == ("last_block", "last")
    assert (book.optim.lr, book.optim.weight_decay, book.optim.decay_all) == (5e-5, 0.1, True)
    assert (book.trainer.max_epochs, book.data.batch_size, book.data.path) == (5, 8, "sms-spam")
    assert scratch.init_from is None and scratch.stage.trainable == "all"
    assert (scratch.model.name, scratch.stage.pooling, scratch.data.lowercase) == (
        "gpt2-mini",
        "mean",
        True,
    )
    assert (scratch.optim.lr, scratch.optim.weight_decay, scratch.hardware.threads) == (
        2e-3,
        1.0,
        1,
    )


def test_a_trained_classifier_head_is_kept_and_a_vocabulary_head_replaced() -> None:
    trained = make_task()
    with torch.no_grad():
        trained.model.out_head.weight.fill_(7.0)
    again = ClassifyTask(
        trained.config, asdict(trained.model.config), ["ham", "spam"], model=trained.model
    )
    assert torch.equal(again.model.out_head.weight, torch.full((2, 16), 7.0))
    three = ClassifyTask(
        trained.config, asdict(trained.model.config), ["a", "b", "c"], model=trained.model
    )
    assert three.model.out_head.out_features == 3
    assert not torch.equal(three.model.out_head.weight[:2], torch.full((2, 16), 7.0))
