"""The instruct stage: a real fine-tuning run, its test answers, batching, and its configs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer, run_cli
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from llmprep.model import GPT, GPTConfig
from llmprep.run import train
from llmprep.stages.instruct.data import InstructDataModule
from llmprep.stages.instruct.task import InstructTask
from llmprep.tokenizer import get_tokenizer

TINY = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_layers=1, n_heads=2)
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "rock", "fish"]


def instruction_records(n: int) -> list[dict[str, str]]:
    return [
        {
            "instruction": f"Repeat the word {WORDS[i % 10]}.",
            "input": "" if i % 2 else f"case {i}",
            "output": f"{WORDS[i % 10]} {WORDS[i % 10]}",
        }
        for i in range(n)
    ]


def train_cli(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli(
        "train.py",
        "stage=instruct",
        "model=gpt2-tiny",
        "init_from=null",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "stage.sample.max_new_tokens=5",
        "stage.generation.limit=2",
        "stage.generation.max_new_tokens=5",
        "logger=csv",
        f"hydra.run.dir={run}",
        *overrides,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny fine-tuning run (40 records: 34 train, 4 test, 2 validation), plain prompts."""
    folder = tmp_path_factory.mktemp("instruct")
    data = folder / "records.json"
    data.write_text(json.dumps(instruction_records(40)), encoding="utf-8")
    out = folder / "run"
    result = train_cli(out, "data=instruct_file", f"data.path={data}", "data.prompt_style=plain")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_fit_answers_the_first_test_records_into_the_run_folder(run: Path) -> None:
    answered = json.loads((run / "test_responses.json").read_text(encoding="utf-8"))
    test_split = json.loads((run / "test.json").read_text(encoding="utf-8"))
    assert len(test_split) == 4 and len(answered) == 2  # generation.limit=2
    for record, row in zip(test_split, answered, strict=False):
        assert list(row) == ["instruction", "input", "output", "model_response"]
        assert {k: row[k] for k in ("instruction", "input", "output")} == record
        assert isinstance(row["model_response"], str)


def test_checkpoint_keeps_the_prompt_style_the_model_was_trained_with(run: Path) -> None:
    ckpt = run / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["prompt_style"] == "plain"
    assert InstructTask.load_from_checkpoint(ckpt, weights_only=True).style.name == "plain"


def test_validation_and_test_losses_are_logged_and_samples_printed(run: Path) -> None:
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"train/loss", "val/loss", "val/ppl", "test/loss", "test/ppl"} <= logged
    log = (run / "train.log").read_text(encoding="utf-8")
    validation = json.loads((run / "val.json").read_text(encoding="utf-8"))
    for record in validation:
        assert f"sample at step 2: instruction: {record['instruction']!r} | " in log


def test_bad_records_fail_the_command_naming_file_record_and_field(tmp_path: Path) -> None:
    records = instruction_records(20)
    del records[3]["output"]
    data = tmp_path / "broken.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    result = train_cli(tmp_path / "run", "data=instruct_file", f"data.path={data}")
    assert result.returncode != 0
    assert str(data) in result.stderr
    assert "record 3" in result.stderr and "output" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


class ScriptedLM(nn.Module):
    """Emits ``script`` one token per step for every row, whatever the prompt."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.config = TINY
        self.script = script
        self.steps = 0

    def forward(self, idx: torch.Tensor, kv_cache=None, **_: object) -> torch.Tensor:
        logits = torch.zeros(idx.shape[0], idx.shape[1], TINY.vocab_size)
        logits[:, -1, self.script[min(self.steps, len(self.script) - 1)]] = 1.0
        self.steps += 1
        return logits


def tiny_task(style: str = "alpaca") -> InstructTask:
    torch.manual_seed(0)
    return InstructTask({}, vars(TINY), prompt_style=style)


def test_answer_stops_at_the_end_token_and_follows_a_repeated_response_marker() -> None:
    task = tiny_task("alpaca")
    tok = get_tokenizer()
    script = [*tok.encode("### Response:\nBlue."), tok.eot_id, *tok.encode(" never read")]
    task.model = ScriptedLM(script)
    (row,) = task.respond(instruction_records(1), max_new_tokens=20)
    assert row["model_response"] == "Blue."


def test_continuations_are_cut_before_the_first_stop_string() -> None:
    task = tiny_task()
    tok = get_tokenizer()
    task.model = ScriptedLM([*tok.encode("Blue.\n### Instruction: more"), tok.eot_id])
    prompts = [tok.encode("Say a colour."), tok.encode("A much longer prompt asking for a colour.")]
    texts = task.continuations(prompts, 20, batch_size=2, stop=("###", "Never"))
    assert texts == ["Blue.\n", "Blue.\n"]
    assert task.model.steps == len(tok.encode("Blue.\n###"))  # both rows stopped there


def test_batched_answers_equal_one_prompt_at_a_time() -> None:
    task = tiny_task()
    records = instruction_records(7)
    prompts = [task.style.format_prompt(r["instruction"], r["input"]) for r in records]
    lengths = [len(ids) for ids in get_tokenizer().encode_ordinary_batch(prompts)]
    assert len(set(lengths)) > 1  # prompts of different lengths share a batch
    alone = task.respond(records, max_new_tokens=6, batch_size=1)
    batched = task.respond(records, max_new_tokens=6, batch_size=4)
    assert batched == alone


def test_fast_dev_run_answers_one_record_per_batch_it_runs(tmp_path: Path, compose_run) -> None:
    data = tmp_path / "records.json"
    data.write_text(json.dumps(instruction_records(40)), encoding="utf-8")
    cfg = compose_run(
        "stage=instruct",
        "model=gpt2-tiny",
        "init_from=null",
        "data=instruct_file",
        f"data.path={data}",
        "logger=none",
        "trainer.fast_dev_run=true",
        "stage.generation.max_new_tokens=2",
    )
    train(cfg)
    answered = json.loads((tmp_path / "run" / "test_responses.json").read_text())
    assert len(answered) == 1  # no checkpoint kept: the final weights answer one record


@pytest.mark.parametrize("bucket", [False, True])
def test_prompts_that_fill_the_context_never_make_the_logged_training_loss_nan(
    tmp_path: Path, bucket: bool
) -> None:
    records = [
        {**r, "input": "many words " * 60} if i % 2 == 0 else r
        for i, r in enumerate(instruction_records(16))
    ]
    data = tmp_path / "records.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    datamodule = InstructDataModule(
        path=str(data),
        mask_prompt=True,
        max_length=48,
        context_length=TINY.context_length,
        batch_size=1,
        bucket=bucket,
    )
    task = tiny_task()
    task.config["optim"] = {"lr": 1e-3, "weight_decay": 0.0}
    trainer = quiet_trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=datamodule)
    with open(Path(trainer.logger.log_dir) / "metrics.csv", encoding="utf-8") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert len(losses) == 6  # of 13 training records, the 6 short ones train
    assert all(math.isfinite(loss) for loss in losses)


def test_bucketing_is_refused_with_several_processes(tmp_path: Path) -> None:
    data = tmp_path / "records.json"
    data.write_text(json.dumps(instruction_records(20)), encoding="utf-8")

    def datamodule(bucket: bool, devices: int) -> InstructDataModule:
        module = InstructDataModule(path=str(data), bucket=bucket, context_length=64)
        strategy = "ddp" if devices > 1 else "auto"
        module.trainer = L.Trainer(
            accelerator="cpu", devices=devices, strategy=strategy, logger=False
        )
        return module

    datamodule(True, 1).setup("fit")
    datamodule(False, 2).setup("fit")
    with pytest.raises(ValueError, match=r"data\.bucket=true works with one process only.* 2"):
        datamodule(True, 2).setup("fit")


def test_a_classifier_head_is_refused() -> None:
    model = GPT(TINY)
    model.out_head = nn.Linear(TINY.emb_dim, 2)
    with pytest.raises(ValueError, match="out_head has 2"):
        InstructTask({}, vars(TINY), model=model)


def test_stage_defaults_are_the_books_optimizer_on_pretrained_gpt2(compose_run) -> None:
    cfg = compose_run("stage=instruct")
    assert (cfg.stage.name, cfg.stage.monitor) == ("instruct", "val/loss")
    assert (cfg.model.name, cfg.init_from) == ("gpt2-small", "openai-community/gpt2")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.decay_all) == (5e-5, 0.1, True)
    assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.data.path) == (
        2,
        8,
        "instruction-data",
    )
    assert cfg.stage.generation.max_new_tokens == 256 and cfg.stage.generation.limit is None
    assert compose_run("stage=instruct", "model=gpt2-tiny").model.name == "gpt2-tiny"


def test_book_chapter_7_experiment_composes(compose_run) -> None:
    cfg = compose_run("experiment=book_ch07")
    assert cfg.stage.name == "instruct"
    assert (cfg.model.name, cfg.init_from) == ("gpt2-medium", "openai-community/gpt2-medium")
    assert (cfg.seed, cfg.data.prompt_style, cfg.data.batch_size) == (123, "alpaca", 8)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.trainer.max_epochs) == (5e-5, 0.1, 2)
