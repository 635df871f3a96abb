"""The GPT-2 tokenizer: the book's ids, the end-of-text policy, batches and round trips."""

from __future__ import annotations

import pytest

from llmprep.tokenizer import get_tokenizer

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
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert [tok.decode(ids) for ids in tok.encode_batch(texts)] == texts
