"""``python -m llmprep.serve ckpt_path=...`` (also ``llmprep-serve``): serve a trained model over
HTTP, OpenAI-compatible, with LitServe.

A language model (any stage but ``classify``) answers ``POST /v1/chat/completions``, streamed
or whole, with the conversation rendered in its prompt style (see :mod:`llmprep.inference`),
and lists itself at ``GET /v1/models``. A ``classify`` checkpoint answers ``POST /predict``
instead: ``{"texts": [...]}`` (or ``{"text": "..."}``) in, each text's label and probabilities
out. ``GET /health`` says ``ok`` once the model is loaded.

How a request travels: the HTTP process checks it completely before it is queued (model name,
messages, the room left in the context window, sampling settings), so a bad request, streamed
or not, gets a 4xx with an OpenAI-style error body and never reaches the model; the HTTP
process therefore reads the model once at start to learn its tokenizer, prompt style and
context length, then drops the weights. The inference worker (its own process, with the model
on ``device``) takes up to ``max_batch_size`` queued requests, waiting at most
``batch_timeout`` seconds for them to gather, and generates them as one batch, each with its
own settings (a seeded request samples the same text alone or in any batch). A request's
response ends as soon as its own answer does, with its real ``finish_reason`` (``length``
when ``max_tokens`` ended it) and token counts.

Chat requests honour ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (OpenAI's
default 1; 0 is greedy), ``top_p``, ``stop``, ``seed`` and, as vLLM does, ``top_k``; ``n`` must
be 1; other OpenAI fields (penalties, tools, response formats, logprobs) are accepted and
ignored. With ``api_key_env=NAME`` every request but ``/health`` needs the header
``Authorization: Bearer $NAME`` (what OpenAI clients send from ``api_key=``), else 401.
"""

import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import litserve as ls
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.loops.base import LitLoop
from litserve.loops.simple_loops import BatchedLoop
from litserve.loops.streaming_loops import BatchedStreamingLoop
from litserve.specs.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamingChoice,
    ChatMessage,
    ChoiceDelta,
    OpenAISpec,
    UsageInfo,
)
from litserve.utils import LitAPIStatus, ResponseBufferItem
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware

from llmprep.commands import command_main, setting
from llmprep.inference import LoadedModel, Prediction, Sampling, load_model

HEALTH_PATH = "/health"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
"""The addresses LitServe binds to: this machine only, or every IPv4 / IPv6 interface."""


@dataclass
class ServeSettings:
    ckpt_path: str = setting(help="our checkpoint (.ckpt), an exported folder or a hub id")
    model_name: str | None = setting(None, "the model name clients send (default: ckpt_path)")
    host: str = setting("127.0.0.1", "address to listen on: 127.0.0.1, 0.0.0.0 or ::")
    port: int = setting(8000, "port to listen on (1024-65535)")
    device: str = setting("auto", "auto (the GPU if there is one), cpu, cuda, cuda:1, ...")
    max_batch_size: int = setting(8, "most requests generated together")
    batch_timeout: float = setting(0.05, "seconds a batch waits for more requests to join")
    max_tokens: int = setting(256, "max_tokens of a request that gives none (capped by context)")
    api_key_env: str | None = setting(None, "environment variable holding the API key")

    def check(self) -> None:
        """Refuse settings LitServe would fail on later, or run badly with."""
        if self.host not in HOSTS:
            raise ValueError(f"host={self.host!r}: expected one of {', '.join(HOSTS)}")
        if not 1024 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: expected 1024 to 65535")
        for key in ("max_batch_size", "max_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: expected an integer >= 1")
        if self.batch_timeout <= 0:
            raise ValueError(
                f"batch_timeout={self.batch_timeout}: expected seconds > 0 (at 0 LitServe's "
                "batching loop polls without pause, taking a whole CPU core)"
            )

    def api_key(self) -> str | None:
        """The key requests must carry, from the variable ``api_key_env`` names (None: open)."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ValueError(f"api_key_env={self.api_key_env}: ${self.api_key_env} is not set")
        return key


DESCRIPTION = "Serve a trained model over HTTP, OpenAI-compatible (see llmprep/serve.py)."
EXAMPLES = (
    "python -m llmprep.serve ckpt_path=openai-community/gpt2",
    "python -m llmprep.serve ckpt_path=outputs/instruct/.../checkpoints/best.ckpt "
    "model_name=my-assistant port=8080 api_key_env=LLMPREP_API_KEY",
)


def error_body(
    message: str, param: str | None = None, code: str | None = None, status: int = 400
) -> dict:
    """OpenAI's error object, which its clients turn into their exception's message; its type
    is ``server_error`` for a ``status`` of 500 or more, else ``invalid_request_error``."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def api_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> HTTPException:
    """An error response with OpenAI's body (see :func:`http_error`)."""
    return HTTPException(status, detail=error_body(message, param, code, status)["error"])


async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """Any HTTP error (ours or LitServe's) in OpenAI's error body."""
    detail = err.detail if isinstance(err.detail, dict) else {"message": str(err.detail)}
    fields = {key: detail.get(key) for key in ("message", "param", "code")}
    body = error_body(**fields, status=err.status_code)
    return JSONResponse(body, status_code=err.status_code, headers=err.headers)


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A body that is not JSON or does not fit the request's schema: 400, naming the field."""
    problems, param = [], None
    for problem in err.errors():
        where = [str(part) for part in problem["loc"] if part != "body"]
        if problem["type"] == "json_invalid":
            error = problem.get("ctx", {}).get("error", "")
            problems.append(f"the body is not valid JSON ({error} at position {where[-1]})")
            continue
        param = param or ".".join(where) or None
        problems.append(f"{'.'.join(where) or 'body'}: {problem['msg']}")
    return JSONResponse(error_body("; ".join(problems), param), status_code=400)


class BearerKey(BaseHTTPMiddleware):
    """Refuse (401) every request but the health check without ``Authorization: Bearer <key>``."""

    def __init__(self, app: Any, key: str) -> None:
        super().__init__(app)
        self.expected = f"Bearer {key}".encode()

    async def dispatch(self, request: Request, call_next: Any) -> Any:
        given = request.headers.get("authorization", "").encode()
        if request.url.path != HEALTH_PATH and not secrets.compare_digest(given, self.expected):
            message = "Missing or wrong API key: send the header 'Authorization: Bearer <key>'."
            return JSONResponse(error_body(message, code="invalid_api_key"), status_code=401)
        return await call_next(request)


class ChatRequest(ChatCompletionRequest):
    """LitServe's chat request with OpenAI's ranges checked, OpenAI's default temperature, and
    the fields LitServe's lacks (``seed``, and vLLM's ``top_k``)."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None


@dataclass(frozen=True)
class Job:
    """A checked chat request as the inference worker gets it: the prompt's token ids and how
    to continue them."""

    prompt_ids: list[int]
    sampling: Sampling


class ChatSpec(OpenAISpec):
    """LitServe's OpenAI spec with requests checked before they are queued and responses built
    here, so that each carries its own finish reason and ends with its own answer."""

    def __init__(self, prompter: LoadedModel, model_name: str, max_tokens: int) -> None:
        super().__init__()
        self.prompter, self.model_name, self.max_tokens = prompter, model_name, max_tokens
        self.created = int(time.time())

    def __getstate__(self) -> dict:
        """The inference worker gets the spec without the HTTP process's ``prompter``."""
        return {**super().__getstate__(), "prompter": None}

    def pre_setup(self, lit_api: ls.LitAPI) -> None:
        super().pre_setup(lit_api)
        self.add_endpoint("/v1/models", self.models, ["GET"])

    async def models(self) -> dict:
        """The one model served, in OpenAI's list format."""
        card = {"id": self.model_name, "object": "model", "created": self.created}
        return {"object": "list", "data": [{**card, "owned_by": "llmprep"}]}

    def populate_context(self, context: dict, request: Any) -> None:
        """Queued jobs carry everything the worker needs; there is no per-request context."""

    def job(self, request: ChatRequest) -> Job:
        """The worker's job for ``request``; a request the model cannot answer as asked is an
        HTTP error naming the field: 404 for another model's name, else 400."""
        if request.model and request.model != self.model_name:
            raise api_error(
                404,
                f"The model {request.model!r} does not exist: this server serves "
                f"{self.model_name!r}.",
                "model",
                "model_not_found",
            )
        if request.n != 1:
            raise api_error(400, f"n={request.n}: this server writes one choice per request", "n")
        try:
            ids = self.prompter.conversation_ids([m.model_dump() for m in request.messages])
        except ValueError as err:
            raise api_error(400, str(err), "messages") from None
        context, room = self.prompter.context_length, self.prompter.context_length - len(ids)
        asked = request.max_completion_tokens or request.max_tokens
        wanted = asked or min(self.max_tokens, max(room, 1))
        if wanted > room:
            raise api_error(
                400,
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {len(ids) + wanted} tokens ({len(ids)} in the messages, {wanted} in "
                "the completion). Please reduce the length of the messages or completion.",
                "messages" if asked is None else "max_tokens",
                "context_length_exceeded",
            )
        stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
        try:
            sampling = Sampling(
                wanted,
                1.0 if request.temperature is None else request.temperature,
                request.top_k,
                request.top_p,
                request.seed,
                tuple(stop),
            )
        except ValueError as err:
            raise api_error(400, str(err), "stop") from None
        return Job(ids, sampling)

    async def chat_completion(self, request: ChatRequest) -> Any:
        """``POST /v1/chat/completions``: check, queue, then answer streamed or whole."""
        job = self.job(request)
        uid = uuid.uuid4()
        pieces, arrived = deque(), asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=pieces, event=arrived)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        messages = self.worker_messages(uid, self.data_streamer(pieces, arrived, send_status=True))
        if request.stream:
            return StreamingResponse(self.chunks(job, messages), media_type="text/event-stream")
        return await self.whole(job, messages)

    async def worker_messages(self, uid: uuid.UUID, stream: AsyncIterator) -> AsyncIterator[dict]:
        """The worker's messages for one request, up to its last one (the one with a
        ``finish_reason``); the request's buffer is freed however it ends."""
        try:
            async for data, status in stream:
                if status == LitAPIStatus.ERROR:
                    raise api_error(500, "The model failed on this request; see the server log.")
                message = json.loads(data)
                yield message
                if "finish_reason" in message:
                    return
        finally:
            self.response_buffer.pop(uid, None)

    async def whole(self, job: Job, messages: AsyncIterator[dict]) -> ChatCompletionResponse:
        """The non-streamed response."""
        parts = []
        async for message in messages:
            parts.append(message["content"])
        choice = ChatCompletionResponseChoice(
            index=0,
            message=ChatMessage(role="assistant", content="".join(parts)),
            finish_reason=message["finish_reason"],
        )
        return ChatCompletionResponse(
            model=self.model_name, choices=[choice], usage=usage(job, message)
        )

    async def chunks(self, job: Job, messages: AsyncIterator[dict]) -> AsyncIterator[str]:
        """The streamed response: server-sent events of OpenAI's chunks, all with one id, the
        last with the finish reason and the token counts, then ``[DONE]``; an error after the
        stream began (the status is 200 by then) is an event with OpenAI's error body."""
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(delta: ChoiceDelta, finish: str | None = None, counts: Any = None) -> str:
            choice = ChatCompletionStreamingChoice(index=0, delta=delta, finish_reason=finish)
            chunk = ChatCompletionChunk(
                id=chunk_id, created=created, model=self.model_name, choices=[choice], usage=counts
            )
            return f"data: {chunk.model_dump_json()}\n\n"

        yield event(ChoiceDelta(role="assistant", content=""))
        try:
            async for message in messages:
                if message["content"]:
                    yield event(ChoiceDelta(content=message["content"]))
        except HTTPException as err:
            yield f"data: {json.dumps({'error': err.detail})}\n\n"
            return
        yield event(ChoiceDelta(), message["finish_reason"], usage(job, message))
        yield "data: [DONE]\n\n"


def usage(job: Job, last: dict) -> UsageInfo:
    """The token counts of a request whose worker's last message is ``last``."""
    prompt, completion = len(job.prompt_ids), last["completion_tokens"]
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


class ModelAPI(ls.LitAPI):
    """An inference worker: the server's batching settings, and always its class's batched
    ``LOOP`` (at ``max_batch_size=1`` LitServe would pick a loop handing ``predict`` one request,
    not a list)."""

    LOOP: type[LitLoop]

    def __init__(self, settings: ServeSettings, spec: ChatSpec | None = None) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            spec=spec,
            loop=self.LOOP(),
        )
        self.source, self.target = settings.ckpt_path, settings.device

    def setup(self, device: str) -> None:
        """Load the model on the ``device`` setting (LitServe's ``device`` is always "cpu":
        the server leaves device choice to :func:`load_model`)."""
        self.loaded = load_model(self.source, self.target)


class ChatAPI(ModelAPI):
    """The inference worker of a language model: batches of :class:`Job`, answered step by step."""

    LOOP = BatchedStreamingLoop

    def predict(self, jobs: Sequence[Job]) -> Iterator[list[dict]]:
        """Per decoding step, one message per job: its new text, and at the step its answer
        ends, its ``finish_reason`` and ``completion_tokens``."""
        answers = self.loaded.answers(
            [job.prompt_ids for job in jobs], [job.sampling for job in jobs]
        )
        ended = [False] * len(jobs)
        for pieces in answers:
            messages = []
            for i, (row, piece) in enumerate(zip(answers.rows, pieces, strict=True)):
                message: dict[str, Any] = {"role": "assistant", "content": piece}
                if row.finish_reason is not None and not ended[i]:
                    ended[i] = True
                    message.update(finish_reason=row.finish_reason, completion_tokens=len(row.ids))
                messages.append(message)
            yield messages

    def encode_response(self, steps: Iterator[list[dict]]) -> Iterator[list[dict]]:
        """The messages go out as :meth:`predict` made them."""
        yield from steps


class ClassifyRequest(BaseModel):
    """``POST /predict``'s body: ``texts`` (a list) or one ``text``, none of them blank."""

    texts: list[str] | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "ClassifyRequest":
        if (self.texts is None) == (self.text is None):
            raise ValueError('give "texts": [...] or "text": "..."')
        texts = self.all()
        if not texts:
            raise ValueError("texts is empty: give at least one text to classify")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"texts[{i}] is blank: there is nothing to classify")
        return self

    def all(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]


class ClassifyAPI(ModelAPI):
    """The inference worker of a classifier: the texts of a batch of requests labelled
    together, ``max_batch_size`` texts at a time."""

    LOOP = BatchedLoop

    def decode_request(self, request: ClassifyRequest) -> list[str]:
        return request.all()

    def predict(self, requests: Sequence[list[str]]) -> list[list[Prediction]]:
        texts = [text for request in requests for text in request]
        predictions = iter(self.loaded.classify(texts, batch_size=self.max_batch_size))
        return [[next(predictions) for _ in request] for request in requests]

    def encode_response(self, predictions: list[Prediction]) -> dict:
        return {"predictions": [asdict(prediction) for prediction in predictions]}


def serve(settings: ServeSettings) -> None:
    """The command's work on parsed ``settings``: runs until Ctrl-C."""
    settings.check()
    key = settings.api_key()
    described = load_model(settings.ckpt_path, "cpu")
    name = settings.model_name or settings.ckpt_path
    if described.classifier is not None:
        api: ls.LitAPI = ClassifyAPI(settings)
        endpoints = "POST /predict"
    else:
        described.model.to("meta")  # the HTTP process keeps the config, not the weights
        api = ChatAPI(settings, ChatSpec(described, name, settings.max_tokens))
        endpoints = "POST /v1/chat/completions, GET /v1/models"
    del described  # the inference worker loads its own copy, on its device
    server = ls.LitServer(
        api,
        accelerator="cpu",
        timeout=False,
        healthcheck_path=HEALTH_PATH,
        middlewares=[(BearerKey, {"key": key})] if key else None,
    )
    server.app.add_exception_handler(StarletteHTTPException, http_error)
    server.app.add_exception_handler(RequestValidationError, invalid_request)
    print(
        f"serving {name} at http://{settings.host}:{settings.port}: {endpoints}, GET {HEALTH_PATH}",
        file=sys.stderr,
    )
    server.run(host=settings.host, port=settings.port, generate_client_file=False)


main = command_main(ServeSettings, serve, "python -m llmprep.serve", DESCRIPTION, EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
