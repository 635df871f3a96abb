"""The benchmarks stay runnable: each imports what it needs from llmprep and parses its options
(`--help`), so a renamed or removed helper breaks this test, not `make bench` days later."""

from __future__ import annotations

import runpy
import sys

import pytest
from conftest import ROOT

BENCHES = sorted((ROOT / "bench").glob("bench_*.py"))


def test_every_bench_is_found() -> None:
    assert {path.stem for path in BENCHES} >= {"bench_generate", "bench_model", "bench_train"}


@pytest.mark.parametrize("path", BENCHES, ids=lambda path: path.stem)
def test_each_bench_imports_and_prints_its_options(
    path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    monkeypatch.setattr(sys, "path", [str(path.parent), *sys.path])  # as `python bench/x.py`
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
