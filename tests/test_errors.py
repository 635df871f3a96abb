"""Errors name the file, line and field a user has to fix; a run's console says each thing once."""

from __future__ import annotations

from collections import Counter

from conftest import run_cli

from llmprep.data.errors import DataError


def test_message_and_attributes_locate_the_problem(tmp_path):
    err = DataError(tmp_path / "d.csv", 3, "text", "empty text")
    assert str(err) == f"{tmp_path / 'd.csv'}, line 3, column 'text': empty text"
    assert (err.path, err.line, err.column) == (tmp_path / "d.csv", 3, "text")
    assert isinstance(err, ValueError)
    assert str(DataError("d.json", None, None, "empty file")) == "d.json: empty file"


def test_a_run_prints_each_line_once_without_library_noise(tmp_path):
    result = run_cli(
        "train.py",
        "model=gpt2-tiny",
        "trainer.max_steps=2",
        "logger=wandb",
        f"hydra.run.dir={tmp_path}",
        unset=("WANDB_SILENT",),
    )
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    lines = [line.strip() for line in console.splitlines()]
    # Table borders and blank lines repeat by design; every line that says something is unique.
    said = [line for line in lines if any(c.isalnum() for c in line)]
    assert [line for line, n in Counter(said).items() if n > 1] == []
    assert console.count("wandb sync ") == 1
    for noise in ("Tip:", "anonymous", "LeafSpec", "Total FLOPs: 0", "already configured"):
        assert noise not in console
    # The summary's FLOPs: one forward pass over a full window. gpt2-tiny (2 blocks of width 64,
    # 128-token windows): 2 x (2 x 12 x 64^2 block weights + 64 x 50257 head + 2 x 2 x 128 x 64
    # attention) = 6,695,040 per token, x 128 tokens = 857 M, shown as 856 M (Lightning truncates).
    assert "Total FLOPs: 856 M" in console
    assert "run eta: " in console  # the training bar's ETA of the whole run
