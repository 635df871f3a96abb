"""``python -m llmprep.chat ckpt_path=...`` (also ``llmprep-chat``): talk to a trained model in the
terminal, its answers streamed as they are generated.

The conversation is sent whole each turn, in the checkpoint's prompt style (rendered as
:mod:`llmprep.inference` says). When it no longer fits the context window with room for
``max_new_tokens``, its oldest exchanges are left out, and the command says so; a single
message longer than the window is continued from its last ``context_length`` tokens.

At the ``>`` prompt: ``/reset`` starts the conversation over, ``/quit`` (or Ctrl-D) leaves.
Ctrl-C while an answer is being written stops that answer (what was written of it stays in
the conversation) and returns to the prompt; Ctrl-C at the prompt only clears the line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from llmprep.commands import command_main, setting
from llmprep.generate import ModelSettings
from llmprep.inference import LoadedModel, load_model

QUIT = ("/quit", "/exit")
RESET = "/reset"


@dataclass
class ChatSettings(ModelSettings):
    max_new_tokens: int = setting(256, "most new tokens per answer")
    system: str | None = setting(None, "a system message put before the conversation")


EXAMPLES = (
    "python -m llmprep.chat ckpt_path=outputs/instruct/.../checkpoints/best.ckpt",
    "python -m llmprep.chat ckpt_path=openai-community/gpt2 temperature=0.8 top_k=50",
)


def fit_context(loaded: LoadedModel, messages: list[dict[str, str]], room: int) -> list[int]:
    """The conversation's token ids, its oldest exchanges (after a system message) dropped
    from ``messages`` until ``room`` new tokens fit in the context window, or one user
    message is left."""
    first = 1 if messages[0]["role"] == "system" else 0
    ids = loaded.conversation_ids(messages)
    while len(ids) + room > loaded.context_length and len(messages) - first > 1:
        del messages[first : first + 2]
        ids = loaded.conversation_ids(messages)
    return ids


def chat(
    loaded: LoadedModel,
    settings: ChatSettings,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = lambda text: print(text, end="", flush=True),
) -> None:
    """The conversation loop, reading the user's lines with ``read`` and writing with
    ``write`` (the terminal by default)."""
    if loaded.classifier is not None:
        raise ValueError(f"{loaded.source} is a classifier: chat needs a language model")
    sampling = settings.sampling()
    start = [{"role": "system", "content": settings.system}] if settings.system else []
    messages = list(start)
    write(f"Chatting with {loaded.source}. /reset starts over, /quit leaves.\n")
    while True:
        try:
            line = read("> ")
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n")
            continue
        if line.strip() in QUIT:
            return
        if line.strip() == RESET:
            messages = list(start)
            write("(conversation reset)\n")
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        kept = len(messages)
        ids = fit_context(loaded, messages, sampling.max_new_tokens)
        if len(messages) < kept:
            write(f"(left out the {(kept - len(messages)) // 2} oldest exchange(s) to fit)\n")
        answer = ""
        try:
            for (piece,) in loaded.answers([ids], [sampling]):
                answer += piece
                write(piece)
        except KeyboardInterrupt:
            write(" [stopped]")
        write("\n")
        messages.append({"role": "assistant", "content": answer})


main = command_main(
    ChatSettings,
    lambda settings: chat(load_model(settings.ckpt_path, settings.device), settings),
    "python -m llmprep.chat",
    "Talk to a trained model in the terminal (see llmprep/chat.py's docstring).",
    EXAMPLES,
)

if __name__ == "__main__":
    sys.exit(main())
