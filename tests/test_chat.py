"""`python -m llmprep.chat`: a conversation in the terminal, streamed; reset, quit, Ctrl-C."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

import pytest
from conftest import tiny_instruct_checkpoint

from llmprep.chat import ChatSettings, chat, main
from llmprep.inference import LoadedModel, Sampling, load_model

CONTEXT = 64


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = tiny_instruct_checkpoint(tmp_path_factory.mktemp("chat") / "instruct.ckpt", CONTEXT)
    return load_model(str(path), "cpu")


def settings(max_new_tokens: int = 6, **extra: object) -> ChatSettings:
    return ChatSettings(ckpt_path="unused", max_new_tokens=max_new_tokens, **extra)


def answer(loaded: LoadedModel, messages: list[dict[str, str]], max_new_tokens: int = 6) -> str:
    ids = loaded.conversation_ids(messages)
    return loaded.answers([ids], [Sampling(max_new_tokens)]).completions()[0].text


class Terminal:
    """Scripted input lines (then Ctrl-D), and everything written; ``interrupt_at=n`` is a
    Ctrl-C at the n-th write after the first line was read (a piece of the first answer)."""

    def __init__(self, lines: list[str], interrupt_at: int | None = None) -> None:
        self.lines: Iterator[str] = iter(lines)
        self.written: list[str] = []
        self.interrupt_at = interrupt_at
        self.writes_after_read: int | None = None

    def read(self, prompt: str) -> str:
        self.written.append(prompt)
        if self.writes_after_read is None:
            self.writes_after_read = 0
        try:
            return next(self.lines)
        except StopIteration:
            raise EOFError from None

    def write(self, text: str) -> None:
        if self.writes_after_read is not None:
            self.writes_after_read += 1
            if self.writes_after_read == self.interrupt_at:
                raise KeyboardInterrupt
        self.written.append(text)

    @property
    def text(self) -> str:
        return "".join(self.written)


def test_answers_stream_in_the_conversation_and_reset_starts_over(loaded: LoadedModel) -> None:
    terminal = Terminal(["Hi", "And then?", "/reset", "Hi", "/quit", "never read"])
    chat(loaded, settings(), terminal.read, terminal.write)
    first = answer(loaded, [{"role": "user", "content": "Hi"}])
    second = answer(
        loaded,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And then?"},
        ],
    )
    expected = f"> {first}\n> {second}\n> (conversation reset)\n> {first}\n> "
    intro = f"Chatting with {loaded.source}. /reset starts over, /quit leaves.\n"
    assert terminal.text == intro + expected


def test_a_system_message_comes_first_and_survives_a_reset(loaded: LoadedModel) -> None:
    terminal = Terminal(["Hi", "/reset", "Hi"])
    chat(loaded, settings(system="Be brief."), terminal.read, terminal.write)
    expected = answer(
        loaded, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert expected != answer(loaded, [{"role": "user", "content": "Hi"}])
    assert terminal.text.count(f"> {expected}\n") == 2


def test_ctrl_c_stops_the_answer_not_the_conversation(loaded: LoadedModel) -> None:
    terminal = Terminal(["Hi", "Hi again"], interrupt_at=2)
    chat(loaded, settings(12), terminal.read, terminal.write)
    first = answer(loaded, [{"role": "user", "content": "Hi"}], 12)
    stopped, _, rest = terminal.text.partition(" [stopped]\n> ")
    assert stopped.endswith("> " + first[: len(stopped) - stopped.rindex("> ") - 2])
    assert len(stopped) - stopped.rindex("> ") - 2 < len(first)
    assert rest.endswith("\n> \n")  # the second question was answered, then Ctrl-D
    assert len(rest) > len("\n> \n")


def test_old_exchanges_are_left_out_when_the_window_is_full(loaded: LoadedModel) -> None:
    long = "Tell me about the weather in a long sentence please"
    terminal = Terminal([long, long, long])
    chat(loaded, settings(20), terminal.read, terminal.write)
    alone = answer(loaded, [{"role": "user", "content": long}], 20)
    left_out = "(left out the 1 oldest exchange(s) to fit)\n"
    assert terminal.text.endswith(f"> {alone}\n> {left_out}{alone}\n> {left_out}{alone}\n> \n")


def test_the_command_reads_stdin_and_ends_at_eof(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    assert main([f"ckpt_path={loaded.source}", "max_new_tokens=6", "device=cpu"]) == 0
    first = answer(loaded, [{"role": "user", "content": "Hi"}])
    assert capfd.readouterr().out.endswith(f"> {first}\n> \n")
