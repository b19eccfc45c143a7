"""Images normalised to [-1, 1] with a train and a held-out split."""

from ddpm.data.datamodule import ImageDataModule
from ddpm.data.sources import SOURCES, UInt8Images, build_datasets, check_source, load_mnist5k

__all__ = ["SOURCES", "ImageDataModule", "UInt8Images", "build_datasets", "check_source", "load_mnist5k"]
