"""A real chain for the dpo tests: a tiny instruct run from random weights, then DPO from its
checkpoint (both through ``train.py``), shared by the task and evaluation tests."""

from __future__ import annotations

import json
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, TINY_INSTRUCT, preference_records

GENERATION = ("stage.generation.limit=2", "stage.generation.max_new_tokens=4")


@dataclass(frozen=True)
class Chain:
    data: Path
    instruct: Path
    dpo: Path

    @property
    def start(self) -> Path:
        return self.instruct / "checkpoints" / "last.ckpt"


def train(*args: str) -> None:
    """``python train.py <args>`` in this process (no new interpreter's imports); it must
    succeed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py", *args])
        try:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        except SystemExit as exit_:
            assert not exit_.code, f"train.py {' '.join(args)} exited with {exit_.code}"


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """32 pairs (27 train, 3 test, 2 val); phi3 prompts, so the style must come from the
    instruct checkpoint; DPO at a high learning rate for 2 epochs of 6 steps."""
    folder = tmp_path_factory.mktemp("dpo-chain")
    data = folder / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in preference_records(32)), encoding="utf-8")
    common = ("logger=csv", "trainer.log_every_n_steps=1", *GENERATION)
    instruct = folder / "instruct"
    train(
        *TINY_INSTRUCT,
        f"data.path={data}",
        "test_after_fit=false",
        *common,
        f"hydra.run.dir={instruct}",
    )
    dpo = folder / "dpo"
    train(
        "stage=dpo",
        "model=gpt2-tiny",
        f"init_from={instruct / 'checkpoints' / 'last.ckpt'}",
        "data=preference_file",
        f"data.path={data}",
        "data.batch_size=4",
        "optim.lr=1e-3",
        "trainer.max_epochs=2",
        "stage.sample.count=1",
        "stage.sample.max_new_tokens=3",
        *common,
        f"hydra.run.dir={dpo}",
    )
    return Chain(data, instruct, dpo)
