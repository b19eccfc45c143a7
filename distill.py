"""Distil a trained model into a few-step student: python distill.py ckpt_path=<teacher> [method.student_steps=4] ..."""

import hydra

from ddpm.cli.app import run
from ddpm.cli.distill import main as distill_main


@hydra.main(version_base="1.3", config_path="conf", config_name="distill")
def main(cfg):
    return distill_main(cfg)


if __name__ == "__main__":
    run(main)  # one sentence and exit code 2 for a command line Hydra cannot compose
