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

import torch
from omegaconf import DictConfig

from llmprep.stages.dpo.task import DPOTask
from llmprep.stages.instruct.evaluate import answering_report, restored_run
from llmprep.training.report import eval_trainer

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


def show(rows: list[dict[str, str]], responses_file: Path) -> None:
    """Where the answers went, and the first three of each model."""
    print(f"\n{len(rows)} test records answered by the tuned model and the reference:")
    print(f"  {responses_file}")
    for row in rows[:3]:
        print(f"- {row['instruction']!r}\n  tuned:     {row['model_response']!r}")
        print(f"  reference: {row['reference_response']!r}")


report = answering_report("dpo", "DPO figures", answer, show, RESPONSE_KEYS)
"""The test split's DPO figures, the test answers of the tuned model and of the reference,
and with ``eval.judge`` the judge's scores of both."""


def evaluate(cfg: DictConfig, ckpt_path: Path) -> dict[str, Any]:
    """:func:`report` on the checkpoint's run data (same source, split and truncation, see
    ``restored_run``) in the model's prompt style; generation follows this command's
    ``stage.generation`` settings."""
    task, datamodule = restored_run("dpo", cfg, ckpt_path)
    return report(eval_trainer(cfg), task, datamodule, ckpt_path, cfg, load=False)
