"""The README's results, re-run as it types them (slow: `make test-slow`; `make results` prints
every figure)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import run_cli

TF_IDF_CORRECT = 293
"""Test texts (of 300) that character 1-3-gram TF-IDF with logistic regression gets right on the
same split (97.67 %): what a network from scratch has to match to be worth its minutes."""


@pytest.mark.slow
def test_spam_from_scratch_matches_the_tf_idf_baseline(tmp_path: Path) -> None:
    result = run_cli(
        "train.py",
        "experiment=spam_from_scratch",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "csv" / "metrics.csv").open(encoding="utf-8") as fh:
        accuracy = [float(row["test/acc"]) for row in csv.DictReader(fh) if row["test/acc"]]
    assert round(accuracy[-1] * 300) >= TF_IDF_CORRECT
