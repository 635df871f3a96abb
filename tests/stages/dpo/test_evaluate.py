"""`evaluate.py stage=dpo`: the test figures, and the tuned model's answers beside the
reference's, scored by the instruct stage's judge."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import FakeJudge

from llmprep.errors import ConfigError
from llmprep.stages import load_task
from llmprep.stages.dpo.evaluate import evaluate
from llmprep.stages.instruct.task import InstructTask

GENERATION = ("stage.generation.limit=2", "stage.generation.max_new_tokens=4")


def test_evaluate_reports_figures_and_both_answers_for_the_judge(
    cli, chain, judge_server: FakeJudge
) -> None:
    judge_server.replies = ["90", "80", "20", "10"]
    ckpt = chain.dpo / "checkpoints" / "best.ckpt"
    result = cli(
        "evaluate.py",
        "stage=dpo",
        f"ckpt_path={ckpt}",
        *GENERATION,
        "eval.judge=true",
        f"judge.url={judge_server.url('/v1/chat/completions')}",
        f"hydra.run.dir={chain.dpo / 'evaluate'}",
    )
    assert result.code == 0, result.err[-3000:]
    results = json.loads((chain.dpo / "checkpoints" / "best.eval.json").read_text())
    test = results["test"]
    assert (results["prompt_style"], test["records"], test["pairs"]) == ("phi3", 3, 3)
    assert test["margin"] == pytest.approx(
        test["chosen_reward"] - test["rejected_reward"], abs=1e-6
    )
    fitted = next(
        r for r in csv.DictReader((chain.dpo / "csv" / "metrics.csv").open()) if r.get("test/loss")
    )
    for name in ("loss", "margin", "accuracy", "chosen_reward"):
        assert test[name] == pytest.approx(float(fitted[f"test/{name}"]), rel=1e-5, abs=1e-7)

    rows = json.loads((chain.dpo / "checkpoints" / "best.test_responses.json").read_text())
    split = json.loads((chain.dpo / "test.json").read_text())
    assert [list(r) for r in rows] == [
        [
            "instruction",
            "input",
            "output",
            "chosen",
            "rejected",
            "model_response",
            "reference_response",
        ]
    ] * 2
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        (s["chosen"], s["rejected"]) for s in split[:2]
    ]
    # The reference answers as the instruct checkpoint the run started from.
    start = InstructTask.load_from_checkpoint(chain.start, weights_only=True).eval()
    assert [r["reference_response"] for r in rows] == [
        r["model_response"] for r in start.respond(split[:2], max_new_tokens=4)
    ]
    tuned = load_task(ckpt, "dpo")
    assert [r["model_response"] for r in rows] == [
        r["model_response"] for r in tuned.respond(split[:2], max_new_tokens=4)
    ]
    judged = results["judge"]
    assert (
        len(judge_server.requests)
        == 4 - judged["model"]["empty_responses"] - judged["reference"]["empty_responses"]
    )
    assert set(judged) == {"model", "reference"}
    assert "reference answers" in result.out


def test_an_unknown_generation_key_is_named(compose_run, chain) -> None:
    ckpt = chain.dpo / "checkpoints" / "last.ckpt"
    cfg = compose_run(
        "stage=dpo", f"ckpt_path={ckpt}", "+stage.generation.beams=4", config_name="evaluate"
    )
    with pytest.raises(ConfigError, match=r"stage\.generation: .*'beams'"):
        evaluate(cfg, ckpt)
