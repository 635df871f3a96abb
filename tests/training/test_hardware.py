"""Every hardware config composes into Trainer arguments; strategies are built as documented."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import OmegaConf

from llmprep.errors import ConfigError
from llmprep.model.gpt import Block
from llmprep.training.hardware import apply_threads, trainer_kwargs
from llmprep.training.validate import validate_config

CONF = str(ROOT / "conf")


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "multinode"])
def test_each_hardware_config_composes(compose_run, name):
    kwargs = trainer_kwargs(compose_run(f"hardware={name}").hardware)
    assert set(kwargs) == {"accelerator", "devices", "num_nodes", "strategy", "precision"}


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
        apply_threads(OmegaConf.create({"threads": 1}))
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match=r"hardware\.threads=0"):
            validate_config(OmegaConf.create({"hardware": {"threads": 0}}))
    finally:
        torch.set_num_threads(before)


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
