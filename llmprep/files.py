"""Replace a file all at once: write under a hidden temporary name beside it, then rename.

A reader (or a crash) never sees half a file: the target holds either its old content or the
new one. ``os.replace`` is atomic within one folder, which is why the temporary file lives in
the target's own folder rather than in ``/tmp``.

A writer that is killed (SIGKILL, out of memory, a lost node) leaves its temporary file behind,
which can be as large as a token store. The next write of the same target removes it
(``sweep_stale_temps``): temporary names carry their writer's host and pid.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
"""This machine's name as it appears in temporary names (dots and other separators replaced)."""


def temp_path(path: Path, pid: int, host: str = HOST) -> Path:
    """A fresh temporary name beside ``path`` for writer ``pid`` on ``host``:
    ``.<name>.<host>.<pid>.<random>.tmp<suffix>``, unique so concurrent writers never share one,
    ending in the target's suffix for writers that pick a format from the name (matplotlib)."""
    return path.with_name(f".{path.name}.{host}.{pid}.{secrets.token_hex(6)}.tmp{path.suffix}")


def sweep_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``path`` whose writer died, and return them.

    Removed only when its name says it was written on this host by a pid that no longer exists:
    kept are a live writer's file, any other host's (e.g. on a shared network cache) and names
    not made by ``temp_path``. Off POSIX, where a pid cannot be probed, nothing is removed.
    """
    path = Path(path)
    if os.name != "posix":
        return []
    name = re.compile(
        rf"\.{re.escape(path.name)}\.{re.escape(HOST)}\.(?P<pid>[0-9]+)\.[0-9a-f]{{12}}"
        rf"\.tmp{re.escape(path.suffix)}"
    )
    pattern = f".{glob.escape(path.name)}.{glob.escape(HOST)}.*.tmp{glob.escape(path.suffix)}"
    removed = []
    for temp in path.parent.glob(pattern):
        match = name.fullmatch(temp.name)
        if match is not None and not _alive(int(match["pid"])):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 probes it without touching it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A new, empty, hidden file beside ``path`` to write to (``temp_path``); renamed onto
    ``path`` when the block succeeds, removed whatever happens otherwise. The target's folder is
    created, and temporary files of killed earlier writers of ``path`` are swept first.

    Decision: the file is created with mode ``0o666`` like ``open`` would, so the result gets the
    user's umask permissions (``tempfile.mkstemp`` would make every exported model private). The
    mode is put back before the rename, as a writer may replace the temporary file with its own
    (safetensors' ``save_file`` writes a ``0o600`` one and renames it onto the name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    temp = temp_path(path, os.getpid())
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(temp.stat().st_mode)
    try:
        yield temp
        if stat.S_IMODE(temp.stat().st_mode) != mode:
            temp.chmod(mode)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def atomic_paths(paths: Iterable[str | Path]) -> Iterator[list[Path]]:
    """``atomic_path`` for several files at once: a temporary file for each of ``paths``, all
    renamed onto their targets only once the block has written every one (and none if it
    fails), so a folder never gets some of a new set of files for want of the others."""
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_path(path)) for path in paths]


def json_text(data: Any) -> str:
    """``data`` as the indented JSON text, with a final newline, that our JSON files hold."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json_atomically(path: str | Path, data: Any) -> Path:
    """``data`` as indented UTF-8 JSON (``json_text``), replacing ``path``; returns it."""
    path = Path(path)
    with atomic_path(path) as temp:
        temp.write_text(json_text(data), encoding="utf-8")
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks so a large file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
