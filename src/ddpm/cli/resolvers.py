"""OmegaConf resolvers used by the configs in conf/ (registered on import)."""

from omegaconf import OmegaConf


def register() -> None:
    # ${floordiv:a,b}: integer division, e.g. the lowest UNet resolution ${floordiv:${data.image_size},4}
    OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)


register()
