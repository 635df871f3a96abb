"""Prompt styles: how an instruction record becomes the text a model is tuned on and prompted with.

A style is data, not code: three template pieces and a marker (``PromptStyle``). The prompt
ends with the response header, so that at generation time the model starts straight on the
answer, and ``mask_prompt`` hides the header along with the instruction (both are template, not
something to learn to write).

Styles:

* ``alpaca`` - the book's chapter 7 format (Alpaca's preamble and ``### ...`` sections).
* ``phi3`` - the book's exercise 7.1 variant: ``<|user|>`` and ``<|assistant|>:`` tags, the text
  exactly as the book's solution writes it (no ``<|end|>`` tag, a colon after ``<|assistant|>``).
  To GPT-2 the tags are ordinary text, not special tokens.
* ``plain`` - no preamble and no tags: the instruction, the input after a blank line, then
  ``Response:`` on a line of its own. The shortest prompt that still gives generation a marker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptStyle:
    """One prompt format.

    ``instruction`` holds ``{instruction}``, ``input`` holds ``{input}`` and is used only for a
    non-empty input, ``response`` is the header written between the prompt and the answer, and
    ``response_marker`` is what ``extract_response`` looks for in generated text.
    """

    name: str
    instruction: str
    input: str
    response: str
    response_marker: str

    def format_prompt(self, instruction: str, input: str = "") -> str:
        """The text the model is given: instruction, input block when non-empty, response header."""
        text = self.instruction.format(instruction=instruction)
        if input:
            text += self.input.format(input=input)
        return text + self.response

    def format_example(self, record: Mapping[str, str]) -> tuple[str, str]:
        """``(prompt_text, response_text)`` of a record with ``instruction``/``input``/``output``.

        A missing ``input`` counts as empty; prompt + response is the full training text.
        """
        return self.format_prompt(record["instruction"], record.get("input", "")), record["output"]

    def extract_response(self, generated_text: str) -> str:
        """The answer in ``generated_text``: what follows the first response marker, stripped.

        Without a marker the text is taken to be the continuation alone (the prompt already ended
        with the header) and is returned stripped.
        """
        _, found, after = generated_text.partition(self.response_marker)
        return (after if found else generated_text).strip()


STYLES: dict[str, PromptStyle] = {
    style.name: style
    for style in (
        PromptStyle(
            name="alpaca",
            instruction=(
                "Below is an instruction that describes a task. "
                "Write a response that appropriately completes the request."
                "\n\n### Instruction:\n{instruction}"
            ),
            input="\n\n### Input:\n{input}",
            response="\n\n### Response:\n",
            response_marker="### Response:",
        ),
        PromptStyle(
            name="phi3",
            instruction="<|user|>\n{instruction}",
            input="\n{input}",
            response="\n<|assistant|>:\n",
            response_marker="<|assistant|>:",
        ),
        PromptStyle(
            name="plain",
            instruction="{instruction}",
            input="\n\n{input}",
            response="\n\nResponse:\n",
            response_marker="Response:",
        ),
    )
}


def get_style(name: str) -> PromptStyle:
    """The registered style called ``name``; an unknown name is an error listing the known ones."""
    try:
        return STYLES[name]
    except KeyError:
        known = ", ".join(sorted(STYLES))
        raise ValueError(f"unknown prompt style {name!r}; known styles: {known}") from None
