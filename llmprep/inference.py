"""A trained model ready to use, for ``llmprep.generate``, ``llmprep.chat`` and ``llmprep.serve``:
loaded from any source, prompted the way it was tuned, answering batches of prompts that each
have their own settings, as text that streams.

Sources (:func:`load_model`): one of our checkpoints (any stage, a LoRA run's adapters merged
into its base), a Hugging Face GPT-2 folder (``python -m llmprep.export`` writes one), or a hub
id. A checkpoint of the ``instruct`` or ``dpo`` stage, or a folder exported from one, carries
its prompt style, and prompts are formatted in it; a ``classify`` checkpoint labels texts
instead of writing them.

Conversations: the book's models are tuned on single-turn records, each the prompt, the answer
and ``<|endoftext|>``. A conversation is rendered as that sequence of records: each user
message in the prompt style, each assistant reply after it followed by ``<|endoftext|>``, a
system message first as plain text. Without a style (a pretrained model) the messages are one
running text, the assistant's replies being the model's own continuations.

Streaming text: tokens are decoded as they come, but a piece is held back while it may still
change, that is while it ends in an incomplete UTF-8 character or in the start of a stop string,
so the streamed pieces always add up to the final text and never show a stop string.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmprep.checkpoints import REMOTE_SCHEMES, read_checkpoint
from llmprep.export import CLASSIFIER_FORMAT, PROMPT_STYLE_KEY
from llmprep.model import GPT
from llmprep.model.generate import left_pad, stop_index, stream
from llmprep.model.init import checkpoint_model
from llmprep.model.weights import CONFIG_FILE, load_pretrained, pretrained_folder, read_json
from llmprep.stages import restore_task
from llmprep.stages.classify.task import ClassifyTask, Prediction
from llmprep.stages.instruct.prompts import PromptStyle, get_style
from llmprep.tokenizer import Tokenizer, get_tokenizer

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Sampling:
    """How one prompt is continued: up to ``max_new_tokens`` tokens, greedy at temperature 0,
    else sampled from the ``top_k``/``top_p``-filtered softmax, from a generator seeded with
    ``seed`` (a seeded prompt samples the same text alone or in any batch); the answer ends at
    ``<|endoftext|>`` or before the first of the ``stop`` strings."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: expected an integer >= 1")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop={self.stop!r}: expected a list of non-empty strings")


@dataclass(frozen=True)
class Completion:
    """One prompt's answer. ``completion_tokens`` counts the tokens the model generated for it
    (the ``<|endoftext|>`` or the one completing a stop string included); ``finish_reason`` is
    ``"stop"`` (``<|endoftext|>`` or a stop string) or ``"length"`` (``max_new_tokens``)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class TextStream:
    """One row's new tokens as text, piece by piece (see the module docstring)."""

    tokenizer: Tokenizer
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None

    def push(self, token: int) -> str:
        """The text that ``token`` makes final (often ""); ``<|endoftext|>`` ends the row."""
        if self.finish_reason is not None:
            return ""
        self.ids.append(token)
        if token == self.tokenizer.eot_id:
            return self.finish("stop")
        self.text = self.tokenizer.decode(self.ids)
        at = stop_index(self.text, self.stop)
        if at is not None:
            self.text = self.text[:at]
            return self.finish("stop")
        settled = self.text.rstrip("\ufffd")
        held = max(
            (n for s in self.stop for n in range(1, len(s)) if settled.endswith(s[:n])), default=0
        )
        return self._emit(len(settled) - held)

    def finish(self, reason: str) -> str:
        """End the row (``reason``: ``"stop"`` or ``"length"``); the text still held back."""
        self.finish_reason = reason
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        piece = self.text[self.emitted : upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return piece


class Answers:
    """The continuations of a batch of token-id ``prompts``, one :class:`Sampling` each:
    iterating yields, at each step, every row's new piece of text (see :class:`TextStream`);
    :meth:`completions` gives the finished answers. Generation ends once every row has ended,
    at ``<|endoftext|>``, a stop string or its own ``max_new_tokens``."""

    def __init__(
        self, loaded: LoadedModel, prompts: Sequence[Sequence[int]], sampling: Sequence[Sampling]
    ) -> None:
        if len(prompts) != len(sampling):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling)} sampling settings")
        self.loaded, self.prompts, self.sampling = loaded, prompts, list(sampling)
        self.rows = [TextStream(loaded.tokenizer, tuple(s.stop)) for s in self.sampling]

    def __iter__(self) -> Iterator[list[str]]:
        loaded, sampling = self.loaded, self.sampling
        idx, mask = left_pad(self.prompts, loaded.tokenizer.eot_id, loaded.device)
        generators = [
            None if s.seed is None else torch.Generator(loaded.device).manual_seed(s.seed)
            for s in sampling
        ]
        steps = stream(
            loaded.model,
            idx,
            max(s.max_new_tokens for s in sampling),
            temperature=[float(s.temperature) for s in sampling],
            top_k=[s.top_k for s in sampling],
            top_p=[s.top_p for s in sampling],
            generator=generators,
            eos_id=loaded.tokenizer.eot_id,
            attention_mask=mask,
        )
        for tokens in steps:
            pieces = []
            for row, settings, token in zip(self.rows, sampling, tokens.tolist(), strict=True):
                piece = row.push(token)
                if row.finish_reason is None and len(row.ids) >= settings.max_new_tokens:
                    piece += row.finish("length")
                pieces.append(piece)
            yield pieces
            if all(row.finish_reason is not None for row in self.rows):
                return
        yield [row.finish("length") if row.finish_reason is None else "" for row in self.rows]

    def completions(self) -> list[Completion]:
        """Every row's answer; generates what is not generated yet."""
        for _ in self:
            pass
        return [
            Completion(row.text, len(prompt), len(row.ids), row.finish_reason or "length")
            for row, prompt in zip(self.rows, self.prompts, strict=True)
        ]


@dataclass
class LoadedModel:
    """A model ready to use: the GPT in eval mode on ``device``, the tokenizer, the prompt style
    it was tuned with (None: plain text), and for a ``classify`` checkpoint the task that labels
    texts (``classifier``)."""

    source: str
    model: GPT
    tokenizer: Tokenizer
    style: PromptStyle | None = None
    classifier: ClassifyTask | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def prompt_ids(self, text: str, raw: bool = False) -> list[int]:
        """The token ids of a prompt: ``text`` in the model's style unless ``raw`` (special-token
        markers in it are plain text, as in training)."""
        if self.style is not None and not raw:
            text = self.style.format_prompt(text)
        return self.tokenizer.encode_ordinary_batch([text])[0]

    def conversation_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The token ids of a conversation (see the module docstring); a message list that is
        empty, has an unknown role or a non-text content, or does not end with a user message is
        a ``ValueError`` naming the message."""
        check_messages(messages)
        encode = self.tokenizer.encode_ordinary_batch
        texts = [str(m["content"]) for m in messages]
        if self.style is None:
            return encode(["".join(texts)])[0]
        ids: list[int] = []
        for message, text in zip(messages, texts, strict=True):
            if message["role"] == "system":
                ids += encode([text + "\n\n"])[0]
            elif message["role"] == "user":
                ids += encode([self.style.format_prompt(text)])[0]
            else:
                ids += [*encode([text])[0], self.tokenizer.eot_id]
        return ids

    def answers(self, prompts: Sequence[Sequence[int]], sampling: Sequence[Sampling]) -> Answers:
        """The answers to token-id ``prompts``, each with its own settings (:class:`Answers`)."""
        if self.classifier is not None:
            raise ValueError(f"{self.source} is a classifier: it labels texts, it writes none")
        return Answers(self, prompts, sampling)

    def classify(self, texts: Sequence[str], batch_size: int = 8) -> list[Prediction]:
        """Each text's label and probabilities, from a ``classify`` checkpoint."""
        if self.classifier is None:
            raise ValueError(f"{self.source} is a language model, not a classifier")
        return self.classifier.classify(texts, batch_size=batch_size)


def check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a chat message list :meth:`LoadedModel.conversation_ids` cannot render."""
    if not messages:
        raise ValueError("messages is empty: a chat needs at least one user message")
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise ValueError(
                f"messages[{i}].role={message.get('role')!r}: expected one of {', '.join(ROLES)}"
            )
        if not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{i}].content must be text")
    if messages[-1]["role"] != "user":
        raise ValueError(
            f"messages[{len(messages) - 1}] is a {messages[-1]['role']} message: the last "
            "message must be the user's"
        )


def pick_device(device: str) -> torch.device:
    """``device``, with ``auto`` meaning the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(source: str, device: str = "auto") -> LoadedModel:
    """The model ``source`` names, ready to use on ``device`` (see the module docstring)."""
    target = pick_device(device)
    tokenizer = get_tokenizer()
    text = str(source)
    if text.endswith(".ckpt") or text.startswith(REMOTE_SCHEMES) or Path(text).is_file():
        ckpt = read_checkpoint(text, "ckpt_path")
        hparams = ckpt.get("hyper_parameters", {})
        if hparams.get("config", {}).get("stage", {}).get("name") == "classify":
            task = restore_task(ckpt, text, "classify", target)
            return LoadedModel(text, task.model, tokenizer, classifier=task)
        model = checkpoint_model(ckpt, text)
        style = hparams.get("prompt_style")
    else:
        folder = pretrained_folder(text, "ckpt_path")
        meta = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
        if meta.get("format") == CLASSIFIER_FORMAT:
            raise ValueError(
                f"{text} is a classifier exported by llmprep: serve it from its checkpoint "
                "(ckpt_path=<run>/checkpoints/best.ckpt)"
            )
        model = load_pretrained(folder)
        style = meta.get(PROMPT_STYLE_KEY)
    return LoadedModel(
        text, model.to(target).eval(), tokenizer, get_style(style) if style else None
    )
