"""The project's configs as data: the OmegaConf resolvers conf/ uses (registered on import), and composing a
config of conf/ in-process, without a Hydra run (for benchmarks, notebooks and tests)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from ddpm import schema

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"  # conf/ of a source checkout (editable install)


def register_resolvers() -> None:
    """${floordiv:a,b}: integer division, e.g. the lowest UNet resolution ${floordiv:${data.image_size},4}."""
    OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)


register_resolvers()
schema.register()  # train_schema, sample_schema, evaluate_schema: the types of every setting


def compose_config(
    config_dir: str | Path = CONFIG_DIR,
    name: str = "train",
    overrides: list[str] | tuple[str, ...] = (),
    output_dir: str | Path | None = None,
) -> DictConfig:
    """`python <name>.py <overrides>`'s config; paths.root_dir is config_dir's parent, paths.output_dir `output_dir`.
    Inside a running Hydra app (whose search path is conf/) the app's own Hydra composes it."""
    config_dir = Path(config_dir).resolve()
    paths = [f"paths.root_dir={config_dir.parent}", f"paths.output_dir={output_dir or tempfile.gettempdir()}"]
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=[*paths, *overrides])
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(name, overrides=[*paths, *overrides])
