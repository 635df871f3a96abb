"""Evaluation of a DPO checkpoint: test loss, rewards, margin and accuracy, and the test answers
of the tuned model beside those of its reference.

As in the instruct stage, everything is written next to the checkpoint in the order it becomes
known: ``<name>.eval.json`` with the figures first, then ``<name>.test_responses.json`` (one row
per test record: ``instruction``, ``input``, ``output``, ``chosen``, ``rejected``,
``model_response``, ``reference_response``), then, with ``eval.judge=true``, the judge's scores of
both answers added to ``<name>.eval.json``. The rows are what the instruct stage's judge reads
(``Judge.evaluate(rows, response_key)``), so it can score either answer against ``output``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from llmprep.files import write_json_atomically
from llmprep.stages.dpo.data import PreferenceDataModule
from llmprep.stages.dpo.task import DPOTask
from llmprep.stages.instruct.evaluate import (
    build_judge,
    generation_settings,
    print_judgement,
    restored_run,
    test_figures,
)
from llmprep.stages.instruct.judge import JudgeError
from llmprep.training.report import eval_trainer, results_path

RESPONSE_KEYS = {"model": "model_response", "reference": "reference_response"}
"""The answers in a test-response row, by who wrote them."""


def answer(
    task: DPOTask, records: list[dict[str, str]], generation: dict[str, Any], seed: int
) -> list[dict[str, str]]:
    """Each record with the tuned model's and the reference's answers, each generated from a
    generator seeded with ``seed`` (so sampling settings draw alike for both)."""

    def generator() -> torch.Generator:
        return torch.Generator(device=task.device).manual_seed(seed)

    tuned = task.respond(records, **generation, generator=generator())
    reference = task.reference_respond(records, **generation, generator=generator())
    return [
        {
            "instruction": row["instruction"],
            "input": row["input"],
            "output": row["output"],
            "chosen": record["chosen"],
            "rejected": record["rejected"],
            "model_response": row["model_response"],
            "reference_response": ref["model_response"],
        }
        for row, ref, record in zip(tuned, reference, records, strict=True)
    ]


def report(
    trainer: L.Trainer,
    task: DPOTask,
    datamodule: PreferenceDataModule,
    ckpt_path: Path | None,
    cfg: DictConfig,
    load: bool = True,
) -> dict[str, Any]:
    """The test split's DPO figures (``score``), the test answers of the tuned model and of the
    reference, and with ``eval.judge`` the judge's scores of both; rank 0 prints them and saves
    them in the order they become known (see the module docstring).

    After fitting (``load``) the answers go to ``<run>/test_responses.json``, otherwise beside
    the checkpoint; generation follows ``stage.generation``. The judge is built first, so a bad
    judge setting fails before any work. Under FSDP the shards are gone after testing, so the
    answers are left to ``evaluate.py``.
    """
    judge = build_judge(cfg)
    generation, limit = generation_settings(cfg, task, trainer)
    results, eval_file = test_figures(
        trainer, task, datamodule, ckpt_path, load, "dpo", "DPO figures"
    )
    if eval_file is None:
        return results
    rows = answer(task, datamodule.records["test"][:limit], generation, cfg.seed)
    responses_file = results_path(None if load else ckpt_path, trainer, "test_responses")
    write_json_atomically(responses_file, rows)
    results["responses"] = {"file": str(responses_file), "count": len(rows)}
    write_json_atomically(eval_file, results)
    print(f"\n{len(rows)} test records answered by the tuned model and the reference:")
    print(f"  {responses_file}")
    for row in rows[:3]:
        print(f"- {row['instruction']!r}\n  tuned:     {row['model_response']!r}")
        print(f"  reference: {row['reference_response']!r}")

    if judge is not None:
        results["judge"] = {}
        for who, key in RESPONSE_KEYS.items():
            try:
                results["judge"][who] = judge.evaluate(rows, key)
            except JudgeError as err:
                saved = f"(the figures and the answers are saved: {eval_file}, {responses_file})"
                raise JudgeError(f"{err}\n{saved}") from err
            write_json_atomically(eval_file, results)
            print(f"\n{who} answers:")
            print_judgement(results["judge"][who])
        print(f"judge scores written to {eval_file}")
    return results


def evaluate(cfg: DictConfig, ckpt_path: Path) -> dict[str, Any]:
    """:func:`report` on the checkpoint's run data (same source, split and truncation, see
    ``restored_run``) in the model's prompt style; generation follows this command's
    ``stage.generation`` settings."""
    task, datamodule = restored_run("dpo", cfg, ckpt_path)
    return report(eval_trainer(cfg), task, datamodule, ckpt_path, cfg, load=False)
