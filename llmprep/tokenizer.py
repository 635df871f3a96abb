"""The GPT-2 byte-pair tokenizer, a thin wrapper over ``tiktoken.get_encoding("gpt2")``.

Offline, point ``TIKTOKEN_CACHE_DIR`` at a folder holding tiktoken's own cache files (named by
the sha1 of each file's URL, hash-checked by tiktoken). When they are missing, the error names
the variable, the file and its URL; with ``HF_HUB_OFFLINE=1`` no download is tried at all.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import tiktoken

from llmprep.data.sources import OFFLINE_ENV, offline
from llmprep.errors import UserError

EOT_TOKEN = "<|endoftext|>"
CACHE_ENV = "TIKTOKEN_CACHE_DIR"
_GPT2_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
FILES: dict[str, tuple[str, ...]] = {
    "gpt2": (f"{_GPT2_BASE}/vocab.bpe", f"{_GPT2_BASE}/encoder.json"),
}
"""The files tiktoken fetches for an encoding (only GPT-2's are checked ahead)."""


class TokenizerError(UserError, RuntimeError):
    """tiktoken's files for an encoding are neither cached nor downloadable."""


def tiktoken_cache() -> Path:
    """The folder tiktoken caches its files in, found the way tiktoken finds it."""
    folder = os.environ.get(CACHE_ENV) or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(folder or Path(tempfile.gettempdir()) / "data-gym-cache")


def cache_file(url: str) -> Path:
    """The file tiktoken caches ``url`` as (named by the sha1 of the URL)."""
    return tiktoken_cache() / hashlib.sha1(url.encode()).hexdigest()


def load_encoding(name: str) -> tiktoken.Encoding:
    """``tiktoken.get_encoding(name)``, failing with one clear line when its files are missing."""
    missing = [url for url in FILES.get(name, ()) if not cache_file(url).is_file()]
    where = f"{CACHE_ENV}={os.environ.get(CACHE_ENV, '')!r} (looked in {tiktoken_cache()})"
    if missing and offline():
        raise TokenizerError(
            f"the {name} tokenizer needs {missing[0].rsplit('/', 1)[1]} ({missing[0]}), which is "
            f"not in {where} as {cache_file(missing[0]).name}, and "
            f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]} forbids downloading it: point {CACHE_ENV} "
            "at a folder holding tiktoken's cache files"
        )
    try:
        return tiktoken.get_encoding(name)
    except OSError as err:
        url = missing[0] if missing else name
        raise TokenizerError(
            f"the {name} tokenizer could not fetch {url} ({type(err).__name__}) and it is not "
            f"in {where}: connect to the network once, or point {CACHE_ENV} at a folder "
            "holding tiktoken's cache files"
        ) from err


class Tokenizer:
    """Encodes text to GPT-2 token ids and back. ``<|endoftext|>`` written inside a text is
    refused unless ``allow_special=True``: a corpus must not silently gain document boundaries."""

    def __init__(self, name: str = "gpt2") -> None:
        self.name = name
        self._enc = load_encoding(name)
        self.eot_id: int = self._enc.eot_token
        self.vocab_size: int = self._enc.n_vocab

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``allow_special`` lets ``<|endoftext|>`` map to ``eot_id``."""
        allowed = {EOT_TOKEN} if allow_special else set()
        return self._enc.encode(text, allowed_special=allowed)

    def encode_ordinary_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Token ids of many texts, encoded on ``num_threads`` threads, treating special-token
        markers as plain text."""
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; invalid UTF-8 byte sequences become U+FFFD."""
        return self._enc.decode(list(ids))


@lru_cache(maxsize=4)
def get_tokenizer(name: str = "gpt2") -> Tokenizer:
    """The shared tokenizer for ``name`` (loaded once per process)."""
    return Tokenizer(name)
