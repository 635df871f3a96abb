"""Every hardware config composes into Trainer arguments; strategies are built as documented."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import OmegaConf

from llmprep.training.hardware import apply_threads, build_strategy, trainer_kwargs

CONF = str(ROOT / "conf")


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "multinode"])
def test_each_hardware_config_composes(name):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("train", overrides=[f"hardware={name}"])
    kwargs = trainer_kwargs(cfg.hardware)
    assert set(kwargs) == {"accelerator", "devices", "num_nodes", "strategy", "precision"}


def test_threads_setting_applies_and_rejects_nonsense():
    before = torch.get_num_threads()
    try:
        apply_threads(OmegaConf.create({"threads": 1}))
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match=r"hardware\.threads=0"):
            apply_threads(OmegaConf.create({"threads": 0}))
    finally:
        torch.set_num_threads(before)


def test_strategies():
    assert isinstance(build_strategy("ddp"), DDPStrategy)
    assert isinstance(build_strategy("fsdp"), FSDPStrategy)
    assert build_strategy("auto") == "auto"
    with pytest.raises(ValueError, match=r"hardware\.strategy='deepspeed'"):
        build_strategy("deepspeed")


def test_slurm_experiment_composes_with_the_submitit_launcher():
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("train", overrides=["experiment=multinode_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.nodes == cfg.hardware.num_nodes == 2
    assert cfg.hydra.launcher.tasks_per_node == cfg.hardware.devices
