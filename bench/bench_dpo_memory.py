"""Peak memory of DPO training on gpt2-small: a frozen reference copy against LoRA, whose
reference is the same model with its adapters off.

Each variant runs in a fresh Python process (a process's peak resident memory, ``ru_maxrss``,
only grows): it builds the ``DPOTask`` on a random GPT-2 small (OpenAI's shape; memory does not
depend on the values), then Lightning fits a few steps of synthetic preference batches
(``collate_pairs``: chosen and rejected together), AdamW as in the book's DPO run. Prints a
markdown table: the peak after building the task, the peak over training, LoRA's ratio, and the
seconds per step.

Full fine-tuning holds two models (the policy and its frozen reference, 0.5 GB each in float32)
plus gradients and AdamW's two moments of the policy; LoRA holds one model, and gradients and
moments of the adapters only. Activations are the same for both. The second setting adds
activation checkpointing and ``MALLOC_MMAP_THRESHOLD_=1MiB`` (see bench_lora_memory.py: with it
the peak follows the memory in use rather than what glibc keeps after freeing).

    python bench/bench_dpo_memory.py [--pairs 2] [--length 256] [--steps 2] [--rank 16]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

from memory import fit, parse_args, peak_rss_mib, print_table

SHOWN = ("plain", "checkpointing, MALLOC_MMAP_THRESHOLD_=1MiB")
"""The settings of memory.SETTINGS measured here."""


def run_variant(rank: int, pairs: int, length: int, steps: int, recompute: bool) -> dict:
    """Build and train one variant in this process; ``rank`` 0 is full fine-tuning."""
    import torch
    from torch.utils.data import DataLoader

    from llmprep.model import GPT, GPTConfig
    from llmprep.stages.dpo.data import PairCollate
    from llmprep.stages.dpo.task import DPOTask

    torch.manual_seed(0)
    config = GPTConfig(qkv_bias=True, tie_weights=True, dropout=0.0)
    run_config = {
        "stage": {"name": "dpo", "beta": 0.1, "logprob": "mean", "label_smoothing": 0.0},
        "optim": {
            "lr": 5e-6,
            "weight_decay": 0.01,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "decay_all": True,
            "warmup_steps": 0,
            "schedule": "constant",
        },
        "lora": {"rank": rank, "alpha": rank},
        "init_from": None,
        "activation_checkpointing": recompute,
    }
    task = DPOTask(run_config, asdict(config), model=GPT(config))
    built = peak_rss_mib()
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(0, config.vocab_size, (n,), generator=generator).tolist()

    items = []
    for _ in range(pairs * steps):
        prompt = ids(length // 3)
        chosen, rejected = ids(length - len(prompt)), ids(length // 2 - len(prompt) // 2)
        items.append((prompt + chosen, len(prompt), prompt + rejected, len(prompt)))
    loader = DataLoader(items, batch_size=pairs, collate_fn=PairCollate(max_length=length))
    return fit(task, loader, steps, built)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--pairs", type=int, default=2, help="preference pairs per step")
    args = parse_args(
        parser,
        lambda o: run_variant(o.rank, o.pairs, o.length, o.steps, o.recompute),
    )
    print(
        f"DPO training of gpt2-small (random weights), {args.pairs} pairs (chosen + rejected: "
        f"{2 * args.pairs} sequences) x {args.length} tokens, {args.steps} steps, AdamW; "
        f"{os.cpu_count()} CPU cores\n"
    )
    names = ("frozen copy (full fine-tuning)", f"adapters off (LoRA rank {args.rank})")
    print_table(__file__, SHOWN, args, "reference", names)


if __name__ == "__main__":
    main()
