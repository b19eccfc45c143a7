"""Write a checkpoint as a diffusers pipeline folder: python export.py ckpt_path=... out=<folder> [use_ema=false]."""

import hydra

from ddpm.cli.app import run
from ddpm.cli.export import main as export_main


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg):
    return export_main(cfg)


if __name__ == "__main__":
    run(main)  # one sentence and exit code 2 for a command line Hydra cannot compose
