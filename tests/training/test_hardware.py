"""Every hardware config composes into Trainer arguments; strategies are built as documented."""

from __future__ import annotations

import platform
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import OmegaConf

from llmprep.errors import ConfigError
from llmprep.model.gpt import Block
from llmprep.training import hardware
from llmprep.training.hardware import apply_process_settings, busy_threads, trainer_kwargs
from llmprep.training.validate import validate_config

CONF = str(ROOT / "conf")


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "multinode"])
def test_each_hardware_config_composes(compose_run, name):
    kwargs = trainer_kwargs(compose_run(f"hardware={name}").hardware)
    plugins = {"plugins"} if name == "multinode" else set()
    assert set(kwargs) == {"accelerator", "devices", "num_nodes", "strategy", "precision", *plugins}


def test_hardware_files_state_what_differs_from_the_default(compose_run):
    gpu, ddp, multinode = (
        trainer_kwargs(compose_run(f"hardware={name}").hardware)
        for name in ("gpu", "ddp", "multinode")
    )
    assert (gpu["accelerator"], gpu["devices"], gpu["precision"]) == ("gpu", 1, "bf16-mixed")
    assert (ddp["devices"], ddp["strategy"], ddp["precision"]) == (-1, "ddp", "bf16-mixed")
    assert (multinode["num_nodes"], multinode["devices"], multinode["strategy"]) == (2, 8, "ddp")
    assert compose_run("hardware=ddp_cpu").hardware.threads == 1


def test_threads_setting_applies_and_rejects_nonsense():
    before = torch.get_num_threads()
    try:
        apply_process_settings(OmegaConf.create({"threads": 1}))
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match=r"hardware\.threads=0"):
            validate_config(OmegaConf.create({"hardware": {"threads": 0}}))
    finally:
        torch.set_num_threads(before)


FAULTS_OF_FREED_BLOCKS = """
import resource, sys, torch
from llmprep.training.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(12):  # a step's worth of blocks over 32 MB, allocated and freed
    before = faults()
    torch.ones(10_000_000) + torch.ones(12_000_000)[:10_000_000]
    counts.append(faults() - before)
print(sum(counts[-4:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    """By default glibc unmaps every freed block over 32 MB, so each repeat of the same
    allocations faults their pages back in (about 30,000 a repeat here); with the memory kept,
    the repeats after the first few take none."""

    def faults(mode: str) -> int:
        command = [sys.executable, "-c", FAULTS_OF_FREED_BLOCKS, mode]
        return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    kept, default = faults("keep"), faults("default")
    assert kept < 100
    assert default > 4 * 20_000


def test_strategies(compose_run):
    """DDP keeps find_unused_parameters off; FSDP shards per transformer block; an unknown name
    is refused up front, naming the key."""
    ddp = trainer_kwargs(compose_run("hardware=ddp_cpu").hardware)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=ddp["strategy"], logger=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert not trainer.strategy._ddp_kwargs.get("find_unused_parameters", False)
    fsdp = trainer_kwargs(compose_run("hardware=fsdp").hardware)["strategy"]
    assert isinstance(fsdp, FSDPStrategy)
    assert fsdp.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert trainer_kwargs(compose_run().hardware)["strategy"] == "auto"
    with pytest.raises(ConfigError, match=r"hardware\.strategy='deepspeed'"):
        validate_config(compose_run("hardware.strategy=deepspeed"))


def test_slurm_experiment_composes_with_the_submitit_launcher():
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("train", overrides=["experiment=multinode_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.nodes == cfg.hardware.num_nodes == 2
    assert cfg.hydra.launcher.tasks_per_node == cfg.hardware.devices
    # Lightning's SLURM auto-requeue: SIGUSR1 saves a checkpoint and requeues the job.
    environment = trainer_kwargs(cfg.hardware)["plugins"]
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A 2-core machine whose scheduler reports ``running`` threads (the reader included)."""

    def load(running: int | None) -> None:
        stat = tmp_path / "stat"
        stat.write_text("cpu  1 2 3\n" + (f"procs_running {running}\n" if running else ""))
        monkeypatch.setattr(hardware, "PROC_STAT", stat)
        hardware.warn_if_oversubscribed.cache_clear()

    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1})
    yield load
    hardware.warn_if_oversubscribed.cache_clear()


def test_busy_threads_are_the_others_running_now(machine, monkeypatch, tmp_path):
    machine(4)
    assert busy_threads() == 3
    machine(None)
    assert busy_threads() is None
    monkeypatch.setattr(hardware, "PROC_STAT", tmp_path / "absent")
    assert busy_threads() is None


@pytest.mark.parametrize(
    ("running", "threads", "processes", "advice"),
    [(2, 2, 1, "hardware.threads=1"), (1, 2, 2, "hardware.threads=1"), (1, 2, 1, None)],
)
def test_oversubscription_is_warned_with_the_threads_that_fit(
    machine, caplog, running, threads, processes, advice
):
    machine(running)
    hardware.warn_if_oversubscribed(threads, processes)
    hardware.warn_if_oversubscribed(threads, processes)
    warnings = [r.getMessage() for r in caplog.records if "oversubscribed" in r.getMessage()]
    assert warnings == ([] if advice is None else [warnings[0]])
    if advice:
        assert warnings[0].endswith(advice)
        assert f"{running - 1} threads of other processes are busy on the 2 cores" in warnings[0]


def test_a_run_on_a_busy_machine_says_which_threads_to_set(machine, cli, tmp_path):
    machine(3)  # two other threads busy on two cores
    result = cli(
        "train.py",
        "model=gpt2-tiny",
        "trainer.max_steps=1",
        "test_after_fit=false",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.code == 0, result.err
    assert result.err.count("oversubscribed") == 1
    assert "set hardware.threads=1" in result.err
