"""Evaluate a checkpoint: `python evaluate.py stage=pretrain ckpt_path=outputs/.../last.ckpt`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from llmprep.evaluation.report import run_evaluation

    run_evaluation(cfg)


if __name__ == "__main__":
    main()
