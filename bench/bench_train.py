"""Training throughput side by side: full optimizer steps (forward and loss, backward, AdamW
step) of the book's code, transformers' GPT-2 and ours (plain loop, Lightning, compiled).

Every contender trains the same shape (``--model``, gpt2-small by default) with the book's
dropout of 0.1 on the same random tokens, ``--threads`` math threads. Rounds interleave the
contenders, so a change in the machine's load hits all of them alike; in each round a contender
runs in a process of its own (so no contender inherits another's heap or allocator settings),
builds a fresh model and optimizer and takes ``--steps`` steps, the first of which is warm-up
(compilation included) and not counted. Our contenders set the process up as ``train.py`` does
(``keep_freed_memory``), but for the rows that show our code before a change. The table gives
medians over the counted steps of all rounds, with the fastest and slowest counted step beside
them (the noise a ratio between rows has to beat). MFU is model FLOPs (``GPT.flops_per_token``,
the same for every contender: one shape) per second over the fp32 matmul peak this run
measures first.

    python bench/bench_train.py [--rounds 2] [--steps 4] [--threads 2] [--sizes 256x2 1024x1]
    python bench/bench_train.py --model gpt2-tiny --sizes 32x2 --rounds 1 --steps 2   # smoke

The book's contender needs the ``llms-from-scratch`` package (``make bench`` installs it).
Our ``GPT.loss`` computes the head's gradients together with the loss, so our forward column
holds that part of the backward pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # runnable from a plain checkout

from bench_model import machine  # noqa: E402

from llmprep.model import GPT, GPTConfig  # noqa: E402
from llmprep.model.init import model_config_from  # noqa: E402
from llmprep.model.weights import hf_config  # noqa: E402
from llmprep.run import build_trainer  # noqa: E402
from llmprep.stages import get_stage  # noqa: E402
from llmprep.training.config import plain_config  # noqa: E402
from llmprep.training.hardware import apply_process_settings, keep_freed_memory  # noqa: E402
from llmprep.training.optim import build_adamw, param_groups  # noqa: E402
from llmprep.training.task import TASK_KEYS  # noqa: E402

DROPOUT = 0.1
"""The book's dropout, for every contender."""
LR, WEIGHT_DECAY = 4e-4, 0.1
"""The book's chapter 5 AdamW settings, for every contender."""
CLIP = 1.0
"""Our contenders clip gradients as the pretrain stage does (the book's and transformers' loops
do not), so the plain loop does the Lightning run's work."""

Phases = tuple[float, float, float]
"""Seconds of one step in forward (loss included), backward and optimizer (clipping included)."""


@dataclass(frozen=True)
class Size:
    """One setting of the table: the model shape, window length and sequences per step."""

    config: GPTConfig
    context: int
    batch: int
    device: torch.device

    def batches(self, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` random ``(inputs, targets)`` batches, the same for every contender."""
        g = torch.Generator().manual_seed(0)
        shape = (steps, 2, self.batch, self.context)
        tokens = torch.randint(0, self.config.vocab_size, shape, generator=g)
        return [(x.to(self.device), y.to(self.device)) for x, y in tokens]


def now(device: torch.device) -> float:
    """The clock, once queued GPU work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plain_loop(
    size: Size,
    steps: int,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    clip: torch.nn.Module | None = None,
) -> list[Phases]:
    """The book's training step (zero the gradients, loss, backward, step) over ``steps``
    batches; ``clip`` clips that module's gradients before the step."""
    times = []
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=size.device.type == "cuda")
    for inputs, targets in size.batches(steps):
        start = now(size.device)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(inputs, targets)
        forward = now(size.device)
        loss.backward()
        backward = now(size.device)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip.parameters(), CLIP)
        optimizer.step()
        end = now(size.device)
        times.append((forward - start, backward - forward, end - backward))
    return times


def book(size: Size, steps: int) -> list[Phases]:
    """The ``llms-from-scratch`` package's ``GPTModel``, ``calc_loss_batch`` and AdamW."""
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import calc_loss_batch

    c = size.config
    model = GPTModel(
        {
            "vocab_size": c.vocab_size,
            "context_length": c.context_length,
            "emb_dim": c.emb_dim,
            "n_heads": c.n_heads,
            "n_layers": c.n_layers,
            "drop_rate": DROPOUT,
            "qkv_bias": c.qkv_bias,
        }
    ).to(size.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_of = lambda x, y: calc_loss_batch(x, y, model, size.device)  # noqa: E731
    return plain_loop(size, steps, loss_of, optimizer)


def transformers_gpt2(size: Size, steps: int) -> list[Phases]:
    """transformers' ``GPT2LMHeadModel`` (its head tied, as GPT-2's is) with torch's AdamW,
    the loss taken from its logits as the book does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config.from_dict(hf_config(replace(size.config, dropout=DROPOUT), tied=True))
    model = GPT2LMHeadModel(config).to(size.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())

    return plain_loop(size, steps, loss_of, optimizer)


def our_model(size: Size) -> GPT:
    return GPT(replace(size.config, dropout=DROPOUT)).to(size.device).train()


def ours_before(size: Size, steps: int, fused: bool = False) -> list[Phases]:
    """Our GPT as it trained before issue #13: the loss on the full logits and AdamW fused only
    on CUDA (a per-tensor loop on the CPU); with ``fused``, ``build_adamw``'s AdamW."""
    model = our_model(size)
    if fused:
        optimizer = build_adamw(model.named_parameters(), {"lr": LR, "weight_decay": WEIGHT_DECAY})
    else:
        groups = param_groups(model.named_parameters(), WEIGHT_DECAY)
        optimizer = torch.optim.AdamW(groups, lr=LR, fused=size.device.type == "cuda" or None)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    return plain_loop(size, steps, loss_of, optimizer, clip=model)


def ours_full_logits(size: Size, steps: int) -> list[Phases]:
    """Our GPT with the fused AdamW but the loss on the full logits: the two changes apart."""
    return ours_before(size, steps, fused=True)


def ours(size: Size, steps: int, compiled: bool = False, keep: bool = True) -> list[Phases]:
    """Our GPT in a plain loop: ``GPT.loss`` and ``build_adamw``, the process's freed memory
    kept as ``train.py`` keeps it (unless not ``keep``)."""
    if keep:
        keep_freed_memory()
    model = our_model(size)
    if compiled:
        model.compile_blocks()
    optimizer = build_adamw(model.named_parameters(), {"lr": LR, "weight_decay": WEIGHT_DECAY})
    return plain_loop(size, steps, model.loss, optimizer, clip=model)


def ours_default_malloc(size: Size, steps: int) -> list[Phases]:
    """Our plain loop with glibc's malloc as it comes: freed blocks over 32 MB go back to the
    kernel, and every step faults them in again."""
    return ours(size, steps, keep=False)


def ours_compiled(size: Size, steps: int) -> list[Phases]:
    """Our GPT with ``compile=true`` (blocks through ``torch.compile``) in the plain loop."""
    return ours(size, steps, compiled=True)


class StepClock(L.Callback):
    """Each training step's phases as Lightning runs them: forward from the end of the previous
    step (so the loop's own work and data loading count), backward, then the optimizer."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[Phases] = []
        self.marks: list[float] = []

    def mark(self) -> None:
        self.marks.append(now(self.device))

    def on_train_start(self, trainer, pl_module) -> None:
        self.mark()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.mark()

    def on_after_backward(self, trainer, pl_module) -> None:
        self.mark()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.mark()
        start, forward, backward, end = self.marks[-4:]
        self.times.append((forward - start, backward - forward, end - backward))
        self.marks = [end]


def run_config(size: Size, model_name: str, steps: int, output_dir: Path) -> DictConfig:
    """``python train.py`` 's config for ``steps`` pretraining steps, logger and validation
    off, on this size's hardware."""
    hardware = "gpu" if size.device.type == "cuda" else "cpu"
    overrides = [
        f"model={model_name}",
        f"hardware={hardware}",
        "logger=none",
        f"optim.lr={LR}",
        f"optim.weight_decay={WEIGHT_DECAY}",
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0",
        "test_after_fit=false",
    ]
    if hardware == "gpu":
        overrides.append("hardware.precision=bf16-mixed")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def lightning(size: Size, steps: int, model_name: str) -> list[Phases]:
    """Our GPT through the Trainer ``train.py`` builds: the pretrain task, the run's callbacks,
    gradient clipping; logger and validation off."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = run_config(size, model_name, steps, Path(tmp))
        config = plain_config(cfg)
        model = our_model(size)
        task = get_stage("pretrain").Task(
            {key: config[key] for key in TASK_KEYS}, asdict(model.config), model=model
        )
        task.run_config = config
        apply_process_settings(cfg.hardware)
        trainer = build_trainer(cfg, Path(tmp), None)
        clock = StepClock(size.device)
        trainer.callbacks.append(clock)
        loader = torch.utils.data.DataLoader(size.batches(steps), batch_size=None)
        trainer.fit(task, train_dataloaders=loader)
        return clock.times


def fp32_matmul_peak(device: torch.device, n: int, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` fp32 ``n`` x ``n`` matrix products (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = now(device)
        a @ b
        best = min(best, now(device) - start)
    return 2 * n**3 / best


CONTENDERS: dict[str, Callable[..., list[Phases]]] = {
    "book": book,
    "transformers": transformers_gpt2,
    "ours-before": ours_before,
    "ours-full-logits": ours_full_logits,
    "ours-default-malloc": ours_default_malloc,
    "ours": ours,
    "ours-lightning": lightning,
    "ours-compiled": ours_compiled,
}
LABELS = {
    "book": "the book's loop (llms-from-scratch)",
    "transformers": "transformers GPT2LMHeadModel",
    "ours-before": "llmprep before #13 (full logits, unfused AdamW)",
    "ours-full-logits": "llmprep, fused AdamW, full logits",
    "ours-default-malloc": "llmprep, plain loop, glibc's default malloc",
    "ours": "llmprep, plain loop",
    "ours-lightning": "llmprep, Lightning Trainer",
    "ours-compiled": "llmprep, plain loop, compile=true",
}


def parse_size(text: str) -> tuple[int, int]:
    context, batch = text.lower().split("x")
    return int(context), int(batch)


def model_config(name: str) -> GPTConfig:
    """The shape of ``conf/model/<name>.yaml``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return model_config_from(compose("train", overrides=[f"model={name}"]).model)


def run_apart(
    name: str, model: str, size: str, steps: int, args: argparse.Namespace
) -> list[Phases]:
    """One round of contender ``name`` (``steps`` steps of ``model`` at ``size``, CONTEXTxBATCH)
    in a fresh process of its own: this script with ``--worker``, which writes its steps'
    phases to a file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phases.json"
        command = [sys.executable, __file__, "--worker", name, "--worker-out", str(out)]
        command += ["--model", model, "--sizes", size, "--steps", str(steps)]
        command += ["--threads", str(args.threads), "--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} at {size} failed:\n{done.stderr}")
        return [tuple(phases) for phases in json.loads(out.read_text())]


def worker(args: argparse.Namespace) -> None:
    """Run contender ``--worker`` once at ``--sizes`` and write its phases to ``--worker-out``."""
    torch.set_num_threads(args.threads)
    context, batch = parse_size(args.sizes[0])
    size = Size(model_config(args.model), context, batch, torch.device(args.device))
    extra = (args.model,) if args.worker == "ours-lightning" else ()
    phases = CONTENDERS[args.worker](size, args.steps, *extra)
    Path(args.worker_out).write_text(json.dumps(phases))


OVERHEAD_MODEL, OVERHEAD_SIZE, OVERHEAD_STEPS = "gpt2-tiny", "128x2", 41
"""Where the Lightning Trainer's own time per step is measured: a model whose step takes about
0.1 s, so milliseconds of loop, logging and callbacks are not lost in a large step's noise."""


def trainer_overhead(args: argparse.Namespace) -> tuple[float, float]:
    """Median seconds of a counted step of our plain loop and of our Lightning run, for
    ``OVERHEAD_MODEL`` at ``OVERHEAD_SIZE``, over ``--rounds`` interleaved rounds."""
    totals: dict[str, list[float]] = {"ours": [], "ours-lightning": []}
    for _ in range(args.rounds):
        for name, steps in totals.items():
            phases = run_apart(name, OVERHEAD_MODEL, OVERHEAD_SIZE, OVERHEAD_STEPS, args)
            steps += [sum(p) for p in phases[1:]]
    plain, trained = (statistics.median(t) for t in totals.values())
    return plain, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-small", help="a conf/model size")
    parser.add_argument("--sizes", nargs="+", default=["256x2", "1024x1"], help="CONTEXTxBATCH")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per round, the first warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cuda: bf16 autocast (bf16-mixed)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--peak-n", type=int, default=2048, help="matrix size of the peak")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step of each round is warm-up")
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = model_config(args.model)
    peak = fp32_matmul_peak(device, args.peak_n)
    names = list(args.contenders)
    if "book" in names:
        try:
            import llms_from_scratch  # noqa: F401
        except ImportError:
            print("the book's contender needs llms-from-scratch (`make bench`); left out\n")
            names.remove("book")

    with torch.device("meta"):
        shape = GPT(config)
    rows, warmups = [], {}
    for text in args.sizes:
        context, batch = parse_size(text)
        times: dict[str, list[Phases]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                steps = run_apart(name, args.model, text, args.steps, args)
                warmups.setdefault((name, context, batch), sum(steps[0]))
                times[name] += steps[1:]
        rates = {n: batch * context / statistics.median(sum(t) for t in times[n]) for n in names}
        flops = shape.flops_per_token(context)
        for name in names:
            phases = [statistics.median(t[i] for t in times[name]) for i in range(3)]
            rate = rates[name]
            totals = [sum(t) for t in times[name]]
            spread = (min(totals), max(totals))
            rows.append(
                (context, batch, name, rate, rates.get("book"), phases, spread, rate * flops / peak)
            )

    params = sum(p.numel() for p in shape.parameters())
    tied = "tied" if config.tie_weights else "untied"
    print(f"\n{args.model} ({params:,} parameters, {tied}), dropout {DROPOUT}; {machine(device)}")
    print(f"measured fp32 matmul peak: {peak / 1e9:,.1f} GFLOP/s ({args.peak_n}x{args.peak_n})")
    print(f"{args.rounds} rounds x {args.steps - 1} counted steps (after 1 warm-up), medians\n")
    print(
        "| context x batch | contender | tokens/s | x book | forward s | backward s | optimizer s "
        "| step s, fastest-slowest | MFU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for context, batch, name, rate, reference, phases, (fastest, slowest), mfu in rows:
        ratio = f"{rate / reference:.2f}" if reference else "-"
        fwd, bwd, opt = (f"{p:.3f}" for p in phases)
        print(
            f"| {context} x {batch} | {LABELS[name]} | {rate:,.1f} | {ratio} | {fwd} | {bwd} "
            f"| {opt} | {fastest:.2f}-{slowest:.2f} | {mfu:.1%} |"
        )
    print("\nllmprep's forward column includes the head's backward (GPT.loss computes it).")
    if {"ours", "ours-lightning"} <= set(names):
        plain, trained = trainer_overhead(args)
        extra = trained - plain
        print(
            f"\nThe Trainer's own time per step ({OVERHEAD_MODEL} at {OVERHEAD_SIZE}, "
            f"{args.rounds} rounds x {OVERHEAD_STEPS - 1} steps, medians): plain loop "
            f"{plain * 1e3:.1f} ms, Lightning {trained * 1e3:.1f} ms, {extra * 1e3:+.1f} ms a step"
        )
        for context, batch, name, rate, *_ in rows:
            if name == "ours":
                step = context * batch / rate
                print(
                    f"  = {extra / step:+.2%} of the plain loop's {args.model} step at "
                    f"{context} x {batch} ({step:.2f} s)"
                )
    for (name, context, batch), seconds in warmups.items():
        if name == "ours-compiled":
            print(f"\nfirst compiled step (compiling) at {context} x {batch}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
