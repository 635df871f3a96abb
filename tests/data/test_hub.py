"""Hub text datasets become one JSON Lines document per record, reused from the cache."""

from __future__ import annotations

import json

import pytest

from llmprep.data.hub import hub_text_file
from llmprep.data.token_store import build_token_store
from llmprep.tokenizer import get_tokenizer


def local_dataset(tmp_path, monkeypatch, csv: str) -> str:
    """A dataset folder holding ``train.csv`` with ``csv``, and a private cache."""
    monkeypatch.setenv("LLMPREP_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "stories"
    folder.mkdir()
    (folder / "train.csv").write_text(csv, encoding="utf-8")
    return str(folder)


def test_local_dataset_folder_becomes_jsonl_documents(tmp_path, monkeypatch):
    folder = local_dataset(tmp_path, monkeypatch, 'text,n\n"Once upon a time",1\n"The end",2\n')
    path = hub_text_file(folder, None, "train", "text")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == [{"text": "Once upon a time"}, {"text": "The end"}]
    (tmp_path / "stories" / "train.csv").unlink()
    assert hub_text_file(folder, None, "train", "text") == path


def test_unknown_text_field_names_the_columns(tmp_path, monkeypatch):
    folder = local_dataset(tmp_path, monkeypatch, "body\nhello\n")
    with pytest.raises(ValueError, match=r"hf_text_field='text'.*\['body'\]"):
        hub_text_file(folder, None, "train", "text")


def test_empty_rows_keep_their_line_and_add_no_document(tmp_path, monkeypatch):
    csv = 'text,n\n"Once upon a time",1\n,2\n"",3\n"  ",4\n"The end",5\n'
    path = hub_text_file(local_dataset(tmp_path, monkeypatch, csv), None, "train", "text")
    lines = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == ["Once upon a time", "", "", "  ", "The end"]
    tok = get_tokenizer()
    expected = [*tok.encode("Once upon a time"), tok.eot_id, *tok.encode("The end")]
    assert build_token_store([path]).tokens.tolist() == expected
