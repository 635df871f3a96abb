"""Trainer settings of the ``hardware`` group: devices, strategy, precision, math threads, and
how the process keeps the memory it frees."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
"""Linux's scheduler counters; ``procs_running`` is the number of threads running right now."""


def busy_threads(readings: int = 5) -> int | None:
    """Threads of other processes running on this machine now: the lowest of a few readings of
    the kernel's ``procs_running`` 10 ms apart (so a short burst does not count), less the
    reading thread itself; ``None`` without ``/proc/stat`` (not Linux)."""
    counts = []
    for _ in range(readings):
        try:
            match = re.search(r"^procs_running (\d+)$", PROC_STAT.read_text(), re.MULTILINE)
        except OSError:
            return None
        if match is None:
            return None
        counts.append(int(match.group(1)))
        time.sleep(0.01)
    return max(min(counts) - 1, 0)


@functools.cache
def warn_if_oversubscribed(threads: int, processes: int) -> None:
    """Warn (once per setting and process) when ``processes`` x ``threads`` math threads and the
    threads other jobs keep busy outnumber the cores this process may run on.

    Oversubscribed threads wait for each other at every parallel step: KV-cached generation on
    gpt2-tiny ran 14x slower with torch's default threads beside another job than with one
    thread. The warning names the ``hardware.threads`` that fits the cores left.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    others = busy_threads()
    if others is None or not cores or others + threads * processes <= cores:
        return
    fits = max(1, (cores - others) // processes)
    log.warning(
        "%d threads of other processes are busy on the %d cores this run may use, and it adds "
        "%d process(es) x %d math threads: oversubscribed threads slow every step down, "
        "generation most; set hardware.threads=%d",
        others,
        cores,
        processes,
        threads,
        fits,
    )


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
"""glibc's ``mallopt`` parameters (``malloc.h``)."""


def keep_freed_memory() -> bool:
    """Make the C library's ``malloc`` keep the memory this process frees for its next
    allocations instead of handing it back to the kernel; ``False`` (nothing changed) where the C
    library has no working ``mallopt`` (macOS, Windows, musl).

    glibc maps every block over 32 MB straight from the kernel and unmaps it when freed, and it
    trims the heap's free top, so a training step gets its gradients, logits and attention
    probabilities as fresh zeroed pages again, step after step: 125,000 page faults (500 MB) a
    step for gpt2-small at context 256, batch 2. With mmap and trimming off, the steps after the
    first few take none, and gpt2-small trained 17 and 30 % faster at context 1024 in two runs
    of ``bench/bench_train.py`` (the ``ours-default-malloc`` row against ``ours``). The cost: the
    process keeps its peak memory until it exits, which a training run reaches at every step
    anyway (peak RSS over 12 such steps: 3,542 MB against 3,493 MB).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


def apply_process_settings(hardware: DictConfig) -> None:
    """Set this process up as ``hardware`` says: math-library threads to ``hardware.threads``
    when given (checked by :func:`~llmprep.training.validate.validate_config`), checked against
    the machine's load (:func:`warn_if_oversubscribed`; CPU processes on this machine:
    ``hardware.devices`` on the CPU, else one), and :func:`keep_freed_memory` unless
    ``hardware.keep_freed_memory`` is false."""
    if hardware.get("keep_freed_memory", True) and not keep_freed_memory():
        log.debug("hardware.keep_freed_memory: this C library has no mallopt; left as it is")
    if hardware.get("threads") is not None:
        torch.set_num_threads(hardware.threads)
    devices = hardware.get("devices")
    on_cpu = hardware.get("accelerator") == "cpu" and isinstance(devices, int) and devices > 0
    warn_if_oversubscribed(torch.get_num_threads(), devices if on_cpu else 1)


def trainer_kwargs(hardware: DictConfig) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer``: the ``hardware`` group's keys but the process
    settings (:func:`apply_process_settings`), a ``_target_`` among them (``hardware=fsdp``'s
    strategy) instantiated."""
    kwargs = instantiate(hardware, _convert_="all")
    kwargs.pop("threads", None)
    kwargs.pop("keep_freed_memory", None)
    return kwargs
