"""FID on the real Inception weights: agreement with torch-fidelity, FID(x, x) = 0, quantisation, caching."""

import pytest
import torch
import torch_fidelity

from ddpm.data import load_mnist5k
from ddpm.errors import ConfigError
from ddpm.metrics import (
    fid_images,
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
    assert ours == pytest.approx(theirs, rel=1e-3)
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
