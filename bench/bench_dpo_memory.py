"""Peak memory of DPO training on gpt2-small: a frozen reference copy against LoRA, whose
reference is the same model with its adapters off.

Each variant runs in a fresh Python process (a process's peak resident memory, ``ru_maxrss``,
only grows): it builds the ``DPOTask`` on a random GPT-2 small (OpenAI's shape; memory does not
depend on the values), then Lightning fits a few steps of synthetic preference batches
(``collate_pairs``: chosen and rejected together), AdamW as in the book's DPO run. Prints a
markdown table: the peak after building the task, the peak over training, LoRA's ratio, and the
seconds per step.

Full fine-tuning holds two models (the policy and its frozen reference, 0.65 GB each in float32)
plus gradients and AdamW's two moments of the policy; LoRA holds one model, and gradients and
moments of the adapters only. Activations are the same for both. The second setting adds
activation checkpointing and ``MALLOC_MMAP_THRESHOLD_=1MiB`` (see bench_lora_memory.py: with it
the peak follows the memory in use rather than what glibc keeps after freeing).

    python bench/bench_dpo_memory.py [--pairs 2] [--length 256] [--steps 2] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

from bench_lora_memory import SETTINGS, peak_rss_mib

SHOWN = ("plain", "checkpointing, MALLOC_MMAP_THRESHOLD_=1MiB")
"""The settings of bench_lora_memory.py measured here."""


def run_variant(rank: int, pairs: int, length: int, steps: int, recompute: bool) -> dict:
    """Build and train one variant in this process; ``rank`` 0 is full fine-tuning."""
    import lightning as L
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
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(task, train_dataloaders=loader)
    return {
        "trainable": sum(p.numel() for p in task.parameters() if p.requires_grad),
        "built_mib": built,
        "peak_mib": peak_rss_mib(),
        "seconds_per_step": (time.perf_counter() - start) / steps,
    }


def measure(rank: int, setting: str, args: argparse.Namespace) -> dict:
    """One variant's figures, from a fresh process running this file with ``--child``."""
    env_extra, recompute = SETTINGS[setting]
    command = [
        sys.executable,
        __file__,
        "--child",
        f"--rank={rank}",
        f"--pairs={args.pairs}",
        f"--length={args.length}",
        f"--steps={args.steps}",
        *(["--recompute"] if recompute else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env_extra})
    if done.returncode != 0:
        raise SystemExit(f"variant rank={rank} ({setting}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="preference pairs per step")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence (max)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per variant (2+)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = run_variant(args.rank, args.pairs, args.length, args.steps, args.recompute)
        print(json.dumps(figures))
        return

    print(
        f"DPO training of gpt2-small (random weights), {args.pairs} pairs (chosen + rejected: "
        f"{2 * args.pairs} sequences) x {args.length} tokens, {args.steps} steps, AdamW; "
        f"{os.cpu_count()} CPU cores\n"
    )
    print(
        "| setting | reference | trainable params | peak RSS after build | peak RSS training "
        "| LoRA / full | s/step |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for setting in SHOWN:
        full, lora = measure(0, setting, args), measure(args.rank, setting, args)
        ratio = lora["peak_mib"] / full["peak_mib"]
        for name, row in (
            ("frozen copy (full fine-tuning)", full),
            (f"adapters off (LoRA rank {args.rank})", lora),
        ):
            print(
                f"| {setting} | {name} | {row['trainable']:,} | {row['built_mib']:,.0f} MiB | "
                f"{row['peak_mib']:,.0f} MiB | {ratio if row is lora else 1.0:.2f} | "
                f"{row['seconds_per_step']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
