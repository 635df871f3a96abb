"""`evaluate.py stage=instruct`: test loss, test answers and an LLM judge, on a real checkpoint."""

from __future__ import annotations

import csv
import json
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_INSTRUCT, FakeJudge, run_cli

from llmprep.stages.instruct.evaluate import evaluate
from llmprep.stages.instruct.judge import JudgeError
from llmprep.stages.instruct.prompts import get_style
from llmprep.stages.instruct.task import InstructTask
from llmprep.tokenizer import get_tokenizer

GENERATION = ("stage.generation.limit=3", "stage.generation.max_new_tokens=5")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fine-tuning run on 40 records (4 test records), phi3 prompts, prompt masked."""
    folder = tmp_path_factory.mktemp("instruct-eval")
    records = [
        {
            "instruction": f"Add one to {i}.",
            "input": "" if i % 3 else "Be brief.",
            "output": str(i + 1),
        }
        for i in range(40)
    ]
    data = folder / "records.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    out = folder / "run"
    result = run_cli(
        "train.py",
        *TINY_INSTRUCT,
        f"data.path={data}",
        "trainer.limit_val_batches=1",
        *GENERATION,
        "logger=csv",
        f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def reference_loss(ckpt: Path, records: list[dict[str, str]]) -> float:
    """The masked loss computed one unpadded record at a time: response tokens + end token."""
    task = InstructTask.load_from_checkpoint(ckpt, weights_only=True).eval()
    style, tok = get_style("phi3"), get_tokenizer()
    total, count = 0.0, 0
    for record in records:
        prompt, response = style.format_example(record)
        prompt_ids = tok.encode(prompt)
        ids = torch.tensor([[*prompt_ids, *tok.encode(response), tok.eot_id]])
        with torch.no_grad():
            logits = task.model(ids[:, :-1])[0, len(prompt_ids) - 1 :]
        total += F.cross_entropy(logits, ids[0, len(prompt_ids) :], reduction="sum").item()
        count += ids.shape[1] - len(prompt_ids)
    return total / count


def test_evaluate_cli_reports_loss_answers_and_judge_scores(
    run: Path, judge_server: FakeJudge
) -> None:
    judge_server.replies = ["80", "Score: 60", "no idea"]
    ckpt = run / "checkpoints" / "best.ckpt"
    result = run_cli(
        "evaluate.py",
        "stage=instruct",
        f"ckpt_path={ckpt}",
        *GENERATION,
        "eval.judge=true",
        f"judge.url={judge_server.url('/v1/chat/completions')}",
        "judge.model=grader",
        f"hydra.run.dir={run / 'evaluate'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "checkpoints" / "best.eval.json").read_text())
    test_split = json.loads((run / "test.json").read_text())

    assert results["prompt_style"] == "phi3"
    assert results["test"]["records"] == 4
    assert results["test"]["loss"] == pytest.approx(reference_loss(ckpt, test_split), rel=1e-4)
    assert results["test"]["perplexity"] == pytest.approx(math.exp(results["test"]["loss"]))
    metrics = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    fit_test_loss = next(float(r["test/loss"]) for r in metrics if r.get("test/loss"))
    assert results["test"]["loss"] == pytest.approx(fit_test_loss, rel=1e-5)

    answered = json.loads((run / "checkpoints" / "best.test_responses.json").read_text())
    assert answered == json.loads((run / "test_responses.json").read_text())  # same as after fit
    assert [r["instruction"] for r in answered] == [r["instruction"] for r in test_split[:3]]

    judged = results["judge"]
    empty = judged["empty_responses"]
    assert len(judge_server.requests) == 3 - empty
    assert judged["judge"]["model"] == "grader"
    assert (judged["count"], judged["unparsable"]) == (3, 1 if empty == 0 else 0)
    assert sum(judged["histogram"].values()) == judged["scored"]
    if empty == 0:
        assert judged["average_score"] == pytest.approx(70)
        assert judged["histogram"]["80-89"] == judged["histogram"]["60-69"] == 1
    assert "LLM judge" in result.stdout and "score histogram" in result.stdout


def test_unreachable_judge_fails_naming_the_url_after_saving_the_loss(
    compose_run, run: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/chat"
    ckpt = run / "checkpoints" / "last.ckpt"
    cfg = compose_run(
        "stage=instruct",
        f"ckpt_path={ckpt}",
        "stage.generation.limit=1",
        "stage.generation.max_new_tokens=2",
        "eval.judge=true",
        f"judge.url={url}",
        "judge.retries=0",
        config_name="evaluate",
    )
    with pytest.raises(JudgeError, match=f"judge at {url} gave no answer"):
        evaluate(cfg, ckpt)
    results = json.loads((run / "checkpoints" / "last.eval.json").read_text())
    assert results["test"]["loss"] > 0 and "judge" not in results
    assert len(json.loads((run / "checkpoints" / "last.test_responses.json").read_text())) == 1


def test_a_checkpoint_of_another_stage_is_refused(compose_run, run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["config"]["stage"]["name"] = "pretrain"
    other = tmp_path / "pretrain.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match="trained by stage 'pretrain'"):
        evaluate(compose_run("stage=instruct", f"ckpt_path={other}", config_name="evaluate"), other)


def test_an_unknown_generation_key_is_named(compose_run, run: Path) -> None:
    ckpt = run / "checkpoints" / "last.ckpt"
    cfg = compose_run(
        "stage=instruct", f"ckpt_path={ckpt}", "+stage.generation.beams=4", config_name="evaluate"
    )
    with pytest.raises(ValueError, match=r"stage.generation: unknown key\(s\) beams"):
        evaluate(cfg, ckpt)
