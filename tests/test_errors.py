"""Data errors name the file, line and field a user has to fix."""

from __future__ import annotations

from llmprep.data.errors import DataError


def test_message_and_attributes_locate_the_problem(tmp_path):
    err = DataError(tmp_path / "d.csv", 3, "text", "empty text")
    assert str(err) == f"{tmp_path / 'd.csv'}, line 3, column 'text': empty text"
    assert (err.path, err.line, err.column) == (tmp_path / "d.csv", 3, "text")
    assert isinstance(err, ValueError)
    assert str(DataError("d.json", None, None, "empty file")) == "d.json: empty file"
