"""Train a DDPM: python train.py [schedule=cosine] [trainer.devices=4] [experiment=ddpm_cifar10] ... (see README)."""

import hydra

from ddpm.cli.app import run
from ddpm.cli.train import main as train_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    return train_main(cfg)


if __name__ == "__main__":
    run(main)  # one sentence and exit code 2 for a command line Hydra cannot compose
