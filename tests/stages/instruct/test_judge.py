"""The LLM judge client against a local fake server speaking the Ollama and OpenAI formats."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import ROOT, FakeJudge
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from llmprep.stages.instruct.judge import Judge, JudgeError, histogram, judge_prompt, parse_score

CONF = ROOT / "conf"
RECORD = {"instruction": "Name a primary colour.", "input": "", "output": "Red."}


def responses(*texts: str) -> list[dict[str, str]]:
    return [{**RECORD, "model_response": text} for text in texts]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_scores_average_and_histogram_in_both_wire_formats(
    judge_server: FakeJudge, path: str
) -> None:
    judge_server.replies = ["85", "Score: 100", "I cannot judge this.", "120", "7.5"]
    judge = Judge(url=judge_server.url(path), model="judge-model", retries=0)
    result = judge.evaluate(responses("Red.", "Red!", "Blue?", "Crimson.", "Scarlet.", "  "))
    assert result["scores"] == [85, 100, None, None, None, 0]
    assert (result["count"], result["scored"], result["empty_responses"]) == (6, 3, 1)
    assert result["average_score"] == pytest.approx((85 + 100 + 0) / 3)
    assert (result["unparsable"], result["out_of_range"]) == (2, 1)
    assert [(r["index"], r["reason"]) for r in result["rejected"]] == [
        (2, "unparsable"),
        (3, "out_of_range"),
        (4, "unparsable"),
    ]
    assert result["rejected"][0]["reply"] == "I cannot judge this."
    assert result["histogram"]["80-89"] == result["histogram"]["90-100"] == 1
    assert result["histogram"]["0-9"] == 1 and sum(result["histogram"].values()) == 3
    assert len(judge_server.requests) == 5  # the empty response was never sent
    json.dumps(result)


def test_requests_carry_model_pinned_sampling_and_the_record(judge_server: FakeJudge) -> None:
    judge_server.replies = ["50", "50"]
    Judge(url=judge_server.url("/api/chat"), model="llama3").evaluate(responses("Red."))
    Judge(url=judge_server.url("/v1/chat/completions"), model="gpt-x", seed=5).evaluate(
        responses("R")
    )
    (_, ollama, _), (_, openai, _) = judge_server.requests
    assert (ollama["model"], ollama["stream"], ollama["options"]) == (
        "llama3",
        False,
        {"temperature": 0.0, "seed": 123},
    )
    assert (openai["model"], openai["temperature"], openai["seed"]) == ("gpt-x", 0.0, 5)
    prompt = ollama["messages"][0]["content"]
    assert ollama["messages"][0]["role"] == "user"
    assert prompt == judge_prompt(responses("Red.")[0])
    assert "Name a primary colour." in prompt and "Red." in prompt and "0 to 100" in prompt


def test_bearer_key_comes_from_the_named_environment_variable(
    judge_server: FakeJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test")
    judge_server.replies = ["1"]
    Judge(url=judge_server.url("/v1/chat/completions"), api_key_env="JUDGE_TEST_KEY").chat("hi")
    assert judge_server.requests[0][2]["Authorization"] == "Bearer sk-test"
    monkeypatch.delenv("JUDGE_TEST_KEY")
    with pytest.raises(JudgeError, match="JUDGE_TEST_KEY, which is not set"):
        Judge(url=judge_server.url("/v1/chat/completions"), api_key_env="JUDGE_TEST_KEY")


def test_timeout_is_retried_then_fails_naming_the_url(judge_server: FakeJudge) -> None:
    url = judge_server.url("/slow/api/chat")
    judge = Judge(url=url, timeout=0.1, retries=1, backoff=0.0)
    with pytest.raises(JudgeError, match=f"judge at {url} gave no answer after 2 attempts"):
        judge.evaluate(responses("Red."))
    assert len(judge_server.requests) == 2


def test_unreachable_judge_fails_naming_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/chat"
    with pytest.raises(JudgeError, match=f"judge at {url} gave no answer after 2 attempts"):
        Judge(url=url, retries=1, backoff=0.0).chat("hi")


def test_client_errors_are_not_retried(judge_server: FakeJudge) -> None:
    url = judge_server.url("/missing/api/chat")
    with pytest.raises(JudgeError, match=r"refused the request: HTTP 404.*not found"):
        Judge(url=url, retries=3, backoff=0.0).chat("hi")
    assert len(judge_server.requests) == 1


def test_api_is_read_off_the_url_or_must_be_named() -> None:
    assert Judge(url="http://h:11434/api/chat").api == "ollama"
    assert Judge(url="https://h/v1/chat/completions").api == "openai"
    assert Judge(url="http://h/score", api="openai").api == "openai"
    with pytest.raises(ValueError, match=r"set judge\.api"):
        Judge(url="http://h/score")


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("85", 85),
        (" 72.\n", 72),
        (" 90.", 90),
        ("**85**", 85),
        ("Score: 100", 100),
        ("**Score:** 85", 85),
        ("Score: 42/100", 42),
        ("score = 64 out of 100.", 64),
        ("-3", -3),
        ("120", 120),
        ("On a scale of 0 to 100, I would score this 85.", None),
        ("Score (0-100): 72", None),
        ("4 out of 5", None),
        ("85\nThe response names the right colour.", None),
        ("8 5", None),
        ("7.5", None),
        ("none", None),
        ("", None),
    ],
)
def test_parse_score_accepts_only_an_unambiguous_integer(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


def test_histogram_bins_of_ten_with_100_in_the_top_bin() -> None:
    bins = histogram([0, 9, 10, 55, 99, 100])
    assert list(bins) == [f"{b}-{b + 9}" for b in range(0, 90, 10)] + ["90-100"]
    assert (bins["0-9"], bins["10-19"], bins["50-59"], bins["90-100"]) == (2, 1, 1, 2)


def test_default_config_builds_the_books_ollama_judge() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=["+judge=default"]).judge
    judge = instantiate(cfg)
    assert judge.url == "http://localhost:11434/api/chat"
    assert (judge.api, judge.model) == ("ollama", "llama3")
    assert (judge.temperature, judge.seed, "Authorization" in judge.headers) == (0.0, 123, False)
