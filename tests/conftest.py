"""Shared test set-up: offline data, a private cache per session, W&B offline.

Tests that need the real data files read them through ``LLMPREP_MIRROR`` (``.ci/run`` and
``make test`` point it at ``../shared/data``); when it is missing they fail, they never skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("LLMPREP_MIRROR", str(SHARED / "data"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own empty ``LLMPREP_CACHE``, so no test sees stale files."""
    cache = tmp_path_factory.mktemp("llmprep-cache")
    os.environ["LLMPREP_CACHE"] = str(cache)
    return cache


@pytest.fixture
def mirror() -> Path:
    """The first ``LLMPREP_MIRROR`` folder; fails the test when the real data is not there."""
    folders = [Path(p) for p in os.environ.get("LLMPREP_MIRROR", "").split(":") if p]
    for folder in folders:
        if (folder / "the-verdict.txt").is_file():
            return folder
    pytest.fail(f"LLMPREP_MIRROR={os.environ.get('LLMPREP_MIRROR')!r} holds no data files")


def run_cli(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` from the repo root as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def compose_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Compose a run config the way ``python train.py <overrides>`` does, with its run folder
    at ``tmp_path/run``, and make it the current Hydra job (so ``train(cfg)`` runs in-process)."""

    def compose_(*overrides: str, config_name: str = "train", run_dir: Path | None = None):
        monkeypatch.setattr(sys, "argv", ["train.py", *overrides])
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        out = run_dir or tmp_path / "run"
        out.mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.runtime.cwd = str(ROOT)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield compose_
    HydraConfig.instance().cfg = None
