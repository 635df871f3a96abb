"""The token store: chunked tokens equal whole-text tokens, documents, reuse, rebuilds, splits."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmprep.data.token_store import TokenStore, build_token_store, split_tokens
from llmprep.files import temp_path
from llmprep.tokenizer import get_tokenizer

PIECES = [
    "word", "Hello", " the", "'s", "'ll", "'RE", "123", " 4.5", "!!", "--", "<|endoftext|>",
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n\n", " \n", "  \n", "\n ", "\u3000",
    "\xa0", "\x1c", "日本語", " café", "🙂", "\f", "\v",
]  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("LLMPREP_CACHE", str(folder))
    return folder


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, texts: list[str]) -> Path:
    return _write(path, "".join(json.dumps({"text": text}) + "\n" for text in texts))


def _identity(store: TokenStore) -> tuple[int, int]:
    stat = store.bin_path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.mark.parametrize("chunk_chars", [3, 17, 200])
def test_chunked_parallel_tokens_equal_whole_text_tokens(tmp_path, cache, chunk_chars):
    rng = random.Random(chunk_chars)
    text = "".join(rng.choice(PIECES) for _ in range(1500))
    store = build_token_store([_write(tmp_path / "mixed.txt", text)], chunk_chars=chunk_chars)
    assert store.tokens.tolist() == get_tokenizer().encode_ordinary_batch([text])[0]


def test_the_verdict_gives_the_books_token_count(mirror, cache):
    store = build_token_store([mirror / "the-verdict.txt"])
    assert len(store) == 5145
    assert store.tokens.dtype == np.uint16
    assert store.meta["num_tokens"] == 5145


def test_tinyshakespeare_gives_338025_tokens(mirror, cache):
    assert len(build_token_store([mirror / "tinyshakespeare.txt"])) == 338025


def test_documents_are_joined_by_exactly_one_end_of_text(tmp_path, cache):
    tok = get_tokenizer()
    files = [_write(tmp_path / "a.txt", "Hello there"), _write(tmp_path / "b.txt", "General")]
    tokens = build_token_store(files).tokens.tolist()
    assert tokens == [*tok.encode("Hello there"), tok.eot_id, *tok.encode("General")]


def test_literal_end_of_text_in_a_file_is_plain_text(tmp_path, cache):
    store = build_token_store([_write(tmp_path / "a.txt", "one<|endoftext|>two")])
    assert get_tokenizer().eot_id not in store.tokens.tolist()


def test_windows_line_endings_read_like_the_books_open(tmp_path, cache):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"first line\r\nsecond\r\n")
    assert build_token_store([path]).tokens.tolist() == get_tokenizer().encode(
        "first line\nsecond\n"
    )


def test_unchanged_sources_reuse_the_store(tmp_path, cache):
    source = _write(tmp_path / "a.txt", "some text\n" * 50)
    first = build_token_store([source])
    before = _identity(first)
    second = build_token_store([source])
    assert _identity(second) == before
    assert second.meta == first.meta


def test_touched_but_identical_source_is_reused(tmp_path, cache):
    source = _write(tmp_path / "a.txt", "some text\n" * 50)
    before = _identity(build_token_store([source]))
    os.utime(source, ns=(1_000_000_000, 1_000_000_000))
    second = build_token_store([source])
    assert _identity(second) == before
    assert second.meta["sources"][0]["mtime_ns"] == 1_000_000_000


def test_changed_source_rebuilds_the_store(tmp_path, cache):
    source = _write(tmp_path / "a.txt", "cats and dogs")
    first = build_token_store([source])
    before = _identity(first)
    _write(source, "rats and hogs")
    os.utime(source, ns=(2_000_000_000, 2_000_000_000))
    second = build_token_store([source])
    assert second.bin_path == first.bin_path
    assert _identity(second) != before
    assert second.tokens.tolist() == get_tokenizer().encode("rats and hogs")


def test_other_file_lists_get_their_own_store(tmp_path, cache):
    a, b = _write(tmp_path / "a.txt", "alpha"), _write(tmp_path / "b.txt", "beta")
    assert build_token_store([a]).bin_path != build_token_store([a, b]).bin_path


def test_undecodable_bytes_name_the_file_and_leave_no_store(tmp_path, cache):
    path = tmp_path / "broken.txt"
    path.write_bytes(b"fine\nstill fine\n\xff\xfe oops\n")
    with pytest.raises(ValueError, match=r"broken\.txt is not valid UTF-8.*byte 16"):
        build_token_store([path], chunk_chars=4)
    assert list((cache / "tokens").iterdir()) == []


def test_missing_and_empty_corpora_are_refused(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match=r"absent\.txt"):
        build_token_store([tmp_path / "absent.txt"])
    with pytest.raises(ValueError, match=r"no text.*empty\.txt"):
        build_token_store([_write(tmp_path / "empty.txt", "")])


def test_split_tokens_returns_views():
    tokens = np.arange(10, dtype=np.uint16)
    train, val = split_tokens(tokens, 0.9)
    assert train.tolist() == list(range(9)) and val.tolist() == [9]
    assert np.shares_memory(train, tokens) and np.shares_memory(val, tokens)
    train, val = split_tokens(tokens, 1.0)
    assert len(train) == 10 and len(val) == 0


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_split_tokens_refuses_fractions_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="train_fraction"):
        split_tokens(np.arange(10), fraction)


def test_jsonl_lines_are_documents_of_their_own(tmp_path, cache):
    tok = get_tokenizer()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "Hello there"}\n\n{"text": "General"}\n', encoding="utf-8")
    expected = [*tok.encode("Hello there"), tok.eot_id, *tok.encode("General")]
    assert build_token_store([corpus]).tokens.tolist() == expected


def test_jsonl_line_without_text_names_file_and_line(tmp_path, cache):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "ok"}\n{"body": "no"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2"):
        build_token_store([corpus])


def test_empty_and_blank_documents_add_no_end_of_text(tmp_path, cache):
    eot = get_tokenizer().eot_id
    with_empty = _jsonl(tmp_path / "with_empty.jsonl", ["", "General", " \n\t", "Kenobi", ""])
    without = _jsonl(tmp_path / "without.jsonl", ["General", "Kenobi"])
    files = [
        _write(tmp_path / "empty.txt", ""),
        _write(tmp_path / "a.txt", "Hello there"),
        _write(tmp_path / "blank.txt", "\n\n  \n"),
        with_empty,
        _write(tmp_path / "b.txt", "end"),
    ]
    tokens = build_token_store(files, chunk_chars=2).tokens.tolist()
    assert not any(a == b == eot for a, b in itertools.pairwise(tokens))
    assert tokens[0] != eot and tokens[-1] != eot
    plain = [tmp_path / "a.txt", without, tmp_path / "b.txt"]
    assert tokens == build_token_store(plain).tokens.tolist()


def test_a_killed_builds_temporary_files_are_swept_and_a_live_builders_kept(tmp_path, cache):
    source = _write(tmp_path / "a.txt", "some text")
    first = build_token_store([source])
    json_path = first.bin_path.with_suffix(".json")
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [temp_path(first.bin_path, dead.pid), temp_path(json_path, dead.pid)]
        busy = temp_path(first.bin_path, live.pid)
        for temp in [*stale, busy]:
            temp.write_bytes(b"half written")
        first.bin_path.unlink()  # the killed build was the first: no store yet
        json_path.unlink()
        again = build_token_store([source])
        assert again.tokens.tolist() == get_tokenizer().encode("some text")
        assert sorted(p.name for p in (cache / "tokens").iterdir()) == sorted(
            [busy.name, first.bin_path.name, json_path.name]
        )
    finally:
        live.kill()
        live.wait()
