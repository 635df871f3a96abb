"""Files are replaced whole: a failed write keeps the old file and leaves no temporary behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmprep.files import (
    atomic_path,
    atomic_paths,
    sweep_stale_temps,
    temp_path,
    write_json_atomically,
)


def test_success_renames_onto_the_target_in_a_new_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "out.txt"
    with atomic_path(target) as temp:
        assert temp.parent == target.parent and temp.name.startswith(".")
        assert not target.exists()
        temp.write_text("whole", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "whole"
    assert list(target.parent.iterdir()) == [target]


def test_an_exception_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as temp:
        temp.write_text("half", encoding="utf-8")
        raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_set_of_files_is_replaced_only_once_all_are_written(tmp_path: Path) -> None:
    names = ("config.json", "model.safetensors", "tokenizer.json")
    (tmp_path / "config.json").write_text("old", encoding="utf-8")
    with (
        pytest.raises(RuntimeError, match="interrupted"),
        atomic_paths(tmp_path / name for name in names) as temps,
    ):
        temps[0].write_text("new", encoding="utf-8")
        temps[1].write_text("new", encoding="utf-8")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert (tmp_path / "config.json").read_text(encoding="utf-8") == "old"
    with atomic_paths(tmp_path / name for name in names) as temps:
        for temp in temps:
            temp.write_text("new", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert {(tmp_path / name).read_text(encoding="utf-8") for name in names} == {"new"}


def test_two_writers_of_one_path_do_not_share_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("first", encoding="utf-8")
        second.write_text("second", encoding="utf-8")
    assert target.read_text(encoding="utf-8") in {"first", "second"}
    assert list(tmp_path.iterdir()) == [target]


def test_temporary_keeps_the_suffix_writers_pick_a_format_from(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "loss.png") as temp:
        assert temp.suffix == ".png"


def test_result_has_the_permissions_of_a_plainly_written_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    with atomic_path(tmp_path / "atomic.txt") as temp:
        temp.write_text("x", encoding="utf-8")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


def test_a_writer_that_replaces_the_temporary_still_gives_umask_permissions(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    with atomic_path(tmp_path / "atomic.txt") as temp:
        private = tmp_path / "private"
        os.close(os.open(private, os.O_WRONLY | os.O_CREAT, 0o600))
        os.replace(private, temp)
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


def test_json_is_indented_utf8_with_a_final_newline(tmp_path: Path) -> None:
    path = write_json_atomically(tmp_path / "r.json", {"label": "naïve"})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "naïve" in text and '\n  "label"' in text
    assert json.loads(text) == {"label": "naïve"}


def test_only_temporaries_of_dead_writers_on_this_host_are_swept(tmp_path: Path) -> None:
    target = tmp_path / "loss.png"
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    dead = ended.pid
    stale = temp_path(target, dead)
    kept = [
        temp_path(target, os.getpid()),
        temp_path(target, dead, host="another-machine"),
        temp_path(tmp_path / "other.png", dead),
        tmp_path / f".loss.png.{dead}.tmp.png",
    ]
    for temp in [stale, *kept]:
        temp.write_bytes(b"half")
    assert sweep_stale_temps(target) == [stale]
    write_json_atomically(tmp_path / "other.png", {})
    assert sorted(tmp_path.iterdir()) == sorted([kept[0], kept[1], kept[3], tmp_path / "other.png"])
