import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import ImageDataModule, build_datasets, load_mnist5k
from ddpm.errors import ConfigError


def test_embedded_mnist5k_is_read_from_the_installed_package():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))


def test_default_datamodule_splits_and_normalises():
    dm = ImageDataModule()
    dm.setup("fit")
    assert len(dm.train_set) == 4500 and len(dm.val_set) == 500
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (64, 1, 28, 28)
    assert batch.min() >= -1 and batch.max() <= 1 and batch.min() == -1 and batch.max() == 1
    # the split is fixed by split_seed: train and held-out never share an image
    train = dm.train_set.images.flatten(1)
    held = dm.val_set.images.flatten(1)
    assert not (train[:, None, :] == held[None, :, :]).all(-1).any()
    dm2 = ImageDataModule()
    dm2.setup()
    assert torch.equal(dm2.val_set.images, dm.val_set.images)


def test_resize_to_another_image_size():
    train, held = build_datasets("mnist5k", "unused", 32, 1, False, False, 0.1, 0)
    assert train[0].shape == (1, 32, 32)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        sub = tmp_path / ("cats" if i % 2 else "flat")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    dm = ImageDataModule(
        source="image_folder", root=str(tmp_path), image_size=16, channels=3, val_fraction=0.2
    )
    dm.check()
    dm.setup()
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    x = dm.train_set[0]
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_missing_image_folder_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: set data.root to a folder of images"):
        ImageDataModule(source="image_folder", root=str(tmp_path / "nope"), channels=3).check()


def test_torchvision_mnist_missing_files_say_where_to_put_them(tmp_path):
    dm = ImageDataModule(source="mnist", root=str(tmp_path))
    with pytest.raises(
        ConfigError, match="MNIST was not found under .*: put torchvision's MNIST files there"
    ):
        dm.setup()


def test_torchvision_mnist_from_local_raw_files(tmp_path, mnist_raw):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in mnist_raw.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    # download=True only extracts the archives already present (their checksums match): nothing is fetched
    dm = ImageDataModule(source="mnist", root=str(tmp_path), download=True)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) == 60000 and len(dm.val_set) == 10000
    assert dm.val_set[0].shape == (1, 28, 28)


def test_wrong_channel_count_and_unknown_source():
    with pytest.raises(ConfigError, match="grayscale: set data.channels=1"):
        ImageDataModule(channels=3).check()
    with pytest.raises(ConfigError, match="unknown data source 'celeba'"):
        ImageDataModule(source="celeba").check()


def test_mnist5k_labels_follow_their_images_through_the_split():
    images, labels = load_mnist5k()
    dm = ImageDataModule(labels=True)
    dm.setup()
    assert dm.num_classes == 10
    x, y = dm.val_set[7]
    # find the held-out image among the originals: its label must be the original's
    u8 = torch.round((x + 1) * 127.5).to(torch.uint8)
    (match,) = (images == u8).flatten(1).all(1).nonzero().flatten().tolist()[:1]
    assert int(y) == int(labels[match])
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, list) and batch[0].shape == (64, 1, 28, 28) and batch[1].dtype == torch.long
    # without labels=True the same data yields images only, as before
    plain = ImageDataModule()
    plain.setup()
    assert torch.is_tensor(plain.val_set[7]) and torch.equal(plain.val_set[7], x) and plain.num_classes == 10


def test_image_folder_classes_are_its_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        sub = tmp_path / ["ants", "bees", "cats"][i % 3]
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    dm = ImageDataModule(
        source="image_folder", root=str(tmp_path), image_size=8, channels=3, val_fraction=0.25, labels=True
    )
    dm.setup()
    assert dm.num_classes == 3
    for ds in (dm.train_set, dm.val_set):
        for k in range(len(ds)):
            _, y = ds[k]
            name = ds.dataset.files[ds.indices[k]].parent.name
            assert ["ants", "bees", "cats"][int(y)] == name


def test_a_flat_image_folder_has_no_labels(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    dm = ImageDataModule(
        source="image_folder", root=str(tmp_path), image_size=8, channels=3, val_fraction=0.25
    )
    dm.setup()
    assert dm.num_classes is None
    with pytest.raises(ConfigError, match="have no classes .*condition=none"):
        ImageDataModule(
            source="image_folder", root=str(tmp_path), image_size=8, channels=3, labels=True
        ).setup()


def test_validation_loss_uses_a_fixed_subset_and_the_reference_the_whole_split():
    """val_loss_n held-out images (the first ones, the same every validation) for the loss; the whole held-out split
    stays the FID / KID reference (val_set) and the test loader; null: the whole split for the loss too."""
    dm = ImageDataModule(val_loss_n=120, eval_batch_size=50)
    dm.setup("fit")
    first = torch.cat(list(dm.val_dataloader()))
    again = torch.cat(list(dm.val_dataloader()))
    assert len(first) == 120 and torch.equal(first, again)
    assert torch.equal(first, torch.stack([dm.val_set[i] for i in range(120)]))
    assert len(dm.val_set) == 500 and len(torch.cat(list(dm.test_dataloader()))) == 500
    whole = ImageDataModule(val_loss_n=None, eval_batch_size=50)
    whole.setup("fit")
    assert len(torch.cat(list(whole.val_dataloader()))) == 500
    with pytest.raises(ConfigError, match="data.val_loss_n must be at least 1"):
        ImageDataModule(val_loss_n=0)


@pytest.mark.parametrize("source", ["mnist5k", "image_folder"])
def test_the_train_reference_is_the_training_split_never_flipped(tmp_path, source):
    """FID against the training set (the paper's CIFAR-10 protocol) sees each training image as it is: the random
    flips of training never reach the reference statistics."""
    root = tmp_path
    if source == "image_folder":
        rng = np.random.default_rng(0)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    dm = ImageDataModule(
        source=source, root=str(root), image_size=8, channels=1, hflip=True, val_fraction=0.25
    )
    dm.setup("fit")
    reference = dm.reference_set("train")
    assert len(reference) == len(dm.train_set) and dm.reference_set("held_out") is dm.val_set
    torch.manual_seed(0)
    draws = torch.stack([dm.train_set[0] for _ in range(40)])
    flipped = [not torch.equal(d, draws[0]) for d in draws]
    assert any(flipped)  # training flips (the image is not symmetric)...
    assert all(torch.equal(reference[0], reference[0]) for _ in range(10))  # ...the reference never does
    assert any(torch.equal(reference[0], d) for d in draws)  # and it is the training image itself
    with pytest.raises(ValueError, match="unknown reference split 'test'"):
        dm.reference_set("test")
