"""Stage ``pretrain``: next-token prediction (the book's chapter 5)."""

from __future__ import annotations

from typing import Any

import torch

from llmprep.training.task import GPTTask


class PretrainTask(GPTTask):
    """Trains the GPT on sliding windows; its samples (continuations of ``stage.sample.prompt``)
    are logged at each validation so progress can be read, not only plotted."""

    def sample_texts(self) -> dict[str, str]:
        """The prompt and its continuation by each decoding of ``stage.sample``, one line each.

        Greedy always; with ``sample.temperature > 0`` also a sample at that temperature from
        the ``top_k`` most likely tokens. The sample draws from a generator seeded with
        ``sample.seed`` afresh each time: the same weights give the same text, texts of
        successive validations differ only by what the model learnt, and the global RNG that
        training draws from (dropout, shuffling) is left untouched. Each run of whitespace is
        shown as one space, so the text ends at its last word, not in blank lines.
        """
        sample = self.config["stage"]["sample"]
        prompt, max_new_tokens = sample["prompt"], sample["max_new_tokens"]
        ids = [self.tokenizer.encode(prompt)]
        (greedy,) = self.continuations(ids, max_new_tokens)
        texts = {"greedy": greedy}
        temperature, top_k, seed = sample["temperature"], sample["top_k"], sample["seed"]
        if temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            (sampled,) = self.continuations(
                ids, max_new_tokens, temperature, top_k, generator=generator
            )
            top = f", top-k {top_k}" if top_k is not None else ""
            texts[f"temperature {temperature:g}{top}, seed {seed}"] = sampled
        return {decoding: " ".join((prompt + text).split()) for decoding, text in texts.items()}

    def print_samples(self) -> None:
        """Print :meth:`sample_texts`, one line per decoding."""
        print("\nSamples:")
        for decoding, text in self.sample_texts().items():
            print(f"{decoding}: {text}")
        print()

    def samples(self) -> list[dict[str, Any]]:
        """One row per decoding of :meth:`sample_texts`."""
        return [{"decoding": d, "text": text} for d, text in self.sample_texts().items()]
