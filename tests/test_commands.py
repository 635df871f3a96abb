"""`key=value` settings of the model-using commands: typed, verbatim text, errors by name."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llmprep.commands import UsageError, command_settings, parse_settings, setting, usage


@dataclass
class Settings:
    ckpt_path: str = setting(help="the model")
    prompt: str | None = setting(None, "a prompt")
    temperature: float = setting(0.0, "how random")
    top_k: int | None = setting(None, "the k most likely")
    stop: list[str] = setting([], "stop strings")
    raw: bool = setting(False, "as typed")


def test_values_are_typed_and_text_is_taken_verbatim() -> None:
    parsed = parse_settings(
        Settings,
        ["ckpt_path=a: b", "prompt=Translate: yes", "temperature=0.5", "top_k=3", "stop=[x,y]"],
    )
    assert parsed == Settings("a: b", "Translate: yes", 0.5, 3, ["x", "y"], False)
    assert parse_settings(Settings, ["ckpt_path=${x}", "prompt=null"]) == Settings("${x}")
    assert parse_settings(Settings, ["ckpt_path=null", "raw=true"]) == Settings("null", raw=True)
    assert Settings("a").stop == [] and Settings("a").stop is not Settings("a").stop


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "missing ckpt_path=..."),
        (["ckpt_path"], "'ckpt_path': expected key=value"),
        (["ckpt_path=a", "beams=4"], "unknown key 'beams'; the keys are ckpt_path, prompt,"),
        (["ckpt_path=a", "temperature=hot"], "temperature: Value 'hot' of type 'str' could not"),
        (["ckpt_path=a", "raw=maybe"], "raw: Value 'maybe' is not a valid bool"),
    ],
)
def test_bad_command_lines_name_the_key(words: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_settings(Settings, words)
    assert str(caught.value).startswith(message)


def test_help_lists_every_key_and_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        command_settings(Settings, ["--help"], "prog", "Does things.", ["prog ckpt_path=a"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out == usage(Settings, "prog", "Does things.", ["prog ckpt_path=a"]) + "\n"
    assert "  ckpt_path        the model (required)" in out
    assert "  stop             stop strings (default [])" in out
    with pytest.raises(SystemExit) as exit_:
        command_settings(Settings, ["top_k=x"], "prog", "Does things.")
    assert exit_.value.code == 2
    assert "prog: error: top_k: Value 'x'" in capsys.readouterr().err
