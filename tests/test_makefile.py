"""The Makefile's targets as a user sees them in `make help`."""

from __future__ import annotations

import subprocess

from conftest import ROOT


def test_help_shows_the_torch_version_install_takes():
    result = subprocess.run(
        ["make", "-s", "help", "TORCH_VERSION=9.9.9"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "torch==9.9.9 first" in result.stdout
    assert "$(" not in result.stdout
