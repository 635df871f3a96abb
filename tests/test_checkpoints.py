"""Every checkpoint, local or remote, is read one way: tensors and plain values, never code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmprep.checkpoints import read_checkpoint
from llmprep.errors import CheckpointError
from llmprep.run import train


class RunsCode:
    """Unpickling this object would create ``path``: what a malicious checkpoint does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (the tests' server is local; conftest sets HF_HUB_OFFLINE=1)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_remote_checkpoint_that_would_run_code_is_refused_and_runs_nothing(
    server, tmp_path, online
):
    root, url = server
    marker = tmp_path / "ran.txt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, root / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"ckpt_path='http://.*/evil\.ckpt'.*pickled"):
        read_checkpoint(f"{url}/evil.ckpt", "ckpt_path")
    assert not marker.exists()


def test_a_remote_checkpoint_is_cached_then_read_like_a_local_one(server, monkeypatch, online):
    root, url = server
    torch.save({"state_dict": {"w": torch.ones(2)}}, root / "good.ckpt")
    first = read_checkpoint(f"{url}/good.ckpt", "init_from")
    (root / "good.ckpt").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = read_checkpoint(f"{url}/good.ckpt", "init_from")
    assert torch.equal(first["state_dict"]["w"], again["state_dict"]["w"])


@pytest.mark.parametrize("value", ["1", "true", "ON"])
def test_offline_a_remote_checkpoint_not_in_the_cache_is_refused(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with pytest.raises(CheckpointError, match=rf"ckpt_path=.*HF_HUB_OFFLINE={value} forbids"):
        read_checkpoint("http://127.0.0.1:9/never.ckpt", "ckpt_path")


def test_resuming_from_a_url_continues_the_run(compose_run, server, tmp_path, online):
    root, url = server
    tiny = ("model=gpt2-tiny", "logger=none", "trainer.limit_val_batches=0")
    train(compose_run(*tiny, "trainer.max_steps=2", run_dir=tmp_path / "a"))
    (root / "last.ckpt").write_bytes((tmp_path / "a" / "checkpoints" / "last.ckpt").read_bytes())
    cfg = compose_run(
        *tiny, "trainer.max_steps=3", f"ckpt_path={url}/last.ckpt", run_dir=tmp_path / "b"
    )
    train(cfg)
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 3


def test_best_ckpt_holds_weights_only_and_last_ckpt_resumes(compose_run, tmp_path):
    """best.ckpt is the weights (4 bytes a parameter in fp32), last.ckpt the full state (with
    AdamW's two moments, 12 bytes a parameter); resuming from best.ckpt is refused by name, and
    the documented switch makes best.ckpt full again."""
    tiny = ("model=gpt2-tiny", "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2")
    train(compose_run(*tiny, "test_after_fit=false", run_dir=tmp_path / "a"))
    best, last = (tmp_path / "a" / "checkpoints" / f"{n}.ckpt" for n in ("best", "last"))
    ckpt = read_checkpoint(best, "ckpt_path")
    params = sum(t.numel() for t in ckpt["state_dict"].values())
    assert "optimizer_states" not in ckpt and "callbacks" not in ckpt
    assert best.stat().st_size == pytest.approx(4 * params, rel=0.01)
    assert last.stat().st_size == pytest.approx(12 * params, rel=0.01)
    with pytest.raises(CheckpointError, match=r"ckpt_path='.*best\.ckpt' holds weights only: "):
        train(compose_run(*tiny, f"ckpt_path={best}", run_dir=tmp_path / "b"))
    train(compose_run(*tiny, f"init_from={best}", "test_after_fit=false", run_dir=tmp_path / "c"))
    full = ("callbacks.checkpoint.save_weights_only=false", "test_after_fit=false")
    train(compose_run(*tiny, *full, run_dir=tmp_path / "d"))
    assert "optimizer_states" in read_checkpoint(tmp_path / "d" / "checkpoints" / "best.ckpt")
