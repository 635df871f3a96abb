"""Resuming through the real command line: the checkpoint gives the run's settings
(``ckpt_path=`` alone), ``resume=auto`` finds the newest ``last.ckpt`` of the same command, a
finished run is not started again, and what cannot change on resume is refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

RUN = ("model=gpt2-tiny", "logger=none", "test_after_fit=false")
"""A run of a non-default size (gpt2-mini is the default), so a resume that forgot the
checkpoint's model would build another one."""


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a two-step gpt2-tiny pretraining run."""
    from conftest import run_cli

    run = tmp_path_factory.mktemp("first")
    result = run_cli("train.py", *RUN, "trainer.max_steps=2", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run / "checkpoints" / "last.ckpt"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_run_resumes_from_its_checkpoint_alone(cli, first, tmp_path):
    """No ``model=``: the architecture comes from the checkpoint, the step goes on from 2, and
    the one line about the resume names the value the command line changes."""
    result = cli(
        "train.py", f"ckpt_path={first}", "trainer.max_steps=4", f"hydra.run.dir={tmp_path}"
    )
    assert result.code == 0, result.err[-3000:]
    said = [line for line in result.err.splitlines() if "Resuming" in line]
    assert len(said) == 1 and "(step 2, epoch 1)" in said[0], result.err[-3000:]
    assert said[0].endswith("the command line changes trainer.max_steps: 2 → 4")
    before, after = _load(first), _load(tmp_path / "checkpoints" / "last.ckpt")
    assert after["global_step"] == 4
    assert after["hyper_parameters"]["model_config"] == before["hyper_parameters"]["model_config"]
    assert after["config"]["model"]["name"] == "gpt2-tiny"
    assert after["config"]["trainer"]["max_steps"] == 4  # the resumed run's config, not the old
    assert after["overrides"] == [*RUN, f"ckpt_path={first}", "trainer.max_steps=4"]
    overrides = yaml.safe_load((tmp_path / ".hydra" / "overrides.yaml").read_text())
    assert overrides == after["overrides"]


@pytest.mark.parametrize(
    ("change", "before"),
    [
        ("model=gpt2-mini", "model=gpt2-tiny"),
        ("model.n_layers=4", "model.n_layers=2"),
        ("lora.rank=8", "lora.rank=0"),
    ],
)
def test_a_value_the_weights_fix_cannot_change_on_resume(cli, first, tmp_path, change, before):
    run = tmp_path / "run"
    result = cli("train.py", f"ckpt_path={first}", change, f"hydra.run.dir={run}")
    errors = [line for line in result.err.splitlines() if "[ERROR]" in line]
    assert result.code == 1 and len(errors) == 1, result.err[-3000:]
    assert f"{change} cannot change on resume" in errors[0]
    assert f"was trained with {before}" in errors[0]
    assert f"Drop {change}" in errors[0]
    assert "size mismatch" not in result.err
    assert not (run / "checkpoints").exists()


def test_a_finished_run_says_so_and_makes_no_folder(cli, first, tmp_path):
    run = tmp_path / "run"
    result = cli("train.py", f"ckpt_path={first}", f"hydra.run.dir={run}")
    assert result.code == 0, result.err[-3000:]
    assert "is a finished run: it reached trainer.max_steps=2 (step 2, epoch 1)" in result.err
    assert "trainer.max_steps=4" in result.err  # how to train on
    assert not run.exists()


def _copy(ckpt: Path, run: Path, age_s: float, overrides: list[str] | None = None) -> Path:
    """``ckpt`` as ``<run>/checkpoints/last.ckpt``, written ``age_s`` seconds ago, with other
    stored ``overrides`` if given."""
    target = run / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True)
    if overrides is None:
        shutil.copy(ckpt, target)
    else:
        torch.save({**_load(ckpt), "overrides": overrides}, target)
    stamp = target.stat().st_mtime - age_s
    os.utime(target, (stamp, stamp))
    return target


def test_resume_auto_picks_the_newest_last_ckpt_of_the_same_command(cli, first, tmp_path):
    """Among the folders the run-folder pattern makes, the newest ``last.ckpt`` whose run had
    the same overrides (but the training limits); the newest of all, another command's, is
    passed over. ``--cfg job`` shows the composed run without training."""
    runs = tmp_path / "runs"
    _copy(first, runs / "older", age_s=300)
    newest = _copy(first, runs / "newer", age_s=200)
    _copy(first, runs / "other", age_s=100, overrides=[*RUN, "optim.lr=1e-4"])
    pattern = f"hydra.run.dir={runs}/${{now:%H-%M-%S-%f}}"
    result = cli("train.py", *RUN, "trainer.max_steps=5", "resume=auto", pattern, "--cfg", "job")
    assert result.code == 0, result.err[-3000:]
    assert f"resume=auto: resuming the newest last.ckpt of this command, {newest}" in result.err
    assert yaml.safe_load(result.out)["ckpt_path"] == str(newest)


def test_resume_auto_without_an_earlier_run_starts_fresh(cli, tmp_path):
    pattern = f"hydra.run.dir={tmp_path}/${{now:%H-%M-%S-%f}}"
    result = cli("train.py", *RUN, "resume=auto", pattern, "--cfg", "job")
    assert result.code == 0, result.err[-3000:]
    assert "no earlier run of this command has a last.ckpt; starting fresh" in result.err
    assert yaml.safe_load(result.out)["ckpt_path"] is None


def test_a_checkpoint_without_stored_overrides_gives_its_stage_and_model(cli, first, tmp_path):
    """Checkpoints written before llmprep stored overrides: stage, model and architecture come
    from their stored config."""
    old = {k: v for k, v in _load(first).items() if k != "overrides"}
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    result = cli("train.py", f"ckpt_path={path}", "trainer.max_steps=3", "--cfg", "job")
    assert result.code == 0, result.err[-3000:]
    composed = yaml.safe_load(result.out)
    assert composed["model"]["name"] == "gpt2-tiny" and composed["model"]["n_layers"] == 2
    assert composed["stage"]["name"] == "pretrain"
    assert composed["trainer"]["max_steps"] == 3


def test_a_resume_never_carries_secrets_hydra_settings_or_what_to_resume():
    from llmprep.resume import stored_overrides

    ckpt = {
        "config": {"stage": {"name": "pretrain"}},
        "overrides": [
            "model=gpt2-tiny",
            "+judge.api_key=<redacted>",
            "hydra.job.chdir=true",
            "ckpt_path=old/last.ckpt",
            "resume=auto",
            "optim.lr=1e-4",
        ],
    }
    assert stored_overrides(ckpt) == ["model=gpt2-tiny", "optim.lr=1e-4"]
