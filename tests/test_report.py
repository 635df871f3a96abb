"""Loading a checkpoint for evaluation: a wrong file gets one clear error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmprep.evaluation.report import load_task

CPU = torch.device("cpu")


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_task(tmp_path / "missing.ckpt", "pretrain", CPU)


def test_corrupt_checkpoint_is_a_clear_error_not_an_unpickling_one(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"ckpt_path=.*corrupt\.ckpt.*not a readable llmprep"):
        load_task(path, "pretrain", CPU)


def test_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"foreign\.ckpt.*is not an llmprep checkpoint"):
        load_task(path, "pretrain", CPU)
