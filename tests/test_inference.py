"""A trained model ready to use: loading any source, prompts in its style, batches of rows with
their own settings, and streamed text."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_instruct_checkpoint

from llmprep.export import main as export
from llmprep.inference import Answers, LoadedModel, Sampling, TextStream, load_model
from llmprep.stages.instruct.prompts import get_style
from llmprep.tokenizer import get_tokenizer

PROMPTS = ["Name a colour.", "Add one to 41, then say why.", "Hi"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_instruct_checkpoint(tmp_path_factory.mktemp("inference") / "instruct.ckpt")


@pytest.fixture(scope="module")
def loaded(ckpt: Path) -> LoadedModel:
    return load_model(str(ckpt), "cpu")


def alone(loaded: LoadedModel, prompt: str, sampling: Sampling) -> str:
    return loaded.answers([loaded.prompt_ids(prompt)], [sampling]).completions()[0].text


def test_an_instruct_checkpoint_prompts_in_its_stored_style(loaded: LoadedModel) -> None:
    tok = get_tokenizer()
    assert loaded.style == get_style("phi3")
    assert loaded.prompt_ids("Hi") == tok.encode("<|user|>\nHi\n<|assistant|>:\n")
    assert loaded.prompt_ids("Hi", raw=True) == tok.encode("Hi")


def test_a_conversation_is_a_sequence_of_training_records(loaded: LoadedModel) -> None:
    tok = get_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    expected = [
        *tok.encode("Be brief.\n\n"),
        *tok.encode("<|user|>\nHi\n<|assistant|>:\n"),
        *tok.encode("Hello."),
        tok.eot_id,
        *tok.encode("<|user|>\nBye\n<|assistant|>:\n"),
    ]
    assert loaded.conversation_ids(messages) == expected
    plain = LoadedModel("plain", loaded.model, tok)
    assert plain.conversation_ids(messages) == tok.encode("Be brief.HiHello.Bye")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages is empty"),
        ([{"role": "robot", "content": "x"}], "messages[0].role='robot'"),
        ([{"role": "user", "content": None}], "messages[0].content must be text"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "messages[1] is a assistant message",
        ),
    ],
)
def test_bad_message_lists_are_refused_by_name(
    loaded: LoadedModel, messages: list, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        loaded.conversation_ids(messages)


def test_rows_with_their_own_settings_answer_as_they_answer_alone(loaded: LoadedModel) -> None:
    sampling = [
        Sampling(12),
        Sampling(7, temperature=1.0, seed=5),
        Sampling(9, temperature=0.8, top_k=20, top_p=0.9, seed=6),
    ]
    ids = [loaded.prompt_ids(p) for p in PROMPTS]
    batch = loaded.answers(ids, sampling).completions()
    assert [c.text for c in batch] == [
        alone(loaded, p, s) for p, s in zip(PROMPTS, sampling, strict=True)
    ]
    assert [c.completion_tokens for c in batch] == [12, 7, 9]
    assert [c.prompt_tokens for c in batch] == [len(i) for i in ids]
    assert {c.finish_reason for c in batch} == {"length"}  # the untrained model never ends
    assert alone(loaded, PROMPTS[1], Sampling(7, temperature=1.0, seed=7)) != batch[1].text


def test_a_stop_string_ends_the_answer_before_it(loaded: LoadedModel) -> None:
    full = alone(loaded, PROMPTS[0], Sampling(20))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    answer = loaded.answers([loaded.prompt_ids(PROMPTS[0])], [Sampling(20, stop=(stop,))])
    pieces = [piece for (piece,) in answer]
    (completion,) = answer.completions()
    assert completion.text == full[: full.index(stop)]
    assert completion.finish_reason == "stop"
    assert "".join(pieces) == completion.text


def test_streamed_pieces_add_up_and_never_show_a_stop_string_or_half_a_character() -> None:
    tok = get_tokenizer()
    text = "Hello 日本語 and 🙂 then ###END here"
    stream = TextStream(tok, stop=("###END",))
    pieces = [stream.push(token) for token in tok.encode(text)]
    assert "".join(pieces) == stream.text == "Hello 日本語 and 🙂 then "
    assert stream.finish_reason == "stop"
    assert not any("\ufffd" in piece or "#" in piece for piece in pieces)
    ended = TextStream(tok)
    assert ended.push(tok.encode("Hi")[0]) == "Hi"
    assert ended.push(tok.eot_id) == "" and ended.finish_reason == "stop"
    assert ended.push(tok.encode("more")[0]) == ""


def test_an_exported_folder_keeps_the_prompt_style_and_the_answers(
    ckpt: Path, loaded: LoadedModel, tmp_path: Path
) -> None:
    assert export([f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'hf'}"]) == 0
    folder = load_model(str(tmp_path / "hf"), "cpu")
    assert folder.style == loaded.style
    assert alone(folder, PROMPTS[1], Sampling(10)) == alone(loaded, PROMPTS[1], Sampling(10))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"max_new_tokens": 2, "stop": "###"}, "stop='###'"),
        ({"max_new_tokens": 2, "stop": ("",)}, "non-empty strings"),
    ],
)
def test_bad_sampling_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_rows_and_settings_must_pair_up(loaded: LoadedModel) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 sampling settings"):
        Answers(loaded, [[1], [2]], [Sampling(2)])
