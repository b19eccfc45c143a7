"""The LightningDataModule: a train split and a held-out split of images normalised to [-1, 1]."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ddpm.data.sources import build_datasets, check_source


class ImageDataModule(L.LightningDataModule):
    """Images from one source (see `ddpm.data.sources`), batched for training and held-out evaluation.

    `batch_size` is per device: the global batch is batch_size * devices * num_nodes * accumulate_grad_batches.
    """

    def __init__(
        self,
        source: str = "mnist5k",
        root: str = "data",
        image_size: int = 28,
        channels: int = 1,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        hflip: bool = False,
        download: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.source, self.root = source, root
        self.image_size, self.channels = image_size, channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.hflip, self.download = hflip, download
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def check(self) -> None:
        """Raise ConfigError now, before a trainer or logger exists, if the data cannot be loaded."""
        check_source(self.source, self.root, self.channels, self.download)

    def prepare_data(self) -> None:
        if self.download and self.source in ("mnist", "fashion_mnist", "cifar10"):
            build_datasets(self.source, self.root, self.image_size, self.channels, False, True, 0.5, 0)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = build_datasets(
                self.source,
                self.root,
                self.image_size,
                self.channels,
                self.hflip,
                self.download,
                self.val_fraction,
                self.split_seed,
            )

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
