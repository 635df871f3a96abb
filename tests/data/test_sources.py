"""Named sources resolve to checked files (cache, mirror or download); also paths and globs."""

from __future__ import annotations

import hashlib
import re
import socket
import zipfile
from pathlib import Path

import pytest

from llmprep.data import sources
from llmprep.data.sources import (
    SOURCES,
    Source,
    SourceError,
    file_sha256,
    resolve,
    resolve_many,
    resolve_named,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty cache for one test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LLMPREP_CACHE", str(folder))
    return folder


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads allowed, no mirror, and no proxy between the test and its local server."""
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("LLMPREP_MIRROR", str(empty))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _register(monkeypatch: pytest.MonkeyPatch, source: Source) -> None:
    monkeypatch.setitem(SOURCES, source.name, source)


def _cache_files(cache: Path) -> list[str]:
    folder = cache / "sources"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cache_dir_follows_the_variable_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPREP_CACHE", str(tmp_path / "a"))
    assert sources.cache_dir() == tmp_path / "a"
    monkeypatch.setenv("LLMPREP_CACHE", str(tmp_path / "b"))
    assert sources.cache_dir() == tmp_path / "b"
    assert (tmp_path / "b").is_dir()


def test_every_registered_source_resolves_from_the_mirror_in_place(mirror, cache):
    for source in SOURCES.values():
        path = resolve(source.name)
        assert path == (mirror / source.filename).resolve()
        assert file_sha256(path) == source.sha256
    assert _cache_files(cache) == []


def test_mirror_file_with_wrong_hash_is_an_error_naming_it(tmp_path, cache, monkeypatch):
    fake = tmp_path / "fake-mirror"
    fake.mkdir()
    (fake / "the-verdict.txt").write_text("not the story\n")
    monkeypatch.setenv("LLMPREP_MIRROR", str(fake))
    with pytest.raises(SourceError) as err:
        resolve("the-verdict")
    message = str(err.value)
    assert str(fake / "the-verdict.txt") in message
    assert SOURCES["the-verdict"].sha256 in message
    assert _cache_files(cache) == []


def test_missing_source_offline_names_file_url_hash_and_variables(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("LLMPREP_MIRROR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = SOURCES["tinyshakespeare"]
    with pytest.raises(SourceError) as err:
        resolve("tinyshakespeare")
    message = str(err.value)
    for part in (source.filename, source.url, source.sha256, "LLMPREP_MIRROR", "LLMPREP_CACHE"):
        assert part in message


def test_mirror_folders_are_searched_in_order(tmp_path, mirror, cache, monkeypatch):
    monkeypatch.setenv("LLMPREP_MIRROR", f"{tmp_path / 'absent'}:{tmp_path}:{mirror}")
    assert resolve("the-verdict") == (mirror / "the-verdict.txt").resolve()


def test_corrupted_cache_file_is_treated_as_absent(mirror, cache):
    stale = cache / "sources" / "the-verdict.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("truncated")
    assert resolve("the-verdict") == (mirror / "the-verdict.txt").resolve()
    assert not stale.exists()


def test_intact_cache_file_wins_over_the_mirror(mirror, cache):
    cached = cache / "sources" / "the-verdict.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes((mirror / "the-verdict.txt").read_bytes())
    assert resolve("the-verdict") == cached


def test_download_is_checked_cached_and_then_served_from_the_cache(
    server, cache, online, monkeypatch
):
    root, url = server
    data = b"a small corpus\n" * 100
    (root / "corpus.txt").write_bytes(data)
    _register(monkeypatch, Source("fake", f"{url}/corpus.txt", "fake.txt", _sha(data)))

    path = resolve("fake")
    assert path == cache / "sources" / "fake.txt"
    assert path.read_bytes() == data
    assert _cache_files(cache) == ["fake.txt"]

    (root / "corpus.txt").unlink()
    assert resolve("fake") == path


def test_download_of_a_zip_keeps_only_the_checked_member(server, cache, online, monkeypatch):
    root, url = server
    member = b"ham\thello\nspam\tWIN now\n"
    with zipfile.ZipFile(root / "bundle.zip", "w") as archive:
        archive.writestr("readme", "about the data")
        archive.writestr("Collection", member)
    _register(
        monkeypatch,
        Source("zipped", f"{url}/bundle.zip", "Collection", _sha(member), member="Collection"),
    )
    assert resolve("zipped").read_bytes() == member
    assert _cache_files(cache) == ["Collection"]


def test_download_with_wrong_hash_leaves_the_cache_clean(server, cache, online, monkeypatch):
    root, url = server
    (root / "corpus.txt").write_text("tampered")
    expected = _sha(b"the real thing")
    _register(monkeypatch, Source("fake", f"{url}/corpus.txt", "fake.txt", expected))
    with pytest.raises(SourceError, match=expected) as err:
        resolve("fake")
    assert _sha(b"tampered") in str(err.value)
    assert _cache_files(cache) == []


def test_zip_without_the_member_is_a_clear_error(server, cache, online, monkeypatch):
    root, url = server
    with zipfile.ZipFile(root / "bundle.zip", "w") as archive:
        archive.writestr("readme", "about the data")
    _register(monkeypatch, Source("zipped", f"{url}/bundle.zip", "C", _sha(b""), member="C"))
    with pytest.raises(SourceError, match="not a zip holding 'C'"):
        resolve("zipped")
    assert _cache_files(cache) == []


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/corpus.txt"


@pytest.mark.parametrize("where", ["missing-on-server", "no-server"])
def test_failed_download_is_one_clear_error(where, server, cache, online, monkeypatch):
    url = f"{server[1]}/absent.txt" if where == "missing-on-server" else _closed_port_url()
    _register(monkeypatch, Source("fake", url, "fake.txt", _sha(b"x")))
    with pytest.raises(SourceError, match="download failed") as err:
        resolve("fake")
    assert url in str(err.value)
    assert err.value.__cause__ is None
    assert _cache_files(cache) == []


def test_local_path_resolves_to_the_absolute_file(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hi")
    monkeypatch.chdir(tmp_path)
    assert resolve("notes.txt") == tmp_path / "notes.txt"


def test_missing_local_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(SourceError, match=r"missing\.txt does not exist"):
        resolve(str(tmp_path / "missing.txt"))


def test_folder_is_refused_with_a_glob_hint(tmp_path):
    with pytest.raises(SourceError, match=r"is a folder .*\*\.txt"):
        resolve(str(tmp_path))


def test_resolve_many_expands_globs_sorted_and_mixes_names(tmp_path, mirror):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(name)
    paths = resolve_many([str(tmp_path / "*.txt"), "the-verdict", str(tmp_path / "a.txt")])
    assert paths == [tmp_path / "a.txt", tmp_path / "b.txt", (mirror / "the-verdict.txt").resolve()]
    assert resolve_many(str(tmp_path / "c.md")) == [tmp_path / "c.md"]


def test_resolved_files_keep_the_names_they_were_given_by(tmp_path, mirror, monkeypatch):
    """Tables show ``tinyshakespeare`` and ``notes/*.txt``'s matches as typed, relative."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("a")
    monkeypatch.chdir(tmp_path)
    named = resolve_named(["tinyshakespeare", "notes/*.txt", "notes/a.txt"])
    assert named == {
        "tinyshakespeare": (mirror / "tinyshakespeare.txt").resolve(),
        "notes/a.txt": tmp_path / "notes" / "a.txt",
    }


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(SourceError, match=re.escape(pattern)):
        resolve_many([pattern])
