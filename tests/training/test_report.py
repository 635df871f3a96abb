"""Loading a checkpoint for evaluation: a wrong file gets one clear error naming it, and nothing
named inside a checkpoint is ever imported or called."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmprep.errors import CheckpointError
from llmprep.stages import load_task

CPU = torch.device("cpu")


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"ckpt_path=.*missing\.ckpt.*no such file"):
        load_task(tmp_path / "missing.ckpt", "pretrain", CPU)


def test_corrupt_checkpoint_is_a_clear_error_not_an_unpickling_one(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.ckpt.*corrupt or truncated") as err:
        load_task(path, "pretrain", CPU)
    assert "weights_only" not in str(err.value)


def test_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"foreign\.ckpt.*not an llmprep checkpoint"):
        load_task(path, "pretrain", CPU)


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)
    with pytest.raises(CheckpointError, match=r"code\.ckpt.*pickled objects"):
        load_task(path, "pretrain", CPU)
