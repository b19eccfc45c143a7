"""The LightningDataModule: a train split and a held-out split of images normalised to [-1, 1]."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ddpm.data.sources import build_datasets, check_source, num_classes, without_flips
from ddpm.errors import ConfigError

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """Training order: a fresh permutation per epoch drawn from (seed, epoch), dealt out across DDP ranks, and
    resumable mid-epoch.

    Rank r of W takes positions r, r + W, ... of the epoch's permutation (n // W each, so ranks stay in step and
    no image is seen twice in an epoch). `resume(epoch, start)` makes the next pass over `epoch` begin at its
    `start`-th index, so a run resumed from a mid-epoch checkpoint sees exactly the images it would have seen.
    Lightning calls `set_epoch` before every epoch.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, start: int) -> None:
        self._resume = (epoch, start)

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.rank :: self.world_size][: len(self)]
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        return iter(order[start:].tolist())


class ImageDataModule(L.LightningDataModule):
    """Images from one source (see `ddpm.data.sources`), batched for training and held-out evaluation.

    Batch size: `batch_size` is per device, so the global batch (images per optimizer step) is
    batch_size * devices * num_nodes * accumulate_grad_batches. Set `global_batch_size` instead to keep the global
    batch fixed whatever the number of devices (the paper's 128): each device then takes
    global_batch_size / (devices * num_nodes * accumulate_grad_batches) images, which must divide evenly.

    The training order is reproducible from `split_seed` and resumable mid-epoch: the position in the epoch is
    saved in every checkpoint (`state_dict`) and restored on resume.

    Validation: the held-out loss is computed on the first `val_loss_n` held-out images (a fixed subset, so curves
    compare; None: the whole split). FID and KID use the whole held-out split as their reference.

    Labels: sources with classes (mnist5k, mnist, fashion_mnist, cifar10, an image folder with class subfolders) know
    them (`num_classes`); with `labels=True` batches are (images, labels) instead of images (condition=class).
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
        global_batch_size: int | None = None,
        labels: bool = False,
        val_loss_n: int | None = None,
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
        self.global_batch_size = global_batch_size
        self.labels = labels
        if val_loss_n is not None and val_loss_n < 1:
            raise ConfigError(
                f"data.val_loss_n must be at least 1 (or null: the whole held-out split), got {val_loss_n}"
            )
        self.val_loss_n = val_loss_n
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._resume: dict[str, int] | None = None

    def configure_batch(self, world_size: int, accumulate_grad_batches: int = 1) -> int:
        """Set the per-device batch from `global_batch_size` (if given) for this many processes; returns it."""
        if self.global_batch_size is None:
            return self.batch_size
        shards = world_size * accumulate_grad_batches
        if self.global_batch_size % shards:
            raise ConfigError(
                f"data.global_batch_size={self.global_batch_size} does not split evenly over {world_size} "
                f"process(es) x {accumulate_grad_batches} accumulated batch(es): use a multiple of {shards} or "
                "change trainer.devices / trainer.accumulate_grad_batches"
            )
        self.batch_size = self.global_batch_size // shards
        return self.batch_size

    def check_batches(self, world_size: int) -> None:
        """Refuse a training split too small for one batch per process (batches are whole: nothing would train)."""
        self.setup("fit")
        per_process = len(self.train_set) // world_size
        if per_process < self.batch_size:
            raise ConfigError(
                f"the training split has {len(self.train_set)} images, fewer than one batch of data.batch_size="
                f"{self.batch_size} for each of {world_size} process(es): add images or lower data.batch_size"
            )

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
                self.labels,
            )

    def reference_set(self, split: str = "held_out") -> Dataset:
        """The images FID and KID compare samples with, after `setup`: the held-out split, or the training split
        without its random flips ("train": the paper's protocol for CIFAR-10)."""
        if split == "held_out":
            return self.val_set
        if split == "train":
            return without_flips(self.train_set)
        raise ValueError(f"unknown reference split {split!r}: choose held_out or train")

    @property
    def num_classes(self) -> int | None:
        """How many classes the data has (None: no labels); after `setup`."""
        if self.train_set is None:
            raise RuntimeError("num_classes is known after setup()")
        counts = [num_classes(self.train_set), num_classes(self.val_set)]
        return None if None in counts else max(counts)

    def _loader(
        self, dataset: Dataset, batch_size: int, sampler: Sampler | None, drop_last: bool
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = EpochSampler(len(self.train_set), seed=self.split_seed, rank=rank, world_size=world)
        if self._resume is not None:
            sampler.resume(self._resume["epoch"], self._resume["batches"] * self.batch_size)
            self._resume = None
        return self._loader(self.train_set, self.batch_size, sampler, drop_last=True)

    def state_dict(self) -> dict[str, Any]:
        """The position in the training data: the epoch and how many of its batches were trained on."""
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches": done, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("batch_size") != self.batch_size:
            log.warning(
                "the checkpoint was trained with %s images per device, this run uses %s: the interrupted epoch "
                "starts over instead of resuming at its position",
                state.get("batch_size"),
                self.batch_size,
            )
            return
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def val_dataloader(self) -> DataLoader:
        """The first `val_loss_n` held-out images in order; under DDP each rank takes its share (DistributedSampler,
        no shuffling)."""
        held_out = self.val_set
        if self.val_loss_n is not None and self.val_loss_n < len(held_out):
            held_out = Subset(held_out, range(self.val_loss_n))
        return self._eval_loader(held_out)

    def test_dataloader(self) -> DataLoader:
        """The whole held-out split in order (sharded under DDP like val_dataloader)."""
        return self._eval_loader(self.val_set)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(
                dataset, trainer.world_size, trainer.global_rank, shuffle=False, drop_last=False
            )
        return self._loader(dataset, self.eval_batch_size, sampler, drop_last=False)
