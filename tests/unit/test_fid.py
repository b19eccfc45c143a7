"""FID on the real Inception weights: agreement with torch-fidelity, FID(x, x) = 0, quantisation, caching."""

import pytest
import torch
import torch_fidelity

from ddpm.data import load_mnist5k
from ddpm.errors import ConfigError
from ddpm.images import to_rgb_uint8 as fid_images
from ddpm.metrics import (
    fid_key,
    load_or_compute_reference,
    make_fid,
    resolve_weights,
    set_reference,
)


@pytest.fixture(scope="module")
def digits():
    images, _ = load_mnist5k()
    return images[:100].float() / 127.5 - 1, images[2500:2600].float() / 127.5 - 1


class UInt8Set(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = fid_images(x)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


@pytest.mark.slow  # kept out of the default suite's 15 minutes; CI runs it (make test-slow)
def test_fid_equals_torch_fidelity(fid_weights, digits):
    real, fake = digits
    metric = make_fid(fid_weights)
    metric.update(fid_images(real), real=True)
    metric.update(fid_images(fake), real=False)
    ours = metric.compute().item()
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Set(fake),
        input2=UInt8Set(real),
        fid=True,
        feature_extractor_weights_path=fid_weights,
        cuda=False,
        verbose=False,
        save_cpu_ram=True,
    )["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert ours > 1.0

    # FID(x, x) ~ 0: the same images as reference and as samples (reusing the cached real statistics)
    metric.reset()  # keeps the real features (reset_real_features=False)
    metric.update(fid_images(real), real=False)
    assert abs(metric.compute().item()) < 1e-2


def test_fid_images_quantise_like_a_png():
    x = torch.tensor([-1.0, -0.99, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6)
    u8 = fid_images(x)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 1, 6)
    # x01 = (x + 1) / 2; PNG quantisation is floor(255 x01 + 0.5): 0.005 * 255 = 1.275 -> 1; 0.5 * 255 = 127.5 -> 128
    assert u8[0, 0, 0].tolist() == [0, 1, 128, 191, 255, 255]


def test_fid_key_names_n_and_sampler():
    assert fid_key(1000, "ddim50") == "fid_1k_ddim50"
    assert fid_key(50000, "ddpm1000") == "fid_50k_ddpm1000"
    assert fid_key(256, "ddim20") == "fid_256_ddim20"


def test_reference_statistics_are_cached(fid_weights, digits, tmp_path):
    real, _ = digits
    metric = make_fid(fid_weights)
    path = tmp_path / "ref.pt"
    stats = load_or_compute_reference(metric, real[:8], path)
    assert path.is_file() and int(stats["real_features_num_samples"]) == 8
    other = make_fid(fid_weights)
    # a second load comes from the file: zero images given, same statistics
    again = load_or_compute_reference(other, real[:0], path)
    assert all(torch.equal(stats[k], again[k]) for k in stats)
    set_reference(other, None)
    assert int(other.real_features_num_samples) == 0


def test_missing_weights_file_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="do not exist: point fid weights_path or .DDPM_FID_WEIGHTS"):
        resolve_weights(str(tmp_path / "nope.pth"))


def _digit_folder(root, digits, labels, wanted, n):
    """n PNG files of MNIST-5k digits whose label is in `wanted`."""
    from PIL import Image

    root.mkdir(parents=True)
    chosen = [i for i in range(len(labels)) if int(labels[i]) in wanted][:n]
    for k, i in enumerate(chosen):
        Image.fromarray(digits[i, 0].numpy()).save(root / f"{k:03d}.png")
    return root


def test_reference_cache_is_keyed_by_the_images_not_the_folder_size(fid_weights, tmp_path):
    """Two folders of 20 held-out images of the same size and count (digits 0-4 against 5-9): the same samples
    get different FIDs, and each folder's statistics get their own cache file."""
    from ddpm.data import ImageDataModule
    from ddpm.metrics import install_reference

    digits, labels = load_mnist5k()
    samples = digits[:16].float() / 127.5 - 1
    cache = tmp_path / "cache"
    fids, n_files = [], []
    for name, wanted in (("low", range(5)), ("high", range(5, 10))):
        folder = _digit_folder(tmp_path / name, digits, labels, set(wanted), 40)
        dm = ImageDataModule(
            source="image_folder", root=str(folder), image_size=28, channels=1, val_fraction=0.5, split_seed=0
        )
        dm.setup("validate")
        metric = make_fid(fid_weights)
        assert install_reference(metric, dm, str(cache), None, fid_weights) == 20
        metric.update(fid_images(samples), real=False)
        fids.append(metric.compute().item())
        n_files.append(len(list(cache.glob("*.pt"))))
    assert n_files == [1, 2]  # the second folder did not reuse the first one's statistics
    assert abs(fids[0] - fids[1]) > 1.0

    # the same folder again reuses the cached statistics
    again = ImageDataModule(source="image_folder", root=str(tmp_path / "low"), image_size=28, channels=1,
                            val_fraction=0.5, split_seed=0)  # fmt: skip
    again.setup("validate")
    metric = make_fid(fid_weights)
    install_reference(metric, again, str(cache), None, fid_weights)
    assert len(list(cache.glob("*.pt"))) == 2


@pytest.mark.slow  # kept out of the default suite's 15 minutes; CI runs it (make test-slow)
def test_kid_equals_torch_fidelity_from_the_same_inception_pass(fid_weights, digits):
    """KID with every subset the whole set (subset size = N): no sampling difference, so the values must agree."""
    real, fake = digits
    metric = make_fid(fid_weights)
    metric.kid_subsets, metric.kid_subset_size = 3, 100
    from ddpm.metrics.fid import compute_reference

    compute_reference(metric, real)
    metric.update(fid_images(fake), real=False)
    ours, ours_std = metric.kid()
    fid = metric.compute().item()  # the same pass gives FID
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Set(fake),
        input2=UInt8Set(real),
        kid=True,
        kid_subset_size=100,
        kid_subsets=3,
        feature_extractor_weights_path=fid_weights,
        cuda=False,
        verbose=False,
        save_cpu_ram=True,
    )
    assert ours == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert ours > 0.01 and ours_std is None  # every subset is the same set: no spread to report
    # where torch-fidelity reports 0 up to float32 noise
    assert theirs["kernel_inception_distance_std"] < 1e-5 * ours
    assert fid > 1.0


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    """Features of two independent samples of one Gaussian: KID averages to ~0 (it can be negative), while two
    different Gaussians give a clearly positive value; the subsets' std is reported."""
    from ddpm.metrics import kid_from_features

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    same, same_std = kid_from_features(a, b, subsets=50, subset_size=200)
    shifted, _ = kid_from_features(a, b + 0.5, subsets=50, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3 and same_std > 0
    assert shifted > 10 * (abs(same) + same_std)


def test_kid_reports_no_spread_when_every_subset_is_all_the_images():
    """N_real = N_fake <= subset size: every subset is both whole sets, so a std over subsets would be a false 0."""
    from ddpm.metrics import kid_from_features
    from ddpm.metrics.kid import format_kid, polynomial_mmd2

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g) + 0.3
    value, std = kid_from_features(a, b, subsets=20, subset_size=1000)
    assert std is None and value == pytest.approx(polynomial_mmd2(b.double(), a.double()), rel=1e-12)
    assert format_kid(value, std).endswith("(one subset: all images)")
    _, std_half = kid_from_features(a, b, subsets=20, subset_size=25)  # real subsets: a real spread
    assert std_half is not None and std_half > 0


def test_local_weights_never_point_at_a_download(tmp_path, monkeypatch):
    """The default run's end-of-training FID only runs on weights already on disk: $DDPM_FID_WEIGHTS, else the
    official file in the torch hub cache, else None (and then nothing is downloaded)."""
    from ddpm.metrics import local_weights
    from ddpm.metrics.fid import OFFICIAL_WEIGHTS

    monkeypatch.delenv("DDPM_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert local_weights() is None
    cached = tmp_path / "hub" / "checkpoints" / OFFICIAL_WEIGHTS
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert local_weights() == str(cached)
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"y")
    monkeypatch.setenv("DDPM_FID_WEIGHTS", str(mine))
    assert local_weights() == str(mine)


def test_the_class_accuracy_classifier_scores_images_against_their_own_labels():
    """A classifier trained on the mnist5k training split is right on most held-out digits when each image meets its
    own label, and near chance when the labels are shifted by one image: a misalignment cannot pass for accuracy."""
    from ddpm.data import ImageDataModule
    from ddpm.metrics.classifier import accuracy, fit_classifier, labelled_tensors

    dm = ImageDataModule(source="mnist5k", labels=True)
    dm.setup("fit")
    images, labels = labelled_tensors(dm.train_set)
    # the labels come from the dataset's label array, the images through its loader: the items pair them the same way
    assert all(
        torch.equal(dm.train_set[i][0], images[i]) and dm.train_set[i][1] == labels[i] for i in (0, 7, 4000)
    )
    model = fit_classifier(images, labels, num_classes=10, epochs=2)
    held_images, held_labels = labelled_tensors(dm.val_set)
    assert accuracy(model, held_images, held_labels) > 0.85
    assert accuracy(model, held_images, held_labels.roll(1)) < 0.25
