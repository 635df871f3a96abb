"""Train a GPT: `python train.py stage=pretrain model=gpt2-small` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from llmprep.training.run import train

    return train(cfg)


if __name__ == "__main__":
    main()
