"""Throughput of the GPT: training steps (forward + backward) and greedy generation with and
without the KV cache, for gpt2-small (untied head, no qkv bias: our pretraining default).

Prints a markdown table and the machine it ran on. Random weights and tokens: speed does not
depend on what the model has learned.

    python bench/bench_model.py [--device cuda] [--steps 3] [--batch 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

from llmprep.model import GPT, GPTConfig
from llmprep.model.generate import generate

PROMPT_TOKENS = 16


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes, waiting for queued GPU work on both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def train_tokens_per_second(
    model: GPT, context: int, batch: int, steps: int, warmup: int, device: torch.device
) -> float:
    """Tokens per second of forward, cross-entropy loss and backward (no optimizer step)."""
    model.train()
    vocab = model.config.vocab_size
    inputs = torch.randint(0, vocab, (batch, context), device=device)
    targets = torch.randint(0, vocab, (batch, context), device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).backward()

    for _ in range(warmup):
        step()
    seconds = sum(timed(step, device) for _ in range(steps))
    return batch * context * steps / seconds


def generate_tokens_per_second(
    model: GPT, new_tokens: int, use_cache: bool, device: torch.device
) -> float:
    """New tokens per second of greedy generation for one prompt of ``PROMPT_TOKENS`` tokens."""
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), device=device)
    generate(model, prompt, 4, use_cache=use_cache)  # warm-up
    seconds = timed(lambda: generate(model, prompt, new_tokens, use_cache=use_cache), device)
    return new_tokens / seconds


def machine(device: torch.device) -> str:
    """CPU model, cores, torch version and threads (and the GPU when benchmarking one)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    line = (
        f"CPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; device {device}"
    )
    if device.type == "cuda":
        line += f" ({torch.cuda.get_device_name(device)})"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per context")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--batch", type=int, default=2, help="sequences per training step")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(GPTConfig()).to(device)  # the defaults are GPT-2 small

    rows = []
    for context in (256, 1024):
        rate = train_tokens_per_second(model, context, args.batch, args.steps, args.warmup, device)
        rows.append((f"forward+backward, context {context}, batch {args.batch}", rate))
    for use_cache in (True, False):
        rate = generate_tokens_per_second(model, args.new_tokens, use_cache, device)
        label = "with" if use_cache else "without"
        rows.append(
            (f"greedy generation {label} KV cache, {args.new_tokens} new tokens, batch 1", rate)
        )

    params = sum(p.numel() for p in model.parameters())
    print(f"gpt2-small ({params:,} parameters); {machine(device)}\n")
    print("| benchmark | tokens/s |\n|---|---:|")
    for label, rate in rows:
        print(f"| {label} | {rate:,.1f} |")
    print(f"\nKV cache speed-up: {rows[2][1] / rows[3][1]:.1f}x")


if __name__ == "__main__":
    main()
