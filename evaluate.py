"""Evaluate a checkpoint: python evaluate.py ckpt_path=... -> FID (N, sampler) and NLL bits/dim in metrics.json."""

import hydra

from ddpm.cli.app import run
from ddpm.cli.evaluate import main as evaluate_main


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg):
    return evaluate_main(cfg)


if __name__ == "__main__":
    run(main)  # one sentence and exit code 2 for a command line Hydra cannot compose
