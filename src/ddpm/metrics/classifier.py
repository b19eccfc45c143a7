"""Class accuracy of generated images: a small CNN trained once on the training split, cached by the content of that
split, and judged on the held-out split (its own accuracy is reported beside the accuracy of the samples)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)
VERSION = 1  # bump when the architecture or the training recipe changes: old cache files are then not reused


class SmallClassifier(nn.Module):
    """Three 3x3 convolutions (32, 64, 128 channels; the last two stride 2) with BatchNorm and ReLU, average pooling
    to 4x4 (the layout of the digit is kept) and a linear layer."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.features = nn.Sequential(block(channels, 32, 1), block(32, 64, 2), block(64, 128, 2))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(128 * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: images in [-1, 1], [B, C, H, W] -> logits [B, num_classes]."""
        return self.head(self.pool(self.features(x)).flatten(1))


def labelled_tensors(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """All images of a dataset of this project (float [-1, 1]) and its labels (`dataset.labels`)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError("class accuracy needs labelled data")
    images = [b[0] if isinstance(b, (list, tuple)) else b for b in DataLoader(dataset, batch_size=500)]
    return torch.cat(images), torch.as_tensor(labels, dtype=torch.long)


def shifted(x: Tensor, generator: torch.Generator, pad: int = 2) -> Tensor:
    """Each image shifted by up to `pad` pixels in each direction (padding with the background -1)."""
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    h, w = x.shape[-2:]
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + h, dx : dx + w]


def fit_classifier(
    images: Tensor, labels: Tensor, num_classes: int, epochs: int = 20, batch_size: int = 128, seed: int = 0
) -> SmallClassifier:
    """Adam (lr 2e-3, cosine to 0) on shifted copies of the images; deterministic given seed."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallClassifier(images.shape[1], num_classes)
    steps = epochs * (len(images) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for k in range(len(images) // batch_size):
            idx = order[k * batch_size : (k + 1) * batch_size]
            loss = F.cross_entropy(model(shifted(images[idx], g)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """The predicted class of each image (model-space images, [-1, 1])."""
    device = next(model.parameters()).device
    return torch.cat(
        [
            model(images[i : i + batch_size].to(device).float()).argmax(1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    return float((predict(model, images) == labels.cpu()).float().mean())


def load_or_train_classifier(
    datamodule, num_classes: int, cache_dir: str | Path, epochs: int = 20
) -> tuple[SmallClassifier, float]:
    """(classifier, its accuracy on the held-out split): trained on the training split once, then read from
    <cache_dir>/classifier-<source>-<content key>.pt, keyed by the training images and labels, epochs and VERSION."""
    images, labels = labelled_tensors(datamodule.train_set)
    digest = hashlib.sha256(f"v{VERSION}-{num_classes}-{epochs}-{tuple(images.shape)}".encode())
    digest.update(images.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    path = Path(cache_dir) / f"classifier-{datamodule.source}-{digest.hexdigest()[:16]}.pt"
    model = SmallClassifier(images.shape[1], num_classes)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), float(saved["held_out_accuracy"])
    log.info(
        "training the class-accuracy classifier on %d images (once; cached in %s)", len(images), path.parent
    )
    model = fit_classifier(images, labels, num_classes, epochs=epochs)
    held_out = accuracy(model, *labelled_tensors(datamodule.val_set))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "held_out_accuracy": held_out}, tmp)
    tmp.replace(path)
    log.info("classifier: %.2f%% on the %d held-out images", 100 * held_out, len(datamodule.val_set))
    return model, held_out
