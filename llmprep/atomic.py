"""Replace a file all at once: write under a hidden temporary name beside it, then rename.

A reader (or a crash) never sees half a file: the target holds either its old content or the
new one. ``os.replace`` is atomic within one folder, which is why the temporary file lives in
the target's own folder rather than in ``/tmp``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A new, empty, hidden file beside ``path`` to write to; renamed onto ``path`` when the
    block succeeds, removed whatever happens otherwise. The target's folder is created.

    The name is ``.<name>.<random>.tmp<suffix>``: unique, so concurrent writers of one target
    never share a temporary file (the last rename wins, and each result is whole), and ending in
    the target's suffix, for writers that pick a format from the file name (matplotlib).

    Decision: the file is created with ``O_CREAT | O_EXCL`` and mode ``0o666`` like ``open``
    would, so the result gets the user's umask permissions; ``tempfile.mkstemp`` would make
    every exported model and report private (``0o600``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_json_atomically(path: str | Path, data: Any) -> Path:
    """``data`` as indented UTF-8 JSON with a final newline, replacing ``path``; returns it."""
    path = Path(path)
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
