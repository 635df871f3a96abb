"""The GPT-2 tokenizer: the book's ids, the end-of-text policy, batches and round trips."""

from __future__ import annotations

import pytest

from llmprep.tokenizer import Tokenizer, TokenizerError, get_tokenizer

BOOK_TEXT = "Hello, do you like tea? <|endoftext|> In the sunlit terraces"
BOOK_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]


def test_the_books_example_encodes_to_the_books_ids():
    tok = get_tokenizer()
    assert tok.encode(BOOK_TEXT, allow_special=True) == BOOK_IDS
    assert tok.decode(BOOK_IDS) == BOOK_TEXT
    assert tok.eot_id == 50256 and tok.vocab_size == 50257


def test_end_of_text_inside_text_is_refused_unless_allowed():
    tok = get_tokenizer()
    with pytest.raises(ValueError, match="endoftext"):
        tok.encode(BOOK_TEXT)
    ordinary = tok.encode_ordinary_batch([BOOK_TEXT])[0]
    assert 50256 not in ordinary and tok.decode(ordinary) == BOOK_TEXT


def test_batch_encoding_equals_one_by_one():
    tok = get_tokenizer()
    texts = ["Every effort moves you", "", "Akwirw ier", "naïve café 🙂"]
    assert tok.encode_ordinary_batch(texts) == [tok.encode(t) for t in texts]
    assert [tok.decode(ids) for ids in tok.encode_ordinary_batch(texts)] == texts


@pytest.fixture
def no_tiktoken_files(tmp_path, monkeypatch):
    """An empty tiktoken cache and no encodings loaded in this process yet."""
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return tmp_path / "empty"


def test_offline_without_cache_files_names_the_variable_and_file_without_trying(
    no_tiktoken_files, monkeypatch
):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("a download was tried although HF_HUB_OFFLINE=1")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(requests, "get", no_network)
    with pytest.raises(TokenizerError) as err:
        Tokenizer()
    message = str(err.value)
    assert "TIKTOKEN_CACHE_DIR=" in message and str(no_tiktoken_files) in message
    assert "vocab.bpe" in message and "HF_HUB_OFFLINE=1" in message
    assert "\n" not in message


def test_failed_download_names_the_url_and_the_variable(no_tiktoken_files, monkeypatch):
    import requests

    def unreachable(*args, **kwargs):
        raise requests.ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(requests, "get", unreachable)
    with pytest.raises(TokenizerError, match=r"could not fetch https://\S+/vocab\.bpe.*"):
        Tokenizer()
