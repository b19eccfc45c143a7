"""Reverse-process samplers sharing one loop: ancestral DDPM and DDIM, over all T steps or a respaced subset.

A sampler with S steps visits timesteps tau_S > ... > tau_1 (a subset of 0..T-1) and calls the network exactly S times.

- DDPM on a subset (Nichol & Dhariwal 2021, sec. 4): the respaced chain has betas
  beta'_i = 1 - alphabar_{tau_i} / alphabar_{tau_{i-1}}, and steps ancestrally with sigma^2 = beta' or betatilde'.
- DDIM (Song et al. 2021, eq. 12): x_{prev} = sqrt(alphabar_prev) x0 + sqrt(1 - alphabar_prev - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - alphabar_prev) / (1 - alphabar_t)) sqrt(1 - alphabar_t / alphabar_prev).
  eta = 1 over all T steps has the per-step variance betatilde_t of DDPM's fixed_small sampler; eta = 0 is deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm.diffusion.process import GaussianDiffusion, Model, Progress

SPACINGS = ("uniform", "quadratic")


def space_timesteps(num_timesteps: int, steps: int, spacing: str = "uniform") -> list[int]:
    """`steps` distinct 0-based timesteps in [0, T-1], ascending, always including 0 and (for uniform) T-1.

    uniform: evenly spaced over [0, T-1]; quadratic: t_i ~ (i / S)^2 (T - 1), denser near t = 0 (DDIM paper, CIFAR-10).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampler steps must be between 1 and T={num_timesteps}, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    if steps == num_timesteps:
        return list(range(num_timesteps))
    if spacing == "uniform":
        grid = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64)
    else:
        grid = torch.linspace(0, (num_timesteps * 0.8) ** 0.5, steps, dtype=torch.float64) ** 2
    ts = sorted({int(round(float(v))) for v in grid})
    # rounding can merge neighbours near t = 0; fill with the smallest unused timesteps to keep exactly `steps`
    candidate = 0
    while len(ts) < steps:
        if candidate not in ts:
            ts.append(candidate)
        candidate += 1
    return sorted(ts)


def compiled_network(model: Model, device: torch.device) -> Model:
    """`model` under torch.compile for the sampling loop.

    On CUDA the mode is "reduce-overhead": each network call replays a captured CUDA graph, so the thousand calls of
    a DDPM chain cost no Python or kernel-launch time. Elsewhere it is plain torch.compile (on this project's CPU it
    takes minutes to compile and does not pay; it is there so the GPU path runs, and is tested, everywhere).
    Wrapping the same network again does not compile it again: torch caches the compiled code of its forward.
    """
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)


class RespacedModel:
    """The network seen from a respaced chain: index i of the chain's S steps is the original timestep
    `timesteps[i]`, which is what the network was trained on (improved-diffusion's `_WrappedModel`)."""

    def __init__(self, model: Model, timesteps: list[int]) -> None:
        self.model = model
        self.timestep_map = torch.tensor(timesteps, dtype=torch.long)
        self._on_device: dict[torch.device, Tensor] = {}

    def __call__(self, x: Tensor, index: Tensor) -> Tensor:
        table = self._on_device.get(index.device)
        if table is None:
            table = self._on_device[index.device] = self.timestep_map.to(index.device)
        return self.model(x, table[index])


class Sampler:
    """Draws x_0 ~ p_theta by running the reverse chain over `timesteps` (all T by default).

    With `compile=True` the network runs under torch.compile (CUDA graphs on a GPU, see `compiled_network`);
    the update rules stay eager: they are a few element-wise operations on precomputed coefficients.
    """

    name = "sampler"

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int | None = None,
        spacing: str = "uniform",
        compile: bool = False,
    ) -> None:
        self.diffusion = diffusion
        self.compile = compile
        self.steps = steps or diffusion.num_timesteps
        self.timesteps = space_timesteps(diffusion.num_timesteps, self.steps, spacing)
        ac = diffusion.alphas_cumprod[self.timesteps]
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = torch.cat([ac.new_ones(1), ac[:-1]])

    @property
    def label(self) -> str:
        """Short name for metric keys, e.g. ddim50 or ddpm1000."""
        return f"{self.name}{self.steps}"

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """x_T ~ N(0, I) (or `noise`) -> x_0, one network call per timestep. Returns images in [-1, 1] (roughly).

        `progress(iterable, description)` wraps the loop over steps to report progress (e.g. ddpm.progress.progress_bar).
        """
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        cuda_graphs = self.compile and x.device.type == "cuda"
        if self.compile:
            model = compiled_network(model, x.device)
        steps = range(len(self.timesteps) - 1, -1, -1)
        for i in progress(steps, f"sampling ({self.label})") if progress else steps:
            if cuda_graphs:  # the previous call's output is consumed: its graph memory may be reused
                torch.compiler.cudagraph_mark_step_begin()
            t = torch.full((x.shape[0],), self.timesteps[i], device=x.device, dtype=torch.long)
            x = self.step(model, x, i, t, generator)
        return x


class DDPMSampler(Sampler):
    """Ancestral sampling (Algorithm 2 of Ho et al.) on the respaced chain; identical to p_sample_loop when S = T.

    The chain is a GaussianDiffusion of its own over S steps; the network sees the original timesteps through
    `RespacedModel`."""

    name = "ddpm"

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int | None = None,
        spacing: str = "uniform",
        var_type: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(diffusion, steps, spacing, compile)
        var_type = var_type or diffusion.var_type
        if self.steps == diffusion.num_timesteps and var_type == diffusion.var_type:
            self.chain = diffusion  # nothing respaced: the chain is the diffusion itself
            return
        betas = 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev
        self.chain = GaussianDiffusion(
            betas, objective=diffusion.objective, var_type=var_type, clip_denoised=diffusion.clip_denoised
        )

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        index = torch.full_like(
            t, i
        )  # the chain's own step i; RespacedModel gives the network timesteps[i] = t
        return self.chain.p_sample(RespacedModel(model, self.timesteps), x, index, generator=generator)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) with stochasticity eta over S respaced steps."""

    name = "ddim"

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int | None = 50,
        spacing: str = "uniform",
        eta: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__(diffusion, steps, spacing, compile)
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = eta
        ac, ac_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sigmas = eta * ((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev)).sqrt()
        self.dir_coefs = (1 - ac_prev - self.sigmas**2).clamp(min=0).sqrt()

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        x0, eps = self.diffusion.predict_x0_and_eps(x, t, model(x, t))
        out = float(self.alphas_cumprod_prev[i].sqrt()) * x0 + float(self.dir_coefs[i]) * eps
        sigma = float(self.sigmas[i])
        if sigma > 0:
            out = out + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return out


SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(diffusion: GaussianDiffusion, name: str = "ddim", **kwargs) -> Sampler:
    """The sampler `name` with its keyword arguments. A sampler node of conf/sampler/*.yaml (`name` and the
    arguments) is exactly what this takes: `make_sampler(diffusion, **node)`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](diffusion, **kwargs)


def p_sample_loop(diffusion: GaussianDiffusion, model: Model, shape: tuple[int, ...], **kwargs) -> Tensor:
    """Run the reverse chain from x_T ~ N(0, I) down to x_0 over all T steps (Algorithm 2 of Ho et al.):
    x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), no noise at t = 1. Keyword arguments (noise, generator,
    device, progress) are those of `Sampler.sample`, the one loop of every sampler."""
    return DDPMSampler(diffusion).sample(model, shape, **kwargs)
