"""GPT-2's Hugging Face tokenizer files, derived from tiktoken's ranks: they are OpenAI's own
files, and ``transformers`` tokenizers read from them encode and decode exactly as tiktoken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmprep.hf_tokenizer import (
    GENERATION_CONFIG_FILE,
    MERGES_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    bpe_merges,
    tokenizer_files,
)
from llmprep.tokenizer import FILES, cache_file, get_tokenizer

CONTEXT = 96
UNUSUAL_TEXT = (
    " naïve café 🙂🙃 日本語のテキスト Ünïcödé \u200b\u00ad\x00\x07 ’s it's we'LL 12345 3.14159"
    "\t\t  tab\n\n\n   indented \r\n line\u3000wide x<|endoftext|>y  <|endoftext|>   trailing   "
)
"""What a short story lacks: accents, emoji, CJK, zero-width, soft-hyphen and control
characters, contractions, digits, runs of spaces, tabs and newlines, ``<|endoftext|>`` inside a
word and alone."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tokenizer files of a model with a ``CONTEXT``-token window."""
    out = tmp_path_factory.mktemp("hf_tokenizer")
    for name, text in tokenizer_files(CONTEXT).items():
        (out / name).write_text(text, encoding="utf-8")
    return out


def test_vocab_and_merges_are_openais_encoder_json_and_vocab_bpe(folder: Path):
    """tiktoken read its ranks from OpenAI's two files; deriving them back gives those files."""
    vocab_bpe, encoder_json = (cache_file(url) for url in FILES["gpt2"])
    merges = (folder / MERGES_FILE).read_text(encoding="utf-8")
    assert merges == vocab_bpe.read_text(encoding="utf-8")
    assert len(merges.splitlines()) == 1 + 50000
    vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
    assert vocab == json.loads(encoder_json.read_text(encoding="utf-8"))
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256
    assert vocab["Ġthe"] == 262 and vocab["Ċ"] == 198  # " the" and "\n" in the byte alphabet


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.json + merges.txt"])
def test_transformers_tokenizer_encodes_and_decodes_as_tiktoken(
    source: str, folder: Path, mirror: Path, tmp_path: Path
):
    if source != TOKENIZER_FILE:  # what a loader without tokenizer.json reads
        shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
        (tmp_path / TOKENIZER_FILE).unlink()
        folder = tmp_path
    hf = AutoTokenizer.from_pretrained(folder)
    ours = get_tokenizer()
    text = (mirror / "the-verdict.txt").read_text(encoding="utf-8") + UNUSUAL_TEXT
    ids = ours.encode(text, allow_special=True)
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids) == text
    for piece in ("", " ", "Hello", "\n\n", "<|endoftext|>", "  <|endoftext|>x"):
        assert hf(piece)["input_ids"] == ours.encode(piece, allow_special=True), piece
    assert len(hf) == 50257
    assert (hf.eos_token_id, hf.bos_token_id, hf.unk_token_id) == (50256, 50256, 50256)
    assert hf.model_max_length == CONTEXT


def test_generation_config_stops_at_end_of_text(folder: Path):
    generation = json.loads((folder / GENERATION_CONFIG_FILE).read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == generation["bos_token_id"] == 50256


def test_a_token_that_is_no_merge_of_lower_ranked_ones_is_refused():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4}
    assert bpe_merges(ranks) == [(b"a", b"b"), (b"ab", b"c")]
    with pytest.raises(ValueError, match=r"token 3 \(b'abc'\) is not a merge"):
        bpe_merges({b"a": 0, b"b": 1, b"c": 2, b"abc": 3})
