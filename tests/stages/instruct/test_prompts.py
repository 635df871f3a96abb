"""Prompt styles: the exact texts the model is tuned on and how answers are cut out again."""

from __future__ import annotations

import pytest

from llmprep.stages.instruct.prompts import STYLES, get_style

WITH_INPUT = {
    "instruction": "Identify the correct spelling of the following word.",
    "input": "Ocassion",
    "output": "The correct spelling is 'Occasion.'",
}
NO_INPUT = {
    "instruction": "What is an antonym of 'complicated'?",
    "input": "",
    "output": "An antonym of 'complicated' is 'simple'.",
}

# The full training texts, written out by hand from the book's chapter 7 code
# (format_input + "\n\n### Response:\n" and, for phi3, exercise 7.1's solution).
EXPECTED = {
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nIdentify the correct spelling of the "
        "following word.\n\n### Input:\nOcassion\n\n### Response:\nThe correct spelling is "
        "'Occasion.'",
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nWhat is an antonym of 'complicated'?"
        "\n\n### Response:\nAn antonym of 'complicated' is 'simple'.",
    ),
    "phi3": (
        "<|user|>\nIdentify the correct spelling of the following word.\nOcassion"
        "\n<|assistant|>:\nThe correct spelling is 'Occasion.'",
        "<|user|>\nWhat is an antonym of 'complicated'?"
        "\n<|assistant|>:\nAn antonym of 'complicated' is 'simple'.",
    ),
    "plain": (
        "Identify the correct spelling of the following word.\n\nOcassion"
        "\n\nResponse:\nThe correct spelling is 'Occasion.'",
        "What is an antonym of 'complicated'?\n\nResponse:\nAn antonym of 'complicated' is "
        "'simple'.",
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_text_is_exact_with_and_without_input(name: str) -> None:
    style = get_style(name)
    for record, expected in zip((WITH_INPUT, NO_INPUT), EXPECTED[name], strict=True):
        prompt, response = style.format_example(record)
        assert prompt + response == expected
        assert response == record["output"]
        assert prompt == style.format_prompt(record["instruction"], record["input"])


def test_every_registered_style_is_tested() -> None:
    assert set(STYLES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prompt_ends_with_the_response_header(name: str) -> None:
    style = get_style(name)
    prompt = style.format_prompt("Say hi.")
    assert prompt.endswith(style.response)
    assert style.response_marker in style.response


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_extract_response_from_prompt_plus_generation(name: str) -> None:
    style = get_style(name)
    prompt, _ = style.format_example(WITH_INPUT)
    generated = prompt + "  The correct spelling is 'Occasion'.\n"
    assert style.extract_response(generated) == "The correct spelling is 'Occasion'."


def test_extract_response_of_a_bare_continuation_is_the_stripped_text() -> None:
    assert get_style("alpaca").extract_response("\n Paris.\n") == "Paris."


def test_extract_response_keeps_everything_after_the_first_marker() -> None:
    style = get_style("alpaca")
    text = "### Instruction:\nName a city.\n\n### Response:\nParis.\n\n### Response:\nRome."
    assert style.extract_response(text) == "Paris.\n\n### Response:\nRome."


def test_unknown_style_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown prompt style 'chatml'.*alpaca, phi3, plain"):
        get_style("chatml")
