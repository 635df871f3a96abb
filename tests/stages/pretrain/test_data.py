"""The pretraining data module: windows follow the model, splits, corpora by name, file or glob."""

from __future__ import annotations

import pytest

from llmprep.stages.pretrain.data import PretrainDataModule


def _setup(**kwargs) -> PretrainDataModule:
    dm = PretrainDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_windows_follow_the_context_and_stride_defaults_to_the_window(mirror):
    dm = _setup(paths=["the-verdict"], context_length=64, train_fraction=0.9)
    assert dm.max_length == dm.stride == 64
    assert len(dm.train_set) == (int(0.9 * 5145) - 1) // 64
    x, y = dm.train_set[0]
    assert x.shape == y.shape == (64,)
    assert dm.val_set is not None


def test_window_capped_by_context_and_overlapping_stride(mirror):
    dm = _setup(paths=["the-verdict"], context_length=32, max_length=256, stride=16)
    assert dm.max_length == 32 and dm.stride == 16


def test_character_split_tokenizes_each_part_like_the_book(mirror):
    text = (mirror / "the-verdict.txt").read_text(encoding="utf-8")
    dm = _setup(paths=["the-verdict"], context_length=256, split_by="characters")
    from llmprep.tokenizer import get_tokenizer

    cut = int(0.9 * len(text))
    assert len(dm.val_set.tokens) == len(get_tokenizer().encode(text[cut:]))


def test_globs_of_local_files_and_a_clear_error_for_a_tiny_corpus(tmp_path):
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text("word " * 199 + "word", encoding="utf-8")
    dm = _setup(paths=[str(tmp_path / "doc*.txt")], context_length=16, train_fraction=0.5)
    assert len(dm.train_set.tokens) + len(dm.val_set.tokens) == 3 * 200 + 2
    (tmp_path / "small.txt").write_text("too short", encoding="utf-8")
    with pytest.raises(ValueError, match="max_length"):
        _setup(paths=[str(tmp_path / "small.txt")], context_length=16)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"data\.split_by='words'"):
        PretrainDataModule(paths=["the-verdict"], split_by="words")
    with pytest.raises(ValueError, match=r"data\.paths"):
        PretrainDataModule(paths=[])


def test_character_split_keeps_documents_apart_and_markers_as_text(tmp_path):
    from llmprep.tokenizer import get_tokenizer

    tok = get_tokenizer()
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("one <|endoftext|> two three four five six seven eight", encoding="utf-8")
    b.write_text("nine ten", encoding="utf-8")
    dm = PretrainDataModule(
        paths=[str(a), str(b)], context_length=4, split_by="characters", train_fraction=0.5
    )
    train, val = dm._split_characters([a, b])
    text_a, text_b = a.read_text(), b.read_text()
    cut = int(0.5 * (len(text_a) + len(text_b)))
    assert train.tolist() == tok.encode_ordinary_batch([text_a[:cut]])[0]
    expected_val = [
        *tok.encode_ordinary_batch([text_a[cut:]])[0],
        tok.eot_id,
        *tok.encode("nine ten"),
    ]
    assert val.tolist() == expected_val
    assert tok.eot_id not in train.tolist()  # the marker in the text stays text
    assert "<|endoftext|>" in tok.decode(train.tolist())


def test_character_split_refuses_json_lines(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "hello there"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"split_by=characters .* JSON Lines"):
        _setup(paths=[str(corpus)], context_length=4, split_by="characters")


def test_character_split_skips_empty_documents(tmp_path):
    files = [tmp_path / name for name in ("a.txt", "empty.txt", "blank.txt", "b.txt")]
    for file, text in zip(files, ["one two three four", "", " \n", "five six"], strict=True):
        file.write_text(text, encoding="utf-8")
    dm = PretrainDataModule(context_length=4, split_by="characters", train_fraction=0.5)
    train, val = dm._split_characters(files)
    plain_train, plain_val = dm._split_characters([files[0], files[3]])
    assert (train.tolist(), val.tolist()) == (plain_train.tolist(), plain_val.tolist())
