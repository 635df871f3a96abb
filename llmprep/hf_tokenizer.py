"""GPT-2's tokenizer as Hugging Face tokenizer files, derived offline from tiktoken's ranks.

An exported model folder needs them: without tokenizer files ``transformers`` builds an empty
tokenizer, and ``pipeline("text-generation", model=folder)`` silently returns the prompt alone.

tiktoken holds the BPE as *ranks* (token bytes -> id, a merged token's id being its merge's
priority); Hugging Face's byte-level BPE holds a vocabulary and a list of *merges* (pairs of
tokens, in priority order), both written in GPT-2's printable byte alphabet
(:func:`byte_alphabet`). A multi-byte token's merge is the split that BPE itself reaches: run BPE
on its bytes allowing only merges ranked below the token, which stops at exactly two tokens.

Decision: the files are built from the ranks (not copied from tiktoken's cache of OpenAI's
``encoder.json``/``vocab.bpe``), so they come from the very encoding our data was tokenized with,
whatever files tiktoken read it from. ``tokenizer.json`` (the ``tokenizers`` library's file,
which ``transformers`` loads first) is written beside ``vocab.json`` + ``merges.txt`` (which
older loaders and the slow tokenizer read). ``clean_up_tokenization_spaces`` is off, so decoding
gives back tiktoken's text exactly also in ``transformers`` 4, whose clean-up turns ``" ,"`` into
``","`` (version 5 never applies it to a BPE tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from itertools import pairwise

from llmprep.files import json_text
from llmprep.tokenizer import EOT_TOKEN, load_encoding

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
GPT2_EOT_ID = 50256
"""GPT-2's ``<|endoftext|>``, its last token: a vocabulary holds all of GPT-2's tokens when it is
larger than this id."""
MERGES_HEADER = "#version: 0.2"
"""The first line of GPT-2's ``merges.txt``; loaders skip a first line starting with ``#``."""


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the other 68
    (control characters, space, soft hyphen...) for ``chr(256 + n)`` in byte order, so every
    token is a string of visible characters with no whitespace."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    shifted = (b for b in range(256) if b not in printable)
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(shifted)}


def _spelled(token: bytes) -> str:
    alphabet = byte_alphabet()
    return "".join(alphabet[b] for b in token)


def _split(token: bytes, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens BPE merges into ``token``: BPE on its bytes with only lower ranks."""
    own = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        rank, i = min((ranks.get(a + b, own), i) for i, (a, b) in enumerate(pairwise(parts)))
        if rank >= own:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {own} ({token!r}) is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


def bpe_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges of tiktoken ``ranks`` in priority (rank) order, one per multi-byte token."""
    return [
        _split(token, ranks) for token in sorted(ranks, key=ranks.__getitem__) if len(token) > 1
    ]


def vocab_and_merges(name: str = "gpt2") -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The Hugging Face vocabulary (special tokens included) and merges of tiktoken's ``name``,
    spelled in GPT-2's byte alphabet."""
    enc = load_encoding(name)
    specials = {enc.encode_single_token(s): s for s in enc.special_tokens_set}
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.n_vocab) if i not in specials}
    vocab = {_spelled(token): i for token, i in ranks.items()}
    vocab |= {s: i for i, s in specials.items()}
    merges = [(_spelled(a), _spelled(b)) for a, b in bpe_merges(ranks)]
    return vocab, merges


def _tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> str:
    """``tokenizer.json`` of GPT-2's byte-level BPE, as the ``tokenizers`` library writes it."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokenizer = Tokenizer(
        BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
    return tokenizer.to_str() + "\n"


def tokenizer_files(context_length: int) -> dict[str, str]:
    """File name -> text of the tokenizer and generation files of a GPT-2 model folder whose
    model reads ``context_length`` tokens: ``<|endoftext|>`` (50256) is its bos, eos and unk
    token, and generation stops at it."""
    from transformers import GenerationConfig

    vocab, merges = vocab_and_merges("gpt2")
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": context_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        **special,
    }
    generation = GenerationConfig(bos_token_id=GPT2_EOT_ID, eos_token_id=GPT2_EOT_ID)
    return {
        VOCAB_FILE: json.dumps(vocab, ensure_ascii=False) + "\n",
        MERGES_FILE: "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n",
        TOKENIZER_FILE: _tokenizer_json(vocab, merges),
        TOKENIZER_CONFIG_FILE: json_text(config),
        SPECIAL_TOKENS_FILE: json_text(special),
        GENERATION_CONFIG_FILE: generation.to_json_string(use_diff=True),
    }
