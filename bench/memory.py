"""What the peak-memory benchmarks (bench_lora_memory.py, bench_dpo_memory.py) share: the
settings they measure, the process-per-variant runner and the training loop each variant times.

A process's peak resident memory (``ru_maxrss``) only grows, so every variant runs in a fresh
Python process: the bench runs its own file again with ``--child``, ``--rank`` (0 is full
fine-tuning) and ``--recompute`` (activation checkpointing) added to its options, and the child
prints its figures as JSON on its last line of output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning
    from torch.utils.data import DataLoader

SETTINGS = {
    "plain": ({}, False),
    "activation checkpointing": ({}, True),
    "checkpointing, MALLOC_MMAP_THRESHOLD_=1MiB": ({"MALLOC_MMAP_THRESHOLD_": "1048576"}, True),
}
"""Each setting's environment additions and activation checkpointing (see bench_lora_memory.py's
docstring for why the mmap threshold)."""

CHILD_OPTIONS = ("child", "rank", "recompute")
"""The options ``measure`` sets for each variant; it passes every other option (each one that
takes a value) on as given."""


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(
    parser: argparse.ArgumentParser, variant: Callable[[argparse.Namespace], dict]
) -> argparse.Namespace:
    """Add the options every memory bench takes (sequence length, steps, LoRA rank) to the bench's
    own, and parse the command line. In a variant's process (``--child``, set by ``measure``,
    with ``--rank`` and ``--recompute``) run ``variant`` on the options, print its figures as
    the last line, where ``measure`` reads them, and exit; else return the options."""
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence (max)")
    parser.add_argument(
        "--steps",
        type=int,
        default=2,
        help="training steps per variant (2+: AdamW's moments are allocated at the first step)",
    )
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(variant(args)))
        raise SystemExit(0)
    return args


def fit(task: lightning.LightningModule, loader: DataLoader, steps: int, built_mib: float) -> dict:
    """Train ``task`` for ``steps`` steps of ``loader`` on the CPU in this process; its trainable
    parameters, ``built_mib`` (the peak after building it), the peak over training, and the
    seconds per step. The Trainer writes no logs or checkpoints and prints no progress bar or
    summary, so that what the variant holds and the time it takes are the training's alone.
    Lightning is imported here, in a variant's process only."""
    import lightning as L

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
        "built_mib": built_mib,
        "peak_mib": peak_rss_mib(),
        "seconds_per_step": (time.perf_counter() - start) / steps,
    }


def measure(script: str, rank: int, setting: str, args: argparse.Namespace) -> dict:
    """One variant's figures, from a fresh process running ``script`` with ``--child``, ``args``'
    options and the variant's ``rank`` and ``setting``."""
    env_extra, recompute = SETTINGS[setting]
    passed = [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in CHILD_OPTIONS
    ]
    command = [
        sys.executable,
        script,
        "--child",
        f"--rank={rank}",
        *passed,
        *(["--recompute"] if recompute else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env_extra})
    if done.returncode != 0:
        raise SystemExit(f"variant rank={rank} ({setting}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(
    script: str,
    settings: Iterable[str],
    args: argparse.Namespace,
    column: str,
    names: tuple[str, str],
) -> None:
    """The markdown table of full fine-tuning against LoRA rank ``args.rank`` under each setting:
    both variants ``measure``d, their rows named ``names`` in the column headed ``column``, LoRA's
    peak over full fine-tuning's beside them."""
    print(
        f"| setting | {column} | trainable params | peak RSS after build | peak RSS training "
        "| LoRA / full | s/step |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for setting in settings:
        full, lora = measure(script, 0, setting, args), measure(script, args.rank, setting, args)
        ratio = lora["peak_mib"] / full["peak_mib"]
        for name, row in zip(names, (full, lora), strict=True):
            print(
                f"| {setting} | {name} | {row['trainable']:,} | {row['built_mib']:,.0f} MiB | "
                f"{row['peak_mib']:,.0f} MiB | {ratio if row is lora else 1.0:.2f} | "
                f"{row['seconds_per_step']:.1f} |",
                flush=True,
            )
