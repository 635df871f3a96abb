"""Evaluation of an instruction-tuned checkpoint: test loss, test answers, an LLM judge's score.

Everything is written next to the checkpoint, in the order it becomes known, so a later failure
loses nothing already computed: ``<name>.eval.json`` with the loss first, then
``<name>.test_responses.json``, then the judge's figures added to ``<name>.eval.json``. A judge
that cannot be reached therefore fails the command with its URL named, after the loss and the
answers are saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from llmprep.files import write_json_atomically
from llmprep.stages import load_task, stored_datamodule
from llmprep.stages.instruct.data import InstructDataModule
from llmprep.stages.instruct.judge import Judge, JudgeError
from llmprep.stages.instruct.task import InstructTask
from llmprep.training.report import (
    eval_device,
    loss_report,
    print_table,
    results_path,
)


@torch.no_grad()
def masked_loss(task: InstructTask, loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """Mean cross-entropy over every target token of ``loader`` (``-100`` skipped), with its
    perplexity: the training loss, measured over the whole split at once."""
    return loss_report(
        task.loss_and_tokens({k: v.to(device) for k, v in batch.items()}) for batch in loader
    )


def print_judgement(judged: Mapping[str, Any]) -> None:
    """The judge's summary and its score histogram as two tables."""
    average = judged["average_score"]
    summary = {
        "judge model": judged["judge"]["model"],
        "judge url": judged["judge"]["url"],
        "responses": judged["count"],
        "scored": judged["scored"],
        "average score": "-" if average is None else f"{average:.2f}",
        "empty responses (score 0)": judged["empty_responses"],
        "unparsable replies": judged["unparsable"],
        "out-of-range replies": judged["out_of_range"],
    }
    print_table("LLM judge", [{"figure": k, "value": v} for k, v in summary.items()])
    print_table(
        "score histogram", [{"scores": k, "count": v} for k, v in judged["histogram"].items()]
    )


def instruct_datamodule(task: InstructTask, batch_size: int) -> InstructDataModule:
    """The checkpoint's run data (same source, split and masking) in the model's prompt style."""
    datamodule = stored_datamodule(
        "instruct",
        task.config["data"],
        context_length=task.hparams.model_config["context_length"],
        prompt_style=task.style.name,
        batch_size=batch_size,
    )
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


def evaluate(cfg: DictConfig, ckpt_path: Path) -> dict[str, Any]:
    """Loss and perplexity on the test split, the test answers, and with ``eval.judge`` the
    judge's scores; printed and saved next to the checkpoint (see the module docstring).

    The data is the checkpoint's run data; generation follows this command's ``generation``
    settings (``generation.limit`` answers only the first records); the judge comes from the
    ``judge`` group and is built first, so a bad judge setting fails before any work.
    """
    judge: Judge | None = instantiate(cfg.judge) if cfg.eval.judge else None
    device = eval_device(cfg)
    task = load_task(ckpt_path, "instruct", device)
    datamodule = instruct_datamodule(task, cfg.eval.batch_size)
    test = {"records": len(datamodule.test_records)}
    test |= masked_loss(task, datamodule.test_dataloader(), device)
    results: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "prompt_style": task.style.name,
        "test": test,
    }
    print_table(ckpt_path.name, [{"split": "test", **test}])
    eval_file = write_json_atomically(results_path(ckpt_path), results)
    print(f"loss written to {eval_file}")

    generation = OmegaConf.to_container(cfg.generation, resolve=True)
    answered = task.answer_test_split(datamodule.test_records, generation, cfg.seed)
    responses_file = results_path(ckpt_path, "test_responses")
    write_json_atomically(responses_file, answered)
    results["responses"] = {"file": str(responses_file), "count": len(answered)}
    write_json_atomically(eval_file, results)
    print(f"{len(answered)} test responses written to {responses_file}")

    if judge is not None:
        try:
            results["judge"] = judge.evaluate(answered)
        except JudgeError as err:
            raise JudgeError(
                f"{err}\n(the loss and the test responses are saved: {eval_file}, {responses_file})"
            ) from err
        write_json_atomically(eval_file, results)
        print_judgement(results["judge"])
        print(f"judge scores written to {eval_file}")
    return results
