"""`python -m llmprep.serve`: a real server on a free local port, talked to with the official
``openai`` client (and plain HTTP where a client would not send what is tested)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from conftest import ROOT, TINY_CLASSIFIER, tiny_instruct_checkpoint
from litserve.loops.simple_loops import BatchedLoop
from litserve.loops.streaming_loops import BatchedStreamingLoop

from llmprep.generate import main as generate
from llmprep.inference import LoadedModel, Sampling, load_model
from llmprep.serve import ChatAPI, ChatSpec, ClassifyAPI, Job, ServeSettings, api_error
from llmprep.serve import main as serve

CONTEXT = 128
KEY_ENV, KEY = "LLMPREP_TEST_SERVE_KEY", "sk-test-key"
NAME = "tiny-assistant"
PROMPTS = ["Name a colour.", "Add one to 41.", "Hi", "Say something about the sea.", "Why?"]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def ready(self) -> Server:
        """The server, once ``/health`` says it is ready; its log when it never does."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"the server did not become ready:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; whatever is left of its process group is then killed."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(folder: Path, *settings: str, env: dict[str, str] | None = None) -> Server:
    """Start ``python -m llmprep.serve <settings>`` on a free port (see :meth:`Server.ready`)."""
    port = free_port()
    log = folder / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "llmprep.serve", f"port={port}", "device=cpu", *settings],
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(process, f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    return tiny_instruct_checkpoint(folder / "instruct.ckpt", context_length=CONTEXT)


@pytest.fixture(scope="module")
def loaded(ckpt: Path) -> LoadedModel:
    return load_model(str(ckpt), "cpu")


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained one step by ``train.py`` (run in this process) on 20 messages."""
    folder = tmp_path_factory.mktemp("serve-classify")
    data = folder / "messages.jsonl"
    texts = [("hello there friend {}", "ham"), ("WIN a cash prize {} now", "spam")]
    lines = [
        json.dumps({"text": t.format(i), "label": label}) for i in range(10) for t, label in texts
    ]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["train.py", *TINY_CLASSIFIER, f"data.path={data}", "data.batch_size=4"]
    argv += [
        "trainer.max_steps=1",
        "test_after_fit=false",
        "logger=csv",
        f"hydra.run.dir={folder / 'run'}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    return folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def servers(ckpt: Path, classifier_ckpt: Path) -> Iterator[tuple[Server, Server]]:
    """A chat server (its API key required) and a classify server, started together."""
    chat = launch(
        ckpt.parent,
        f"ckpt_path={ckpt}",
        f"model_name={NAME}",
        f"api_key_env={KEY_ENV}",
        "batch_timeout=0.1",
        env={KEY_ENV: KEY},
    )
    classify = launch(classifier_ckpt.parent, f"ckpt_path={classifier_ckpt}", "max_batch_size=4")
    try:
        yield chat.ready(), classify.ready()
    finally:
        chat.stop()
        classify.stop()


@pytest.fixture(scope="module")
def chat_server(servers: tuple[Server, Server]) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def classify_server(servers: tuple[Server, Server]) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def client(chat_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=KEY, max_retries=0)


def ask(client: openai.OpenAI, prompt: str, **options: object) -> openai.types.chat.ChatCompletion:
    messages = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(model=NAME, messages=messages, **options)


def ask_streamed(client: openai.OpenAI, prompt: str, **options: object) -> tuple[str, list]:
    """The streamed answer's text and its chunks."""
    chunks = list(ask(client, prompt, stream=True, **options))
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks


def alone(loaded: LoadedModel, prompt: str, sampling: Sampling) -> str:
    return loaded.answers([loaded.prompt_ids(prompt)], [sampling]).completions()[0].text


def test_whole_and_streamed_greedy_answers_are_generates_text_with_their_counts(
    client: openai.OpenAI, ckpt: Path, loaded: LoadedModel, capfd: pytest.CaptureFixture
) -> None:
    capfd.readouterr()
    assert (
        generate([f"ckpt_path={ckpt}", f"prompt={PROMPTS[0]}", "max_new_tokens=12", "device=cpu"])
        == 0
    )
    expected = capfd.readouterr().out.removesuffix("\n")
    prompt_tokens = len(loaded.prompt_ids(PROMPTS[0]))

    whole = ask(client, PROMPTS[0], max_tokens=12, temperature=0)
    assert whole.model == NAME
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "length"  # an untrained model never ends
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (prompt_tokens, 12)
    assert whole.usage.total_tokens == prompt_tokens + 12

    text, chunks = ask_streamed(client, PROMPTS[0], max_completion_tokens=12, temperature=0)
    assert text == expected
    assert len({chunk.id for chunk in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks[-2:]] == [None, "length"]
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_without_max_tokens_an_answer_fills_the_rest_of_the_context(
    client: openai.OpenAI, loaded: LoadedModel
) -> None:
    """The server's default (256 tokens) is cut to the room the prompt leaves."""
    answer = ask(client, PROMPTS[2], temperature=0)
    room = CONTEXT - len(loaded.prompt_ids(PROMPTS[2]))
    assert answer.usage.completion_tokens == room
    assert answer.choices[0].message.content == alone(loaded, PROMPTS[2], Sampling(room))


def test_an_answer_ends_before_a_stop_string_streamed_or_not(
    client: openai.OpenAI, loaded: LoadedModel
) -> None:
    greedy = alone(loaded, PROMPTS[1], Sampling(20))
    stop = greedy[10:13]
    expected = greedy[: greedy.index(stop)]
    whole = ask(client, PROMPTS[1], max_tokens=20, temperature=0, stop=[stop, "never seen"])
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "stop"
    streamed, chunks = ask_streamed(client, PROMPTS[1], max_tokens=20, temperature=0, stop=stop)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_settings_are_honoured(client: openai.OpenAI, loaded: LoadedModel) -> None:
    sampled = {"max_tokens": 10, "temperature": 1.0, "top_p": 0.9}
    first = ask(client, PROMPTS[3], seed=7, **sampled).choices[0].message.content
    assert first == alone(loaded, PROMPTS[3], Sampling(10, 1.0, None, 0.9, 7))
    assert ask(client, PROMPTS[3], seed=8, **sampled).choices[0].message.content != first
    top_1 = ask(client, PROMPTS[3], max_tokens=10, temperature=1.0, extra_body={"top_k": 1})
    assert top_1.choices[0].message.content == alone(loaded, PROMPTS[3], Sampling(10))


def test_concurrent_requests_each_get_what_they_get_alone(
    client: openai.OpenAI, loaded: LoadedModel
) -> None:
    """Eight clients at once, batched by the server: greedy and seeded ones, streamed and not,
    of different lengths (the short ones end first)."""
    requests = [
        (PROMPTS[i % len(PROMPTS)], Sampling(4 + i, 1.0 if i % 3 == 0 else 0.0, seed=i))
        for i in range(8)
    ]

    def send(i: int) -> str:
        prompt, sampling = requests[i]
        options = {"max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature}
        if i % 2:
            return ask_streamed(client, prompt, seed=sampling.seed, **options)[0]
        return ask(client, prompt, seed=sampling.seed, **options).choices[0].message.content

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, range(len(requests))))
    assert answers == [alone(loaded, prompt, sampling) for prompt, sampling in requests]


BAD_REQUESTS = [
    ({"model": "gpt-4o"}, 404, "'gpt-4o' does not exist"),
    ({"messages": []}, 400, "messages is empty"),
    ({"max_tokens": 200}, 400, f"maximum context length is {CONTEXT} tokens"),
    ({"max_tokens": 200, "stream": True}, 400, "200 in the completion)"),
    ({"temperature": 3}, 400, "temperature: Input should be less than or equal to 2"),
    ({"top_p": 0}, 400, "top_p: Input should be greater than 0"),
    ({"n": 2}, 400, "n=2: this server writes one choice per request"),
    ({"stop": [""]}, 400, "expected a list of non-empty strings"),
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        400,
        "the last message must be the user's",
    ),
    ('{"model": "tiny-assistant", "messages": [', 400, "the body is not valid JSON"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS)
def test_a_bad_request_gets_its_4xx_and_the_server_keeps_serving(
    chat_server: Server, client: openai.OpenAI, body: dict | str, status: int, message: str
) -> None:
    if isinstance(body, dict):
        body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "Hi"}], **body})
    response = httpx.post(
        f"{chat_server.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert message in response.json()["error"]["message"]
    assert ask(client, PROMPTS[2], max_tokens=1).usage.completion_tokens == 1


def test_the_openai_client_raises_the_errors_it_knows(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        ask(client, PROMPTS[0], max_tokens=CONTEXT, stream=True)


def test_requests_without_the_api_key_get_401_but_the_health_check(chat_server: Server) -> None:
    for key in ("wrong-key", KEY[:-1]):
        stranger = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="API key"):
            ask(stranger, "Hi", max_tokens=1)
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
    assert httpx.get(f"{chat_server.url}/v1/models").status_code == 401
    assert httpx.get(f"{chat_server.url}/health").text == "ok"


def test_the_models_endpoint_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [NAME]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ([], "ckpt_path='missing.ckpt': no such file"),
        (["host=localhost"], "host='localhost': expected one of 127.0.0.1, 0.0.0.0, ::"),
        (["port=80"], "port=80: expected 1024 to 65535"),
        (["max_batch_size=0"], "max_batch_size=0: expected an integer >= 1"),
        (["batch_timeout=0"], "batch_timeout=0.0: expected seconds > 0"),
        ([f"api_key_env={KEY_ENV}_UNSET"], f"${KEY_ENV}_UNSET is not set"),
    ],
)
def test_bad_settings_are_refused_before_the_model_loads(
    settings: list[str], message: str, capfd: pytest.CaptureFixture
) -> None:
    capfd.readouterr()
    assert serve(["ckpt_path=missing.ckpt", *settings]) == 1
    assert message in capfd.readouterr().err


def predict(server: Server, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=body)


def test_a_classifier_labels_texts_as_it_does_in_process(
    classify_server: Server, classifier_ckpt: Path
) -> None:
    texts = ["hello there friend 99", "WIN a cash prize today", "what?", "ok", "FREE entry"]
    expected = load_model(str(classifier_ckpt), "cpu").classify(texts)
    response = predict(classify_server, {"texts": texts})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["text"] for p in predictions] == texts
    for got, want in zip(predictions, expected, strict=True):
        assert got["label"] == want.label in ("ham", "spam")
        assert sum(got["probabilities"].values()) == pytest.approx(1.0)
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
    one = predict(classify_server, {"text": texts[1]}).json()["predictions"]
    assert one[0]["probabilities"] == pytest.approx(expected[1].probabilities, abs=1e-5)

    with ThreadPoolExecutor(4) as pool:
        batched = list(pool.map(lambda t: predict(classify_server, {"text": t}), texts))
    assert [r.json()["predictions"][0]["label"] for r in batched] == [p.label for p in expected]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, 'give "texts": [...] or "text": "..."'),
        ({"texts": []}, "texts is empty"),
        ({"texts": ["fine", " "]}, "texts[1] is blank"),
        ({"texts": "not a list"}, "texts: Input should be a valid list"),
    ],
)
def test_bad_classify_input_gets_400_and_the_server_keeps_serving(
    classify_server: Server, body: dict, message: str
) -> None:
    response = predict(classify_server, body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert predict(classify_server, {"text": "hello"}).status_code == 200


def test_the_workers_take_lists_of_requests_even_one_at_a_time() -> None:
    """At ``max_batch_size=1`` LitServe's own loop would hand ``predict`` one request."""
    settings = ServeSettings(ckpt_path="unused", max_batch_size=1)
    assert isinstance(ClassifyAPI(settings).loop, BatchedLoop)
    chat = ChatAPI(settings, ChatSpec(None, NAME, settings.max_tokens))
    assert isinstance(chat.loop, BatchedStreamingLoop)


def test_a_model_failure_after_a_stream_began_is_a_server_error_event() -> None:
    async def failing() -> AsyncIterator[dict]:
        raise api_error(500, "The model failed on this request; see the server log.")
        yield {}

    async def events() -> list[str]:
        spec = SimpleNamespace(model_name="m")
        job = Job([1, 2], Sampling(max_new_tokens=1))
        return [event async for event in ChatSpec.chunks(spec, job, failing())]

    first, error = asyncio.run(events())
    assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
    body = json.loads(error.removeprefix("data: "))
    assert body["error"]["type"] == "server_error"
    assert body["error"]["message"].startswith("The model failed")
