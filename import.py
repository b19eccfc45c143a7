"""Turn a diffusers DDPM pipeline folder into a checkpoint: python import.py source=<folder> out=<file.ckpt>."""

import hydra

from ddpm.cli.app import run
from ddpm.cli.import_pipeline import main as import_main


@hydra.main(version_base="1.3", config_path="conf", config_name="import")
def main(cfg):
    return import_main(cfg)


if __name__ == "__main__":
    run(main)  # one sentence and exit code 2 for a command line Hydra cannot compose
