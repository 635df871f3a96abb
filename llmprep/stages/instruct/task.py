"""Stage ``instruct``: supervised instruction fine-tuning (the book's chapter 7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from llmprep.model import GPT
from llmprep.stages.instruct.data import InstructDataModule
from llmprep.stages.instruct.prompts import get_style
from llmprep.training.task import GPTTask


class InstructTask(GPTTask):
    """Fine-tunes the GPT on instruction records and answers them.

    ``prompt_style`` is the style the model is trained with, a plain hyperparameter, so a
    restored checkpoint prompts and reads its answers the same way without the run's config.
    """

    def __init__(
        self,
        config: dict[str, Any],
        model_config: dict[str, Any],
        model: GPT | None = None,
        prompt_style: str = "alpaca",
    ) -> None:
        super().__init__(config, model_config, model)
        self.style = get_style(prompt_style)

    def adapt_model(self, model: GPT) -> torch.nn.Module:
        """The GPT as it is; a model whose head is not the vocabulary (a classifier) is refused."""
        head = model.out_head.out_features
        if head != model.config.vocab_size:
            raise ValueError(
                f"stage instruct needs a language-model head of {model.config.vocab_size} "
                f"outputs, but the model's out_head has {head} (a classifier checkpoint?)"
            )
        return model

    def samples(self) -> list[dict[str, Any]]:
        """Greedy answers to the first ``stage.sample.count`` validation records."""
        datamodule = self.trainer.datamodule
        sample = self.config["stage"]["sample"]
        if not isinstance(datamodule, InstructDataModule) or sample["count"] < 1:
            return []
        rows = self.respond(datamodule.records["val"][: sample["count"]], sample["max_new_tokens"])
        return [
            {
                "instruction": row["instruction"],
                "input": row["input"],
                "expected": row["output"],
                "response": row["model_response"],
            }
            for row in rows
        ]

    @torch.no_grad()
    def respond(
        self,
        records: Sequence[Mapping[str, str]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        batch_size: int = 8,
        generator: torch.Generator | None = None,
        description: str | None = None,
    ) -> list[dict[str, str]]:
        """``records`` with the model's answer added as ``model_response``, in their order.

        Each prompt is the record in the model's style, encoded as in training (special-token
        text is plain text). Generation stops at ``<|endoftext|>``; the answer is the decoded
        continuation after any response marker the model wrote itself
        (``PromptStyle.extract_response``). Prompts are batched, and a ``description`` shows a
        progress bar, as ``GPTTask.continuations`` does.
        """
        rows = [
            {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
            for r in records
        ]
        prompts = [self.style.format_prompt(row["instruction"], row["input"]) for row in rows]
        ids = self.tokenizer.encode_ordinary_batch(prompts) if prompts else []
        texts = self.continuations(
            ids, max_new_tokens, temperature, top_k, batch_size, generator, description=description
        )
        return [
            {**row, "model_response": self.style.extract_response(text)}
            for row, text in zip(rows, texts, strict=True)
        ]
