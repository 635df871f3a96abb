"""Whole training runs as users start them: composed configs, run folders, sweeps, DDP, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from llmprep.training.run import train

TINY = (
    "model=gpt2-tiny",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.log_every_n_steps=1",
)
CSV = (*TINY, "logger=csv")


def _ckpt(run: Path, name: str = "last") -> dict:
    return torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)


def _losses(run: Path) -> list[float]:
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss")
    return [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]


@pytest.mark.parametrize(
    "model",
    [
        "gpt2-tiny",
        "gpt2-mini",
        pytest.param("gpt2-small", marks=pytest.mark.slow),
        pytest.param("gpt2-medium", marks=pytest.mark.slow),
    ],
)
def test_fast_dev_run_for_each_model_that_fits(compose_run, model):
    """gpt2-large and -xl need more memory for AdamW than a 24 GiB machine has."""
    train(compose_run(f"model={model}", "logger=none", "trainer.fast_dev_run=true"))


def test_run_folder_holds_config_checkpoints_logs_and_plot(compose_run, tmp_path):
    cfg = compose_run(*CSV)
    train(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "csv" / "metrics.csv").is_file()
    png = (run / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    ckpt = _ckpt(run)
    assert ckpt["hyper_parameters"]["config"]["model"]["name"] == "gpt2-tiny"
    # Batches of 2 windows of 64 tokens (data=verdict's window, shorter than the context).
    assert ckpt["tokens_seen"] == ckpt["global_step"] * 2 * 64


def test_same_seed_gives_same_losses(compose_run, tmp_path):
    short = (*CSV, "trainer.limit_train_batches=2", "trainer.limit_val_batches=0")
    train(compose_run(*short, "seed=7", run_dir=tmp_path / "a"))
    train(compose_run(*short, "seed=7", run_dir=tmp_path / "b"))
    train(compose_run(*short, "seed=8", run_dir=tmp_path / "c"))
    first, second, other = (_losses(tmp_path / n) for n in "abc")
    assert len(first) == 2
    assert first == second
    assert first != other


def test_resume_continues_at_the_same_step_lr_and_tokens(compose_run, tmp_path):
    base = (
        "model=gpt2-tiny",
        "logger=csv",
        "optim.warmup_steps=3",
        "trainer.limit_train_batches=3",
    )
    train(compose_run(*base, "trainer.max_epochs=2", run_dir=tmp_path / "a"))
    before = _ckpt(tmp_path / "a")
    steps_per_epoch = before["global_step"] // 2
    resumed = tmp_path / "b"
    train(
        compose_run(
            *base,
            "trainer.max_epochs=3",
            f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}",
            run_dir=resumed,
        )
    )
    after = _ckpt(resumed)
    assert after["global_step"] == before["global_step"] + steps_per_epoch
    assert after["tokens_seen"] == before["tokens_seen"] * 3 // 2
    assert after["lr_schedulers"][0]["last_epoch"] == after["global_step"]
    first_lr = before["optimizer_states"][0]["param_groups"][0]["lr"]
    assert first_lr == pytest.approx(before["lr_schedulers"][0]["_last_lr"][0])
    assert _ckpt(resumed)["callbacks"]  # the loss history travels with the checkpoint


def test_offline_wandb_run_records_metric_names(compose_run, tmp_path, capsys):
    train(compose_run(*TINY, "logger=wandb"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    names = (b"train/loss", b"val/loss", b"val/ppl", b"train/tokens_seen", b"train/lr", b"samples")
    deadline = time.monotonic() + 60  # the W&B service writes the run file in the background
    while True:
        data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        missing = [n for n in names if n not in data]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing
    assert f"wandb sync {runs[0]}" in capsys.readouterr().out


def test_secrets_from_the_environment_never_reach_the_logged_config(
    compose_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-123")
    cfg = compose_run(*CSV, "+notes=token is ${oc.env:MY_SERVICE_TOKEN}")
    train(cfg)
    hparams = (tmp_path / "run" / "csv" / "hparams.yaml").read_text()
    assert "s3cr3t-value-123" not in hparams
    assert "<redacted>" in hparams


def test_unknown_group_value_or_key_exits_with_hydras_message():
    bad_value = run_cli("train.py", "model=gpt2-nope")
    assert bad_value.returncode != 0
    assert "Could not find 'model/gpt2-nope'" in bad_value.stderr
    assert "Traceback" not in bad_value.stderr
    bad_key = run_cli("train.py", "optim.learning_rate=1")
    assert bad_key.returncode != 0
    assert "Could not override 'optim.learning_rate'" in bad_key.stderr


def test_sweep_of_ddp_cpu_jobs_gives_one_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train.py",
        "-m",
        *CSV,
        "hardware=ddp_cpu",
        "optim.lr=1e-3,3e-4",
        f"hydra.sweep.dir={sweep}",
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, lr in (("0", 0.001), ("1", 0.0003)):
        folder = sweep / job
        assert (folder / ".hydra" / "config.yaml").is_file()
        assert f"optim.lr={lr:g}" in (folder / ".hydra" / "overrides.yaml").read_text()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        hparams = _ckpt(folder)["hyper_parameters"]["config"]
        assert hparams["optim"]["lr"] == pytest.approx(lr)
        assert hparams["hardware"]["devices"] == 2
    assert not (Path("outputs").exists() and any(Path("outputs").glob("pretrain/*/*/.hydra")))
    assert json.dumps(jobs)
