"""Real signals sent to a real ``python train.py``: a stop saves a resumable last.ckpt and the
loss plot, and exits with 128 + the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

from llmprep.run import train

RUN = (
    "model=gpt2-tiny",
    "logger=none",
    "hardware.threads=1",
    "test_after_fit=false",
    "trainer.max_steps=100000",
    "trainer.max_epochs=1000",
    "callbacks.periodic.every_n_train_steps=2",
)


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],
)
def test_signal_saves_last_ckpt_and_plot_and_exits_128_plus_signal(
    compose_run, tmp_path, signum, code
):
    run = tmp_path / "stopped"
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "train.py", *RUN, f"hydra.run.dir={run}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # a periodic save: training is under way
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-3000:]
    assert out.count("stopping after this batch") == 1
    assert "graceful shutdown" not in out
    assert f"ckpt_path={last}" in out
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    step = saved["global_step"]
    assert step >= 2 and saved["optimizer_states"]
    resumed = tmp_path / "resumed"
    train(compose_run(*RUN, f"trainer.max_steps={step + 2}", f"ckpt_path={last}", run_dir=resumed))
    after = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == step + 2
