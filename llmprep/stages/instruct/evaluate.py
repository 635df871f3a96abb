"""Evaluation of an instruction-tuned checkpoint: test loss, test answers, an LLM judge's score.

Everything is written next to the checkpoint, in the order it becomes known, so a later failure
loses nothing already computed: ``<name>.eval.json`` with the loss first, then
``<name>.test_responses.json``, then the judge's figures added to ``<name>.eval.json``. A judge
that cannot be reached therefore fails the command with its URL named, after the loss and the
answers are saved.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from llmprep.errors import ConfigError
from llmprep.files import write_json_atomically
from llmprep.stages import load_task, stored_datamodule
from llmprep.stages.instruct.judge import Judge, JudgeError
from llmprep.stages.instruct.task import InstructTask
from llmprep.training.report import eval_trainer, print_table, results_path, score
from llmprep.training.task import is_sharded


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


def answer(
    task: InstructTask, records: list[dict[str, str]], generation: dict[str, Any], seed: int
) -> list[dict[str, str]]:
    """Each record with the model's answer (``model_response``), sampled from a generator
    seeded with ``seed``."""
    generator = torch.Generator(device=task.device).manual_seed(seed)
    return task.respond(
        records, **generation, generator=generator, description="answering the test split"
    )


def show(rows: list[dict[str, str]], responses_file: Path) -> None:
    """Where the answers went, and the first three."""
    print(f"\n{len(rows)} test responses written to {responses_file}")
    for row in rows[:3]:
        print(f"- {row['instruction']!r}\n  -> {row['model_response']!r}")


Answer = Callable[[Any, list[dict[str, str]], dict[str, Any], int], list[dict[str, str]]]
"""``answer(task, records, generation, seed)``: the rows of answers to ``records``."""


def answering_report(
    stage: str,
    what: str,
    answer: Answer,
    show: Callable[[list[dict[str, str]], Path], None],
    judged: Mapping[str, str] | None = None,
) -> Callable[..., dict[str, Any]]:
    """The ``report`` of a stage that answers its test records (``instruct`` and ``dpo``).

    ``report(trainer, task, datamodule, ckpt_path, cfg, load=True)`` builds the judge first, so
    a bad judge setting fails before any work. Then come the test figures
    (:func:`test_figures`, ``what`` they are); the rows ``answer`` gives for the first
    ``limit`` test records (``stage.generation``; a ``fast_dev_run`` answers as many as it runs
    batches), saved to ``test_responses.json`` and shown by ``show``; and with ``eval.judge``
    the ``judge`` group's scores: of ``model_response`` as ``judge``, or of each answer key of
    ``judged`` as ``judge.<who>``. Rank 0 prints and saves each in the order it becomes known
    (see the module docstring): after fitting (``load``) the answers go to
    ``<run>/test_responses.json``, otherwise beside the checkpoint. Under FSDP the shards are
    gone after testing, so the answers are left to ``evaluate.py``.
    """

    def report(
        trainer: L.Trainer,
        task: InstructTask,
        datamodule: Any,
        ckpt_path: Path | None,
        cfg: DictConfig,
        load: bool = True,
    ) -> dict[str, Any]:
        judge = build_judge(cfg)
        generation, limit = generation_settings(cfg, task, trainer)
        results, eval_file = test_figures(trainer, task, datamodule, ckpt_path, load, stage, what)
        if eval_file is None:
            return results
        rows = answer(task, datamodule.records["test"][:limit], generation, cfg.seed)
        responses_file = results_path(None if load else ckpt_path, trainer, "test_responses")
        write_json_atomically(responses_file, rows)
        results["responses"] = {"file": str(responses_file), "count": len(rows)}
        write_json_atomically(eval_file, results)
        show(rows, responses_file)
        if judge is None:
            return results
        for who, key in (judged or {"": "model_response"}).items():
            try:
                scores = judge.evaluate(rows, key)
            except JudgeError as err:
                saved = f"(the figures and the answers are saved: {eval_file}, {responses_file})"
                raise JudgeError(f"{err}\n{saved}") from err
            if judged is None:
                results["judge"] = scores
            else:
                results.setdefault("judge", {})[who] = scores
                print(f"\n{who} answers:")
            write_json_atomically(eval_file, results)
            print_judgement(scores)
        print(f"judge scores written to {eval_file}")
        return results

    report.__doc__ = f"The ``{stage}`` stage's report (see ``answering_report``)."
    return report


report = answering_report("instruct", "loss", answer, show)
"""Test loss and perplexity, the answers to the test split, and the judge's scores."""


def build_judge(cfg: DictConfig) -> Judge | None:
    """The judge of the ``judge`` group with ``eval.judge``, built before any work so a bad
    judge setting fails first; else None."""
    return instantiate(cfg.judge) if OmegaConf.select(cfg, "eval.judge") else None


def test_figures(
    trainer: L.Trainer,
    task: InstructTask,
    datamodule: Any,
    ckpt_path: Path | None,
    load: bool,
    stage: str,
    what: str,
) -> tuple[dict[str, Any], Path | None]:
    """The test split's figures (``score``) in the results of ``stage``'s report, saved to
    ``<name>.eval.json`` (``what`` they are, for the message). The file is None where no
    answering may follow: on a rank other than 0, and under FSDP, whose shards are gone after
    testing (the command that answers is printed instead). Rank 0 is left with the model on
    its device, where testing leaves it on the CPU."""
    results: dict[str, Any] = {"checkpoint": str(ckpt_path), "prompt_style": task.style.name}
    weights = ckpt_path.name if ckpt_path else "final weights"
    results["test"] = {
        "records": len(datamodule.records["test"]),
        **score(trainer, task, datamodule, ckpt_path, load, weights)["test"],
    }
    if not trainer.is_global_zero:
        return results, None
    eval_file = write_json_atomically(results_path(ckpt_path, trainer), results)
    print(f"{what} written to {eval_file}")
    if is_sharded(trainer):
        print("\nUnder FSDP the shards are gone after testing: answer the test split with")
        print(f"  python evaluate.py stage={stage} ckpt_path={ckpt_path or '<checkpoint>'}")
        return results, None
    task.to(trainer.strategy.root_device)
    return results, eval_file


def generation_settings(
    cfg: DictConfig, task: InstructTask, trainer: L.Trainer
) -> tuple[dict[str, Any], int | None]:
    """``stage.generation`` as ``task.respond``'s keyword arguments (an unknown key is a
    ``ConfigError`` naming it), and how many test records to answer (``limit``; a
    ``fast_dev_run`` answers as many as it runs batches)."""
    generation = OmegaConf.to_container(cfg.stage.generation, resolve=True)
    limit = generation.pop("limit", None)
    known = set(inspect.signature(task.respond).parameters) - {
        "records",
        "generator",
        "description",
    }
    if unknown := sorted(set(generation) - known):
        raise ConfigError(
            f"stage.generation: unknown key(s) {', '.join(unknown)} (got {unknown!r}; the keys "
            f"are {', '.join(sorted(known | {'limit'}))})"
        )
    if trainer.fast_dev_run:
        runs = int(trainer.fast_dev_run)
        limit = runs if limit is None else min(runs, limit)
    return generation, limit


def restored_run(stage: str, cfg: DictConfig, ckpt_path: Path) -> tuple[Any, Any]:
    """The task of ``stage`` restored from ``ckpt_path`` and its run's data module (same source,
    split and masking, the model's prompt style, ``eval.batch_size``), set up for testing."""
    task = load_task(ckpt_path, stage)
    datamodule = stored_datamodule(
        stage,
        task.run_config["data"],
        context_length=task.hparams.model_config["context_length"],
        prompt_style=task.style.name,
        batch_size=cfg.eval.batch_size,
    )
    datamodule.prepare_data()
    datamodule.setup("test")
    return task, datamodule


def evaluate(cfg: DictConfig, ckpt_path: Path) -> dict[str, Any]:
    """:func:`report` on the checkpoint's run data (:func:`restored_run`); generation follows
    this command's ``stage.generation`` settings."""
    task, datamodule = restored_run("instruct", cfg, ckpt_path)
    return report(eval_trainer(cfg), task, datamodule, ckpt_path, cfg, load=False)
