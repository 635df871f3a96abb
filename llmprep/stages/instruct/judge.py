"""An LLM judge that scores generated responses 0-100, the book's chapter 7 evaluation.

The judge is any chat endpoint reachable over HTTP: Ollama's ``/api/chat`` (the book's
``llama3`` through Ollama) or an OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp's
server, LM Studio, OpenAI itself). Requests use only the standard library. Sampling is pinned
(temperature 0, a fixed seed) so a re-run scores alike as far as the server allows.

A reply is a score only when it cannot mean anything else (``parse_score``); an unparsable
reply or a score outside 0..100 is counted, kept in the results for inspection, and left out of
the average instead of guessed at. An empty model response scores 0 without asking, as in the
book.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmprep.errors import UserError
from llmprep.training.progress import progress

APIS = ("auto", "ollama", "openai")
MAX_SCORE = 100
BIN_WIDTH = 10
_WRAPPING = "\\s*_`\"'"
"""What may surround a score and its label: whitespace, Markdown emphasis and code, quotes."""
_SCORE_REPLY = re.compile(
    rf"""[{_WRAPPING}]*
    (?:score\s*(?:[:=]|is)?[{_WRAPPING}]*)?
    (?P<score>-?[0-9]+)
    (?:\s*(?:/|out\s+of)\s*{MAX_SCORE})?
    [{_WRAPPING}.!]*""",
    re.IGNORECASE | re.VERBOSE,
)
_SNIPPET = 200


class JudgeError(UserError, RuntimeError):
    """The judge could not be asked or did not answer in its wire format; names the URL."""


def judge_prompt(record: Mapping[str, str], response_key: str = "model_response") -> str:
    """The question put to the judge about one record: task, reference answer and response.

    The book's judge prompt in our own words: the same information (the instruction, its input
    when non-empty, the correct output, the model's response) and the same request for a bare
    integer from 0 to 100.
    """
    task = f"Instruction:\n{record['instruction']}"
    if record.get("input"):
        task += f"\n\nInput:\n{record['input']}"
    return (
        "You are grading a model's response to a task against a reference answer.\n\n"
        f"{task}\n\n"
        f"Reference answer:\n{record['output']}\n\n"
        f"Model response:\n{record[response_key]}\n\n"
        f"Score the model response from 0 to {MAX_SCORE}, where {MAX_SCORE} is a perfect "
        "response. Reply with the integer only."
    )


def parse_score(reply: str) -> int | None:
    """The score of a reply that is nothing but one integer, else ``None``.

    Accepted: the integer alone (``"85"``, ``" 72.\\n"``), optionally labelled ``Score``,
    ``Score:``, ``Score =`` or ``Score is`` (any case), optionally followed by the prompt's scale
    (``/100``, ``out of 100``), with surrounding whitespace, Markdown emphasis (``*``, ``_``,
    backticks) or quotes, and a final ``.`` or ``!``. Anything else is ``None``: another number
    may be the score as well as this one ("On a scale of 0 to 100, I would score this 85.",
    "Score (0-100): 72"), the judge may have used another scale ("4 out of 5"), and an
    explanation may qualify the number. Decision: such replies are left unscored rather than
    guessed at; the prompt asks for the integer only, so a well-behaved judge gives few.

    The range is not checked here, so a caller can tell an unreadable reply from a reply such
    as ``120`` or ``-3``.
    """
    match = _SCORE_REPLY.fullmatch(reply)
    return None if match is None else int(match.group("score"))


def histogram(scores: Sequence[int]) -> dict[str, int]:
    """Counts per 10-point bin, ``"0-9"`` up to ``"90-100"`` (a perfect 100 joins the top bin)."""
    top = MAX_SCORE // BIN_WIDTH - 1
    counts = Counter(min(score // BIN_WIDTH, top) for score in scores)
    ends = [b * BIN_WIDTH + BIN_WIDTH - 1 for b in range(top)] + [MAX_SCORE]
    return {f"{b * BIN_WIDTH}-{end}": counts[b] for b, end in enumerate(ends)}


def detect_api(url: str) -> str:
    """``ollama`` for a URL ending in ``/api/chat``, ``openai`` for ``/chat/completions``."""
    path = urllib.parse.urlparse(url).path.rstrip("/")
    if path.endswith("/api/chat"):
        return "ollama"
    if path.endswith("/chat/completions"):
        return "openai"
    raise ValueError(
        f"judge.url {url!r}: cannot tell the API from the path {path!r} (expected .../api/chat "
        "or .../chat/completions); set judge.api to ollama or openai"
    )


@dataclass
class Judge:
    """A chat endpoint used as a grader.

    ``url`` is the full endpoint URL; ``api`` picks the wire format (``auto`` reads it off the
    URL, see ``detect_api``). ``timeout`` bounds each request in seconds. A request that fails
    to connect, times out, or gets a 429/5xx is retried ``retries`` times, waiting
    ``backoff * 2**attempt`` seconds between tries; other HTTP errors (a wrong model name, a
    bad key) are not retried. ``api_key_env`` names an environment variable whose value is sent
    as a bearer token, so the key itself never sits in a config file or a run log.
    """

    url: str = "http://localhost:11434/api/chat"
    model: str = "llama3"
    api: str = "auto"
    temperature: float = 0.0
    seed: int | None = 123
    timeout: float = 120.0
    retries: int = 2
    backoff: float = 2.0
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        if urllib.parse.urlparse(self.url).scheme not in ("http", "https"):
            raise ValueError(f"judge.url {self.url!r} must be an http:// or https:// URL")
        if self.api not in APIS:
            raise ValueError(f"judge.api {self.api!r} is not one of {list(APIS)}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ValueError(
                "judge.timeout must be positive and judge.retries, judge.backoff non-negative, "
                f"got {self.timeout}, {self.retries}, {self.backoff}"
            )
        self.api = detect_api(self.url) if self.api == "auto" else self.api
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(
                    f"judge at {self.url}: judge.api_key_env names {self.api_key_env}, which is "
                    "not set"
                )
            self.headers["Authorization"] = f"Bearer {key}"

    def _payload(self, prompt: str) -> dict[str, Any]:
        """The request body: Ollama takes sampling settings under ``options``, OpenAI at the top."""
        sampling: dict[str, Any] = {"temperature": self.temperature}
        if self.seed is not None:
            sampling["seed"] = self.seed
        messages = [{"role": "user", "content": prompt}]
        body = {"model": self.model, "messages": messages, "stream": False}
        return {**body, "options": sampling} if self.api == "ollama" else {**body, **sampling}

    def chat(self, prompt: str) -> str:
        """The judge's reply to one user message, with retries; a ``JudgeError`` when it fails."""
        data = json.dumps(self._payload(prompt)).encode("utf-8")
        request = urllib.request.Request(self.url, data=data, headers=self.headers)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:_SNIPPET].decode("utf-8", "replace")
                problem = f"HTTP {err.code} {err.reason}: {detail}"
                if err.code != 429 and err.code < 500:
                    raise JudgeError(f"judge at {self.url} refused the request: {problem}") from err
            except (OSError, http.client.HTTPException) as err:
                problem = str(getattr(err, "reason", err)) or type(err).__name__
            else:
                return self._reply_text(body)
        attempts = f"{self.retries + 1} attempt{'s' if self.retries else ''}"
        raise JudgeError(
            f"judge at {self.url} gave no answer after {attempts} "
            f"(timeout {self.timeout}s each): {problem}"
        )

    def _reply_text(self, body: bytes) -> str:
        """The message text of a reply; Ollama's streamed form (one JSON per line) is joined."""
        try:
            text = body.decode("utf-8")
            if self.api == "openai":
                return json.loads(text)["choices"][0]["message"]["content"]
            try:
                parts = [json.loads(text)]
            except json.JSONDecodeError:
                parts = [json.loads(line) for line in text.splitlines() if line.strip()]
            errors = [p["error"] for p in parts if "error" in p]
            if errors:
                raise JudgeError(f"judge at {self.url} answered with an error: {errors[0]}")
            return "".join(p["message"]["content"] for p in parts)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            snippet = body[:_SNIPPET].decode("utf-8", "replace")
            raise JudgeError(
                f"judge at {self.url} sent a reply that is not {self.api} chat JSON: {snippet!r}"
            ) from err

    def evaluate(
        self, records: Sequence[Mapping[str, str]], response_key: str = "model_response"
    ) -> dict[str, Any]:
        """Scores for ``records`` (``instruction``, ``input``, ``output`` and the response).

        Returns a JSON-ready dict: ``average_score`` over the scored records (``None`` when
        none is), ``histogram`` of those scores, counts of ``scored``, ``empty_responses``,
        ``unparsable`` and ``out_of_range`` replies, the ``rejected`` replies with their record
        index, and per-record ``scores`` (``None`` where the reply gave none).
        """
        for index, record in enumerate(records):
            missing = [k for k in ("instruction", "output", response_key) if k not in record]
            if missing:
                raise ValueError(f"record {index} has no {missing[0]!r} to judge")
        scores: list[int | None] = []
        rejected: list[dict[str, Any]] = []
        empty = 0
        with progress(len(records), f"judging ({self.model})") as advance:
            for index, record in enumerate(records):
                if not record[response_key].strip():
                    empty += 1
                    score: int | None = 0
                else:
                    reply = self.chat(judge_prompt(record, response_key))
                    score = parse_score(reply)
                    if score is None or not 0 <= score <= MAX_SCORE:
                        reason = "unparsable" if score is None else "out_of_range"
                        rejected.append(
                            {"index": index, "reason": reason, "reply": reply[:_SNIPPET]}
                        )
                        score = None
                scores.append(score)
                advance(1)
        valid = [s for s in scores if s is not None]
        return {
            "judge": {"url": self.url, "api": self.api, "model": self.model},
            "count": len(records),
            "scored": len(valid),
            "average_score": sum(valid) / len(valid) if valid else None,
            "histogram": histogram(valid),
            "empty_responses": empty,
            "unparsable": sum(r["reason"] == "unparsable" for r in rejected),
            "out_of_range": sum(r["reason"] == "out_of_range" for r in rejected),
            "rejected": rejected,
            "scores": scores,
        }
