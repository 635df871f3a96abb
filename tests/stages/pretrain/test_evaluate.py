"""`python evaluate.py ckpt_path=<pretrain checkpoint>`: loss and perplexity of a checkpoint, as a
table and JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_cli

from llmprep.run import train
from llmprep.stages import load_task


def test_evaluate_prints_and_writes_loss_and_perplexity(compose_run, tmp_path, mirror):
    """Without ``stage=`` (the checkpoint's is taken); the extra corpora are shown and keyed by
    the names they were given by, a source's name rather than its file."""
    train(compose_run("model=gpt2-tiny", "logger=none", "trainer.max_epochs=1"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    extra = tmp_path / "extra.txt"
    extra.write_text("Every effort moves you. " * 40, encoding="utf-8")
    result = run_cli(
        "evaluate.py",
        f"ckpt_path={ckpt}",
        f"eval.files=[{extra},the-verdict]",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "perplexity" in result.stdout and "val" in result.stdout
    report = json.loads((ckpt.parent / "last.eval.json").read_text())
    val = report["results"]["val"]
    assert math.isclose(val["perplexity"], math.exp(val["loss"]), rel_tol=1e-6)
    assert report["results"][str(extra)]["tokens"] > 0
    assert 5000 < report["results"]["the-verdict"]["tokens"] < 5145  # whole windows of its 5145
    assert "the-verdict" in result.stdout and "the-verdict.txt" not in result.stdout
    with pytest.raises(ValueError, match="trained by stage 'pretrain', not 'classify'"):
        load_task(ckpt, "classify", torch.device("cpu"))
