"""The one error type for bad input data, located as precisely as the problem allows."""

from __future__ import annotations

from pathlib import Path

from llmprep.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data: the file, the 1-based line where the record starts (``None`` for the file
    as a whole) and the field (``None`` for a whole line or record) are in the message and kept
    as attributes, so a user can go straight to the problem."""

    def __init__(self, path: str | Path, line: int | None, column: str | None, message: str):
        self.path = Path(path)
        self.line = line
        self.column = column
        where = [str(path)]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")
