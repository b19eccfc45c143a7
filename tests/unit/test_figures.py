import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule
from ddpm.training.figures import forward_process_frames, schedule_figure


def test_forward_process_frames_are_the_closed_form_at_t_0_to_T():
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    x0 = torch.rand(1, 8, 8) * 2 - 1
    frames = forward_process_frames(d, x0, frames=9, seed=3)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    assert frames.shape == (9, 1, 8, 8) and torch.equal(frames[0], x0)
    for k, t in ((1, 124), (4, 499), (8, 999)):
        ab = d.alphas_cumprod[t].float()
        torch.testing.assert_close(frames[k], ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    assert frames[-1].std() > 0.5 and (frames[-1] - eps).abs().max() < 0.01  # x_T is almost pure noise


def test_snr_and_the_schedule_figure(tmp_path):
    d = GaussianDiffusion(make_beta_schedule("cosine", 100))
    torch.testing.assert_close(d.snr, d.sqrt_alphas_cumprod**2 / d.sqrt_one_minus_alphas_cumprod**2)
    assert bool((d.snr[1:] < d.snr[:-1]).all())  # the signal-to-noise ratio falls monotonically
    path = schedule_figure(d, tmp_path / "s.png", title="cosine")
    assert path.stat().st_size > 5000
