"""Real signals sent to a real ``python train.py``: what a stopped run leaves and how it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import ROOT

# Periodic saves every 3 steps: last.ckpt appearing is the sign that the run is training.
RUN = (
    "model=gpt2-tiny",
    "data.max_length=128",
    "logger=csv",
    "hardware.threads=1",
    "trainer.max_steps=100000",
    "stage.max_epochs=1000",
    "callbacks.periodic.every_n_train_steps=3",
)


def _start(run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    return subprocess.Popen(
        [sys.executable, "train.py", *RUN, *extra, f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ctrl_c_saves_a_resumable_checkpoint_and_the_plot_then_exits_130(tmp_path, compose_run):
    from llmprep.run import train

    run = tmp_path / "stopped"
    last = run / "checkpoints" / "last.ckpt"
    proc = _start(run)
    _wait_for(last, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    assert out.count("Ctrl-C: stopping at the end of this batch") == 1
    assert "graceful shutdown" not in out
    ckpt = _ckpt(last)
    step = ckpt["global_step"]
    assert step >= 3
    # Complete: optimizer, loops, data position and random state, at a batch's end.
    assert ckpt["optimizer_states"] and ckpt["loops"]["fit_loop"]
    assert "RandomState" in ckpt["callbacks"]
    assert len(ckpt["callbacks"]["LossPlot"]["train"]) == step
    assert (run / "loss.png").stat().st_size > 0
    assert f"Stopped by SIGINT at step {step}: saved {last}" in out
    assert f"ckpt_path={last}" in out.split("Resume with:")[1]
    assert not list(run.rglob("*.eval.json"))  # no after-fit report
    resumed = compose_run(*RUN, f"trainer.max_steps={step + 2}", f"ckpt_path={last}")
    train(resumed)
    assert _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == step + 2


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    run = tmp_path / "stopped"
    last = run / "checkpoints" / "last.ckpt"
    proc = _start(run, "test_after_fit=false")
    _wait_for(last, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    step = _ckpt(last)["global_step"]
    assert f"Stopped by SIGTERM at step {step}: saved {last}" in out


def test_second_ctrl_c_quits_during_the_save_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "stopped"
    last, marker = run / "checkpoints" / "last.ckpt", tmp_path / "saving"
    slow = ("+callbacks.slow._target_=crash.SlowInterruptSave", f"+callbacks.slow.marker={marker}")
    proc = _start(run, *slow)
    _wait_for(last, proc)
    proc.send_signal(signal.SIGINT)
    _wait_for(marker, proc)
    before = last.read_bytes()
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 130, out[-3000:]
    assert time.monotonic() - started < 10  # not after the 60 s save
    assert "Ctrl-C again: quit without saving" in out
    assert last.read_bytes() == before
    assert _ckpt(last)["global_step"] % 3 == 0  # the last periodic save
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
