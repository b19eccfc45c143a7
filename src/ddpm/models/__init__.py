"""The noise-prediction network eps_theta(x_t, t). Plain PyTorch: no Lightning, no Hydra."""

from ddpm.models.unet import UNet, check_unet_config

__all__ = ["UNet", "check_unet_config"]
