"""Evaluate a checkpoint: `python evaluate.py stage=pretrain ckpt_path=outputs/.../last.ckpt`."""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from llmprep.errors import report_user_errors
    from llmprep.run import run_evaluation

    report_user_errors(lambda: run_evaluation(cfg), logging.getLogger("llmprep"))


if __name__ == "__main__":
    from llmprep.resume import prepare_command

    prepare_command("evaluate", Path(__file__).resolve().parent / "conf")
    main()
