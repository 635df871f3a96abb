"""Shared test set-up: offline data, a private cache per session, W&B offline.

Tests that need the real data files read them through ``LLMPREP_MIRROR`` (``.ci/run`` and
``make test`` point it at ``../shared/data``); when it is missing they fail, they never skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
