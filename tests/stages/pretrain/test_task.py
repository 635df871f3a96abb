"""The pretrain stage's samples: what they print, that they repeat, that training ignores them."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from llmprep.model import GPTConfig
from llmprep.run import train
from llmprep.stages.pretrain.task import PretrainTask
from llmprep.tokenizer import get_tokenizer

PROMPT = "Every effort moves you"
BOOK = {"max_new_tokens": 15, "temperature": 1.4, "top_k": 25, "seed": 123}
BOOK_LABEL = "temperature 1.4, top-k 25, seed 123"


def make_task(favoured: dict[str, float], **sample: object) -> PretrainTask:
    """A tiny random GPT whose head adds ``favoured`` logits to the tokens of those texts, so
    what it writes is known in kind (e.g. blank lines) but not in order."""
    torch.manual_seed(0)
    config = {
        "optim": {"lr": 1e-3},
        "lora": {"rank": 0},
        "stage": {"sample": {"prompt": PROMPT, **BOOK, **sample}},
    }
    model_config = GPTConfig(context_length=64, emb_dim=16, n_layers=1, n_heads=2)
    task = PretrainTask(config, asdict(model_config))
    head = torch.nn.Linear(16, task.model.config.vocab_size)
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.zero_()
        for text, logit in favoured.items():
            (token,) = get_tokenizer().encode(text)
            head.bias[token] = logit
    task.model.out_head = head
    return task


def test_the_sample_after_training_is_printed_without_trailing_blank_lines(capsys) -> None:
    """A model that writes words and blank lines, as one trained on The Verdict does."""
    task = make_task({"\n": 8.0, "\n\n": 8.0, " had": 7.5, " the": 7.5, " ": 7.0})
    task.print_samples()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["", "Samples:"]
    greedy, sampled = lines[2:4]
    assert greedy == f"greedy: {PROMPT}"
    assert sampled.startswith(f"{BOOK_LABEL}: {PROMPT} ")
    assert sampled == sampled.rstrip() and "  " not in sampled
    assert {"had", "the"} & set(sampled.split())
    assert lines[4:] == [""]


def test_greedy_only_when_the_temperature_is_zero() -> None:
    task = make_task({" the": 9.0}, temperature=0.0)
    assert task.sample_texts() == {"greedy": f"{PROMPT}{' the' * 15}"}


def test_the_sample_repeats_for_its_seed_and_leaves_the_global_rng_alone() -> None:
    task = make_task({word: 5.0 for word in (" a", " b", " c", " d", " e", " f")})
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = task.sample_texts()[BOOK_LABEL]
    assert torch.equal(torch.get_rng_state(), state)
    assert task.sample_texts()[BOOK_LABEL] == first
    task.config["stage"]["sample"]["seed"] = 7
    assert task.sample_texts()["temperature 1.4, top-k 25, seed 7"] != first


def train_losses(run: Path) -> list[float]:
    """Every logged ``train/loss`` of a ``logger=csv`` run."""
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("train/loss")
    return [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]


def test_sampling_at_each_validation_does_not_change_the_training_losses(
    compose_run, tmp_path: Path
) -> None:
    """With dropout, every training step draws from the global RNG: a sample that drew from it
    too would change the masks, and so the losses, of every step after the first validation."""
    run = (
        "model=gpt2-tiny",
        "model.dropout=0.1",
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "stage.sample.max_new_tokens=5",
    )
    train(compose_run(*run, run_dir=tmp_path / "sampled"))
    train(compose_run(*run, "stage.sample.temperature=0", run_dir=tmp_path / "greedy"))
    sampled, greedy = train_losses(tmp_path / "sampled"), train_losses(tmp_path / "greedy")
    assert len(sampled) == 6
    assert sampled == greedy


def test_the_default_sample_is_the_books_final_chapter_5_sampling(compose_run) -> None:
    sample = compose_run().stage.sample
    assert (sample.prompt, sample.max_new_tokens, sample.temperature) == (PROMPT, 15, 1.4)
    assert (sample.top_k, sample.seed) == (25, 123)
