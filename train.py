"""Train a GPT: `python train.py stage=pretrain model=gpt2-small` (see conf/train.yaml)."""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from llmprep.errors import report_user_errors
    from llmprep.run import train

    return report_user_errors(lambda: train(cfg), logging.getLogger("llmprep"))


if __name__ == "__main__":
    from llmprep.resume import prepare_command

    prepare_command("train", Path(__file__).resolve().parent / "conf")
    main()
