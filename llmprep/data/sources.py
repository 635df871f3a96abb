"""Named data sources (the book's files) and how a name or a path becomes a checked local file.

A registered name resolves, in this order, to

1. the cache, ``cache_dir()/sources/<filename>``, when its sha256 still matches;
2. the first ``LLMPREP_MIRROR`` folder (colon-separated) holding ``<filename>``, checked and
   used in place (mirrors are typically shared, read-only folders; a copy would double the disk);
3. a download into the cache, checked before it becomes visible there.

Any other string is a local path. Every failure raises one :class:`SourceError` whose message
names the source, its URL, the expected sha256 and the variables that fix it.
"""

from __future__ import annotations

import glob
import io
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmprep.errors import UserError
from llmprep.files import atomic_path, file_sha256

CACHE_ENV = "LLMPREP_CACHE"
MIRROR_ENV = "LLMPREP_MIRROR"
OFFLINE_ENV = "HF_HUB_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60.0
_GLOB_CHARS = frozenset("*?[")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE``, the project-wide offline switch, forbids downloads; it is
    read as ``huggingface_hub`` reads it (1, true, yes or on, in any case)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class SourceError(UserError, RuntimeError):
    """A data source could not be resolved to a checked local file."""


@dataclass(frozen=True)
class Source:
    """A data file known by name: where it comes from and the sha256 it must have. For a zip
    download, ``member`` names the file inside the archive that ``filename`` and ``sha256`` (and
    the cache and the mirrors) hold."""

    name: str
    url: str
    filename: str
    sha256: str
    member: str | None = None


_BOOK = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            "the-verdict",
            f"{_BOOK}/ch02/01_main-chapter-code/the-verdict.txt",
            "the-verdict.txt",
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
        ),
        Source(
            "tinyshakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "tinyshakespeare.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
        Source(
            "sms-spam",
            "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "SMSSpamCollection",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
            member="SMSSpamCollection",
        ),
        Source(
            "instruction-data",
            f"{_BOOK}/ch07/01_main-chapter-code/instruction-data.json",
            "instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
        ),
        Source(
            "instruction-data-with-preference",
            f"{_BOOK}/ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
            "instruction-data-with-preference.json",
            "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
        ),
    )
}


def cache_dir() -> Path:
    """The llmprep cache folder, ``$LLMPREP_CACHE`` (read on every call) or
    ``~/.cache/llmprep``, created if needed."""
    folder = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmprep")
    folder = folder.expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def resolve(name_or_path: str) -> Path:
    """The checked local file for a registered source name, or the existing file at a path.

    A string that is a registered name is always the source, even if a file of that name sits
    in the working folder (write ``./the-verdict`` to mean the file). Paths come back absolute.
    """
    source = SOURCES.get(name_or_path)
    if source is not None:
        return _cached(source) or _mirrored(source) or _download(source)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        problem = (
            f"{path.absolute()} is a folder (name its files with a glob: '{name_or_path}/*.txt')"
        )
    else:
        problem = f"{path.absolute()} does not exist"
    raise SourceError(
        f"{name_or_path!r} is neither a registered data source nor an existing file: {problem}; "
        f"registered sources: {', '.join(SOURCES)}"
    )


def resolve_named(specs: str | Sequence[str]) -> dict[str, Path]:
    """The files named by source names, paths or glob patterns, in the order given, each under
    the name a user knows it by: a source name or path as typed, a glob's match as the pattern
    spells its folder (what tables and result files show, not the resolved path).

    A glob expands to its matching files, sorted (``**`` recurses); one matching no file is an
    error. A file named twice is kept once, at its first position and name, so overlapping
    patterns never duplicate a document in a corpus.
    """
    names: dict[Path, str] = {}
    for spec in [specs] if isinstance(specs, str) else specs:
        if spec not in SOURCES and _GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            files = [(p, Path(p).resolve()) for p in matches if Path(p).is_file()]
            if not files:
                raise SourceError(f"the pattern {spec!r} matches no file")
        else:
            files = [(spec, resolve(spec))]
        for name, path in files:
            names.setdefault(path, name)
    return {name: path for path, name in names.items()}


def resolve_many(specs: str | Sequence[str]) -> list[Path]:
    """The files :func:`resolve_named` finds, in its order."""
    return list(resolve_named(specs).values())


def _error(source: Source, problem: str) -> SourceError:
    member = f" (the member {source.member!r} of the zip)" if source.member else ""
    return SourceError(
        f"data source {source.name!r}: {problem}\n"
        f"  file:            {source.filename}{member}\n"
        f"  url:             {source.url}\n"
        f"  expected sha256: {source.sha256}\n"
        f"  fix: put {source.filename} in a folder listed in {MIRROR_ENV} (colon-separated), or "
        f"allow the download (network access, {OFFLINE_ENV} unset) into {CACHE_ENV}"
        f"={cache_dir()}"
    )


def _cached(source: Source) -> Path | None:
    """The cached copy when it is intact; a copy whose hash no longer matches is removed."""
    path = cache_dir() / "sources" / source.filename
    if not path.is_file():
        return None
    if file_sha256(path) == source.sha256:
        return path
    path.unlink(missing_ok=True)
    return None


def _mirrored(source: Source) -> Path | None:
    """The file in the first mirror folder holding it, which must match its sha256."""
    folders = [Path(f).expanduser() for f in os.environ.get(MIRROR_ENV, "").split(os.pathsep) if f]
    for path in [folder / source.filename for folder in folders]:
        if path.is_file():
            actual = file_sha256(path)
            if actual != source.sha256:
                raise _error(source, f"the mirror file {path} has sha256 {actual}")
            return path.resolve()
    return None


def _download(source: Source) -> Path:
    """Download into the cache: a temporary file next to the target, checked, then renamed.

    The sources are the book's small files (about 1 MB at most), so a download is held in
    memory. ``HF_HUB_OFFLINE``, the project-wide offline switch, forbids it.
    """
    missing = f"not in the cache nor in {MIRROR_ENV} ({os.environ.get(MIRROR_ENV) or 'unset'})"
    if offline():
        raise _error(source, f"{missing}, and {OFFLINE_ENV} forbids a download")
    target = cache_dir() / "sources" / source.filename
    try:
        with atomic_path(target) as checked:
            request = urllib.request.Request(source.url, headers={"User-Agent": "llmprep"})
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                data = response.read()
            if source.member is not None:
                data = zipfile.ZipFile(io.BytesIO(data)).read(source.member)
            checked.write_bytes(data)
            actual = file_sha256(checked)
            if actual != source.sha256:
                raise _error(source, f"the downloaded file has sha256 {actual}")
        return target
    except (urllib.error.URLError, OSError) as err:
        detail = err if isinstance(err, urllib.error.HTTPError) else getattr(err, "reason", err)
        raise _error(source, f"{missing}; download failed: {detail}") from None
    except (zipfile.BadZipFile, KeyError) as err:
        problem = f"the download is not a zip holding {source.member!r}: {err}"
        raise _error(source, problem) from None
