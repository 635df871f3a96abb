"""Throughput figures are true: tokens/s over whole steps, FLOPs and MFU from our GPT's count."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
from conftest import model_size

from llmprep.run import train
from llmprep.training.throughput import TOKENS_PER_SEC, run_eta

STEP_PAUSE = 0.05
TOKENS_PER_BATCH = 2 * 128  # data.max_length=128, data.batch_size=2


class SlowOptimizer(L.Callback):
    """Makes every optimizer step take ``STEP_PAUSE`` seconds more and records when each training
    batch ended, so a test knows the true time per step."""

    ends: ClassVar[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        time.sleep(STEP_PAUSE)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        SlowOptimizer.ends.append(time.perf_counter())


def _metric(run: Path, name: str) -> list[float]:
    rows = [r.split(",") for r in (run / "csv" / "metrics.csv").read_text().splitlines()]
    col = rows[0].index(name)
    return [float(r[col]) for r in rows[1:] if r[col]]


def _run(compose_run, *extra: str) -> Path:
    SlowOptimizer.ends = []
    cfg = compose_run(
        "model=gpt2-tiny",
        "data.max_length=128",
        "data.batch_size=2",
        "logger=csv",
        "trainer.max_steps=8",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "callbacks.throughput.window_size=3",
        f"+callbacks.slow._target_={__name__}.SlowOptimizer",
        *extra,
    )
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_tokens_per_second_cover_the_whole_step(compose_run):
    """The old figure timed the forward pass alone; the optimizer's pause must be in it now."""
    run = _run(compose_run)
    logged = _metric(run, TOKENS_PER_SEC)
    ends = SlowOptimizer.ends
    # With a window of 3 batches, the figure at batch i spans the 2 steps ending at i-1 and i.
    truth = [2 * TOKENS_PER_BATCH / (ends[i] - ends[i - 2]) for i in range(2, len(ends))]
    assert len(logged) == len(truth) == 6
    assert logged == pytest.approx(truth, rel=0.02)
    assert max(logged) < TOKENS_PER_BATCH / STEP_PAUSE


def test_flops_and_mfu_follow_the_model_count(compose_run, monkeypatch):
    """MFU is FLOP/s over the device's peak; CPUs have no known peak, so one is given here."""
    import lightning.pytorch.callbacks.throughput_monitor as monitor

    peak = 1e12
    monkeypatch.setattr(monitor, "get_available_flops", lambda device, dtype: peak)
    run = _run(compose_run)
    from llmprep.model import GPT

    model = GPT(model_size("gpt2-tiny"))
    flops_per_batch = model.flops_per_token(128) * TOKENS_PER_BATCH
    tokens_per_s = _metric(run, TOKENS_PER_SEC)
    flops_per_s = _metric(run, "train/device/flops_per_sec")
    mfu = _metric(run, "train/device/mfu")
    assert flops_per_s == pytest.approx([t * flops_per_batch / 256 for t in tokens_per_s])
    assert mfu == pytest.approx([f / peak for f in flops_per_s])


def test_run_eta_is_the_steps_left_at_the_pace_so_far():
    assert run_eta(elapsed=10.0, done=25, left=75) == "0:00:30"
    assert run_eta(elapsed=3600.0, done=1, left=2) == "2:00:00"
    assert run_eta(elapsed=5.0, done=0, left=10) is None
