"""What a trained model does beyond sampling from noise, with any sampler's chain: inpainting (RePaint, Lugmayr et al.
2022), image-to-image by partial noising (SDEdit, Meng et al. 2022) and interpolation through the noise space.

A sampler with S steps visits timesteps tau_{S-1} > ... > tau_0; `sampler.step(model, x, i, ...)` takes x from level
i + 1 (x at tau_i) to level i (x at tau_{i-1}, or x_0 at level 0). alphabar at level k is the sampler's
alphas_cumprod_prev[k] (1 at level 0), at level k + 1 its alphas_cumprod[k].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpm.diffusion.process import GaussianDiffusion, Model, Progress
from ddpm.diffusion.samplers import Sampler


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def repaint_levels(steps: int, jump_length: int = 1, jump_n_sample: int = 1) -> list[int]:
    """The levels RePaint's chain visits, from S (pure noise) down to 0: one level down per reverse step, and every
    `jump_length` levels, `jump_n_sample - 1` times, back up `jump_length` levels (the resampling of Lugmayr et al.,
    their `get_schedule_jump`). jump_n_sample=1: straight down, S reverse steps."""
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(
            f"jump_length and jump_n_sample must be at least 1, got {jump_length} and {jump_n_sample}"
        )
    jumps = {k: jump_n_sample - 1 for k in range(jump_length, steps, jump_length)}
    level, levels = steps, [steps]
    while level > 0:
        level -= 1
        levels.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                levels.append(level)
    return levels


@torch.no_grad()
def inpaint(
    sampler: Sampler,
    model: Model,
    x0: Tensor,
    mask: Tensor,
    *,
    generator: torch.Generator | None = None,
    jump_length: int = 1,
    jump_n_sample: int = 1,
    progress: Progress | None = None,
) -> Tensor:
    """Fill the unknown pixels of x0 (mask = 1 where known, 0 where to fill; broadcast against x0) with the sampler's
    chain from pure noise, replacing the known pixels after every reverse step by x0 noised to that level,
    x_known = sqrt(alphabar) x0 + sqrt(1 - alphabar) eps (RePaint's eq. 8). With jump_n_sample > 1 the chain goes back
    up `jump_length` levels now and then, x_up = sqrt(alphabar_up / alphabar) x + sqrt(1 - alphabar_up / alphabar) z,
    so that the filled pixels harmonise with the known ones (RePaint's resampling; a multistep solver restarts its
    history after each jump). The known pixels of the result are x0's exactly."""
    mask = mask.to(device=x0.device, dtype=x0.dtype).expand_as(x0)
    levels = repaint_levels(len(sampler.timesteps), jump_length, jump_n_sample)
    x = _randn(x0, generator)
    sampler.start()
    pairs = list(zip(levels, levels[1:], strict=False))
    for here, there in progress(pairs, f"inpainting ({sampler.label})") if progress else pairs:
        if there < here:  # one reverse step, then the known pixels at the new level
            i = here - 1
            t = torch.full((x.shape[0],), sampler.timesteps[i], device=x.device, dtype=torch.long)
            x = sampler.step(model, x, i, t, generator)
            ab = float(sampler.alphas_cumprod_prev[i])
            known = x0 if there == 0 else math.sqrt(ab) * x0 + math.sqrt(1 - ab) * _randn(x0, generator)
            x = mask * known + (1 - mask) * x
        else:  # one level back up the forward process
            ratio = float(sampler.alphas_cumprod[here] / sampler.alphas_cumprod_prev[here])
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * _randn(x, generator)
            sampler.start()
    return mask * x0 + (1 - mask) * x


@torch.no_grad()
def img2img(
    sampler: Sampler,
    model: Model,
    x0: Tensor,
    strength: float,
    *,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """SDEdit: noise x0 to the level round(strength * S) of the sampler's chain, x = sqrt(alphabar) x0 +
    sqrt(1 - alphabar) eps, and run the chain's remaining steps from there. strength = 0 returns x0; strength = 1
    starts from pure noise, x ~ N(0, I), and is ordinary sampling (the same draws from `generator`)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    steps = len(sampler.timesteps)
    level = round(strength * steps)
    if level == 0:
        return x0.clone()
    eps = _randn(x0, generator)
    if level == steps:
        noisy = eps
    else:
        ab = float(sampler.alphas_cumprod[level - 1])
        noisy = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    return sampler.sample(
        model, x0.shape, noise=noisy, generator=generator, progress=progress, start=level - 1
    )


@torch.no_grad()
def ddim_invert(diffusion: GaussianDiffusion, model: Model, x0: Tensor, timesteps: list[int]) -> Tensor:
    """x0 -> x_T by the deterministic DDIM step run forwards (the probability-flow ODE of Song et al. 2021, their
    eq. 13 backwards): from level k (x at tau_{k-1}; x_0 at level 0, asked at tau_0) to k + 1,
    x_next = sqrt(alphabar(tau_k)) x0_hat + sqrt(1 - alphabar(tau_k)) eps_hat with the network's x0_hat and eps_hat
    at level k (x0_hat = x_0 itself at level 0).
    `timesteps` ascending, as a sampler's."""
    x = x0
    for k, t in enumerate(timesteps):
        here = torch.full((x.shape[0],), timesteps[max(k - 1, 0)], device=x.device, dtype=torch.long)
        x0_hat, eps = diffusion.predict_x0_and_eps(x, here, model(x, here), clip_denoised=False)
        if k == 0:  # the data level: x is x_0 itself, the network only supplies the direction eps_hat
            x0_hat = x
        ab_next = float(diffusion.alphas_cumprod[t])
        x = math.sqrt(ab_next) * x0_hat + math.sqrt(1 - ab_next) * eps
    return x


def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation between two noise tensors of the same shape [B, ...] (per example):
    sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b, theta the angle between them."""
    if weight in (0.0, 1.0):  # the ends exactly
        return (a if weight == 0.0 else b).clone()
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.acos(cos.clamp(-1.0, 1.0)).view(-1, *([1] * (a.ndim - 1)))
    if float(theta.abs().max()) < 1e-6:
        return (1 - weight) * a + weight * b
    return (torch.sin((1 - weight) * theta) * a + torch.sin(weight * theta) * b) / torch.sin(theta)


@torch.no_grad()
def interpolate(
    sampler: Sampler, model: Model, x_a: Tensor, x_b: Tensor, k: int, encoder: Model | None = None
) -> Tensor:
    """k images from x_a to x_b through the noise space: encode both with `ddim_invert` over the sampler's timesteps,
    slerp between the two latents at k evenly spaced weights, decode with the sampler (a DDIM with eta = 0 makes the
    ends x_a and x_b again, up to its discretisation error). x_a, x_b [1, C, H, W] -> [k, C, H, W]. `encoder`: the
    network for the batch of two (default `model`), where a wrapper is made for one batch size (class labels)."""
    if k < 2:
        raise ValueError(f"an interpolation needs k >= 2 images, got {k}")
    latents = ddim_invert(sampler.diffusion, encoder or model, torch.cat([x_a, x_b]), sampler.timesteps)
    return interpolate_noise(sampler, model, latents[:1], latents[1:], k)


@torch.no_grad()
def interpolate_noise(sampler: Sampler, model: Model, z_a: Tensor, z_b: Tensor, k: int) -> Tensor:
    """k images decoded by the sampler from the slerp between two noise tensors x_T [1, C, H, W] (two seeds' starts,
    or two images' DDIM inversions), at k evenly spaced weights, both ends included."""
    if k < 2:
        raise ValueError(f"an interpolation needs k >= 2 images, got {k}")
    path = torch.cat([slerp(z_a, z_b, w) for w in torch.linspace(0, 1, k).tolist()])
    return sampler.sample(model, path.shape, noise=path)
