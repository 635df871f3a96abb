"""Whole training runs as users start them: composed configs, run folders, sweeps, DDP, resume."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_cli
from crash import Crashed

from llmprep.run import train
from llmprep.training.task import GPTTask

TINY = (
    "model=gpt2-tiny",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.log_every_n_steps=1",
)
CSV = (*TINY, "logger=csv")


def _ckpt(run: Path, name: str = "last") -> dict:
    return torch.load(run / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=True)


def _step_losses(run: Path) -> list[tuple[int, float]]:
    """``(step, train/loss)`` of every logged training loss of a run, in order."""
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return [
            (int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r["train/loss"]
        ]


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
    assert ckpt["config"]["model"]["name"] == "gpt2-tiny"
    # Batches of 2 windows of 64 tokens (data=verdict's window, shorter than the context).
    assert ckpt["tokens_seen"] == ckpt["global_step"] * 2 * 64
    # LearningRateMonitor's train/lr: the first 4 of the 10 warmup steps to lr 1e-3.
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        lrs = [float(r["train/lr"]) for r in csv.DictReader(f) if r["train/lr"]]
    assert lrs == pytest.approx([1e-4, 2e-4, 3e-4, 4e-4])
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["params/trainable"] == hparams["params/total"] > 0


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


def test_compiled_run_trains_validates_and_saves_the_plain_keys(compose_run, tmp_path):
    """``compile=true`` trains and validates through the compiled blocks; the checkpoint's
    weights keep the uncompiled names (no ``_orig_mod.``), so it loads anywhere."""
    short = (*TINY, "logger=none", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    train(compose_run(*short, "compile=true", "test_after_fit=false"))
    ckpt = _ckpt(tmp_path / "run")
    assert ckpt["hyper_parameters"]["config"]["compile"] is True
    task = GPTTask(ckpt["hyper_parameters"]["config"], ckpt["hyper_parameters"]["model_config"])
    assert task.model.compiled_blocks is not None
    assert list(ckpt["state_dict"]) == list(task.state_dict())
    assert not any("_orig_mod" in key for key in ckpt["state_dict"])


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


def _default_run_folders() -> set[Path]:
    """The checkout's default run folders, ``outputs/pretrain/<day>/<time>``: a user's own runs
    are there, so a test may only check that it added none."""
    return set((ROOT / "outputs").glob("pretrain/*/*"))


def test_sweep_of_ddp_cpu_jobs_gives_one_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    before = _default_run_folders()
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
        hparams = _ckpt(folder)["config"]
        assert hparams["optim"]["lr"] == pytest.approx(lr)
        assert hparams["hardware"]["devices"] == 2
    assert _default_run_folders() == before  # no DDP process made a run folder of its own
    # The sweep ends with one row per job (none from the extra DDP ranks): its overrides and the
    # best val/loss its checkpoint callback saw, printed and in summary.csv.
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["job"] for row in rows] == jobs
    for row, lr in zip(rows, ("0.001", "0.0003"), strict=True):
        assert f"optim.lr={lr}" in row["overrides"].split()
        assert row["status"] == "completed"
        callbacks = _ckpt(Path(row["folder"]))["callbacks"]
        best = next(v["best_model_score"] for k, v in callbacks.items() if "val/loss" in k)
        assert float(row["val/loss"]) == pytest.approx(float(best), rel=1e-6)
    assert "sweep summary written to" in result.stdout


# --- periodic checkpoints and exact resuming ---------------------------------------------------

# Dropout on, so resuming must restore the random generators too; one thread, so the killed
# subprocess computes exactly as this process does.
RESUMABLE = (
    "model=gpt2-tiny",
    "data.max_length=128",
    "model.dropout=0.1",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "hardware.threads=1",
    "test_after_fit=false",
)


def _assert_resumed_like_uninterrupted(full: Path, resumed: Path, saved_step: int) -> None:
    """The resumed run logged the uninterrupted run's losses from ``saved_step`` on, and both
    end in the same state: weights, step, tokens seen, learning rate and loss-plot history."""
    uninterrupted = _step_losses(full)
    continued = _step_losses(resumed)
    expected = [(step, loss) for step, loss in uninterrupted if step >= saved_step]
    assert [step for step, _ in continued] == [step for step, _ in expected]
    assert [loss for _, loss in continued] == pytest.approx(
        [loss for _, loss in expected], abs=1e-6
    )
    a, b = _ckpt(full), _ckpt(resumed)
    assert (a["global_step"], a["tokens_seen"]) == (b["global_step"], b["tokens_seen"])
    lr = [c["optimizer_states"][0]["param_groups"][0]["lr"] for c in (a, b)]
    assert lr[0] == pytest.approx(lr[1], rel=1e-12)
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=1e-6)
    history = [c["callbacks"]["LossPlot"]["train"] for c in (a, b)]
    assert len(history[0]) == len(history[1]) == a["global_step"] * _accumulation(a)
    for row_a, row_b in zip(*history, strict=True):
        assert row_a[:2] == row_b[:2]
        assert row_a[2] == pytest.approx(row_b[2], abs=1e-6)


def _accumulation(ckpt: dict) -> int:
    return ckpt["config"]["trainer"]["accumulate_grad_batches"]


def test_run_killed_between_periodic_saves_resumes_with_the_same_losses(
    compose_run, tmp_path, monkeypatch
):
    """Pretraining on The Verdict: 18 batches an epoch, saves every 10 steps, kill -9 at step
    14, so the resumed run restarts mid-epoch at step 10 and crosses into the second epoch (a
    new order, a validation) on its way to step 20."""
    run = (*RESUMABLE, "trainer.max_steps=20", "callbacks.periodic.every_n_train_steps=10")
    train(compose_run(*run, run_dir=tmp_path / "full"))
    saved = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert saved == ["best.ckpt", "last.ckpt"]  # periodic saves overwrite last.ckpt, no pile-up
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))
    killed = run_cli(
        "train.py",
        *run,
        "+callbacks.crash._target_=crash.CrashAtStep",
        "+callbacks.crash.step=14",
        f"hydra.run.dir={tmp_path / 'killed'}",
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = _ckpt(tmp_path / "killed")
    assert last["global_step"] == 10
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["last.ckpt"]
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    train(compose_run(*run, f"ckpt_path={ckpt}", run_dir=tmp_path / "resumed"))
    _assert_resumed_like_uninterrupted(tmp_path / "full", tmp_path / "resumed", saved_step=10)


@pytest.mark.parametrize(
    "stage",
    [
        # 4 optimizer steps an epoch (8 batches, 2 per step): saved at step 2, mid-epoch.
        (
            "stage=classify",
            "trainer.limit_train_batches=8",
            "trainer.accumulate_grad_batches=2",
            "trainer.max_steps=8",
            "callbacks.periodic.every_n_train_steps=2",
        ),
        # Length-bucketed batches, 6 steps an epoch: saved at step 4, mid-epoch.
        (
            "stage=instruct",
            "data.bucket=true",
            "stage.sample.count=0",
            "trainer.limit_train_batches=6",
            "trainer.max_steps=8",
            "callbacks.periodic.every_n_train_steps=4",
        ),
    ],
    ids=["classify", "instruct"],
)
def test_fine_tuning_stages_resume_mid_epoch_with_the_same_losses(compose_run, tmp_path, stage):
    """Cut by an exception one step after a periodic save, which saves last.ckpt there (see
    llmprep.training.interrupts); the resumed run restarts mid-epoch and crosses into the second
    epoch."""
    run = (*RESUMABLE, *stage, "init_from=null", "trainer.limit_val_batches=2")
    saved = int(stage[-1].split("=")[1])
    train(compose_run(*run, run_dir=tmp_path / "full"))
    crash = ("+callbacks.crash._target_=crash.CrashAtStep", f"+callbacks.crash.step={saved + 1}")
    with pytest.raises(Crashed):
        train(compose_run(*run, *crash, "+callbacks.crash.kill=false", run_dir=tmp_path / "cut"))
    assert _ckpt(tmp_path / "cut")["global_step"] == saved + 1
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    train(compose_run(*run, f"ckpt_path={ckpt}", run_dir=tmp_path / "resumed"))
    _assert_resumed_like_uninterrupted(
        tmp_path / "full", tmp_path / "resumed", saved_step=saved + 1
    )


def test_time_based_periodic_saves_keep_last_ckpt_current_before_any_validation(
    compose_run, tmp_path
):
    every_batch = "callbacks.periodic.train_time_interval={_target_:datetime.timedelta,seconds:0}"
    crash = ("+callbacks.crash._target_=crash.CrashAtStep", "+callbacks.crash.step=3")
    cfg = compose_run(*TINY, "logger=none", every_batch, *crash, "+callbacks.crash.kill=false")
    with pytest.raises(Crashed):
        train(cfg)
    assert _ckpt(tmp_path / "run")["global_step"] == 3
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]
