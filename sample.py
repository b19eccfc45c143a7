"""Draw samples from a checkpoint: python sample.py ckpt_path=... [sampler=ddim sampler.steps=50] [n=64]."""

import hydra

from ddpm.cli.app import run
from ddpm.cli.sample import main as sample_main


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg):
    return sample_main(cfg)


if __name__ == "__main__":
    run(main)  # one sentence and exit code 2 for a command line Hydra cannot compose
