"""The GPT-2 byte-pair tokenizer, a thin wrapper over ``tiktoken.get_encoding("gpt2")``.

Offline, point ``TIKTOKEN_CACHE_DIR`` at a folder holding tiktoken's own cache files.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import tiktoken

EOT_TOKEN = "<|endoftext|>"


class Tokenizer:
    """Encodes text to GPT-2 token ids and back.

    ``<|endoftext|>`` written inside a text is refused unless ``allow_special=True``: a corpus that
    happens to contain the marker must not silently gain document boundaries.
    """

    def __init__(self, name: str = "gpt2") -> None:
        self.name = name
        self._enc = tiktoken.get_encoding(name)
        self.eot_id: int = self._enc.eot_token
        self.vocab_size: int = self._enc.n_vocab

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``allow_special`` lets ``<|endoftext|>`` map to ``eot_id``."""
        allowed = {EOT_TOKEN} if allow_special else set()
        return self._enc.encode(text, allowed_special=allowed)

    def encode_batch(
        self, texts: Sequence[str], allow_special: bool = False, num_threads: int = 2
    ) -> list[list[int]]:
        """Token ids of many texts, encoded on ``num_threads`` threads."""
        allowed = {EOT_TOKEN} if allow_special else set()
        return self._enc.encode_batch(list(texts), num_threads=num_threads, allowed_special=allowed)

    def encode_ordinary_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Token ids of many texts, treating special-token markers as plain text."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; invalid UTF-8 byte sequences become U+FFFD."""
        return self._enc.decode(list(ids))


@lru_cache(maxsize=4)
def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """The shared tokenizer for ``name`` (loaded once per process)."""
    return Tokenizer(name)
