"""Logger choice, W&B mode without an account, and run names from the Hydra job."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from llmprep.training.loggers import build_logger, run_name_and_group, wandb_mode


def test_wandb_is_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_mode(None) == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"
    assert wandb_mode("offline") == "offline"


def test_environment_mode_wins_over_detection(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled"


def test_jobs_of_one_sweep_share_a_group():
    single = run_name_and_group("pretrain", Path("outputs/pretrain/2026-11-25/10-00-00"), None)
    assert single == ("pretrain-2026-11-25-10-00-00", "pretrain")
    a = run_name_and_group("pretrain", Path("multirun/2026-11-25/10-00-00/0"), 0)
    b = run_name_and_group("pretrain", Path("multirun/2026-11-25/10-00-00/1"), 1)
    assert a[1] == b[1] == "sweep-2026-11-25-10-00-00"
    assert a[0] != b[0]


def test_logger_configs_instantiate_lightnings_loggers(compose_run, tmp_path):
    """Each logger writes under the run folder; W&B keys a conf/local file sets for every run
    (``logger.entity``) do not reach the other loggers."""
    for name, cls in (("csv", CSVLogger), ("tensorboard", TensorBoardLogger)):
        cfg = compose_run(f"logger={name}", "+logger.entity=my-team")
        logger = build_logger(cfg.logger, "pretrain", tmp_path / "run", None, {})
        assert isinstance(logger, cls)
        assert Path(logger.log_dir) == tmp_path / "run" / name
    assert build_logger(compose_run("logger=none").logger, "pretrain", tmp_path, None, {}) is None
