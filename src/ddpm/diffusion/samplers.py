"""Reverse-process samplers sharing one loop: ancestral DDPM and DDIM, over all T steps or a respaced subset.

A sampler with S steps visits timesteps tau_S > ... > tau_1 (a subset of 0..T-1) and calls the network exactly S times.

- DDPM on a subset (Nichol & Dhariwal 2021, sec. 4): the respaced chain has betas
  beta'_i = 1 - alphabar_{tau_i} / alphabar_{tau_{i-1}}, and steps ancestrally with sigma^2 = beta' or betatilde'
  (a learned variance interpolates between these two of the respaced chain).
- DDIM (Song et al. 2021, eq. 12): x_{prev} = sqrt(alphabar_prev) x0 + sqrt(1 - alphabar_prev - sigma^2) eps + sigma z,
  sigma = eta sqrt((1 - alphabar_prev) / (1 - alphabar_t)) sqrt(1 - alphabar_t / alphabar_prev).
  eta = 1 over all T steps has the per-step variance betatilde_t of DDPM's fixed_small sampler; eta = 0 is deterministic.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpm.diffusion.process import GaussianDiffusion, Model, Progress

SPACINGS = ("uniform", "quadratic", "logsnr", "trailing")


def space_timesteps(
    num_timesteps: int, steps: int, spacing: str = "uniform", alphas_cumprod: Tensor | None = None
) -> list[int]:
    """`steps` distinct 0-based timesteps in [0, T-1], ascending, always including T-1 and (but trailing) 0.

    uniform: evenly spaced over [0, T-1]; quadratic: t_i ~ (i / S)^2 (T - 1), denser near t = 0 (DDIM paper, CIFAR-10);
    logsnr: the timesteps nearest to S values evenly spaced in lambda = log(sqrt(alphabar / (1 - alphabar))) between
    lambda(T-1) and lambda(0) (needs alphas_cumprod); trailing: round(i T / S) - 1, i = 1..S (`trailing_timesteps`:
    the grid of S steps is every other point of 2S's, what progressive distillation halves).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampler steps must be between 1 and T={num_timesteps}, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    if steps == num_timesteps:
        return list(range(num_timesteps))
    if spacing == "trailing":
        return trailing_timesteps(num_timesteps, steps)
    if spacing == "uniform":
        grid = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64)
    elif spacing == "logsnr":
        if alphas_cumprod is None:
            raise ValueError("logsnr spacing needs the schedule's alphas_cumprod")
        lam = half_log_snr(alphas_cumprod.double())  # decreasing in t
        targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
        grid = torch.stack([(lam - v).abs().argmin() for v in targets]).double()
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


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """tau_i = round(i T / S) - 1 for i = 1..S, ascending: S timesteps ending at T - 1, every other one of 2S's
    (tau^S_i = tau^2S_2i), so that a chain of S steps visits only points of the chain of 2S steps."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampler steps must be between 1 and T={num_timesteps}, got {steps}")
    return [round(i * num_timesteps / steps) - 1 for i in range(1, steps + 1)]


def half_log_snr(alphas_cumprod: Tensor) -> Tensor:
    """lambda_t = log(alpha_t / sigma_t) = log(sqrt(alphabar_t / (1 - alphabar_t))), the time variable of DPM-Solver."""
    return 0.5 * (torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod))


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
        self.steps = diffusion.num_timesteps if steps is None else steps
        self.timesteps = space_timesteps(
            diffusion.num_timesteps, self.steps, spacing, diffusion.alphas_cumprod
        )
        ac = diffusion.alphas_cumprod[self.timesteps]
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = torch.cat([ac.new_ones(1), ac[:-1]])

    @property
    def label(self) -> str:
        """Short name for metric keys, e.g. ddim50 or ddpm1000."""
        return f"{self.name}{self.steps}"

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def start(self) -> None:
        """Called before the first step of every chain (multistep solvers forget the previous chain here)."""

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
        start: int | None = None,
    ) -> Tensor:
        """x_T ~ N(0, I) (or `noise`) -> x_0, one network call per timestep. Returns images in [-1, 1] (roughly).

        `progress(iterable, description)` wraps the loop over steps to report progress (e.g. ddpm.progress.progress_bar).
        `start=i` runs only the steps i, ..., 0, from `noise` at timestep timesteps[i] (SDEdit: ddpm.diffusion.editing).
        """
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        cuda_graphs = self.compile and x.device.type == "cuda"
        if self.compile:
            model = compiled_network(model, x.device)
        self.start()
        first = len(self.timesteps) - 1 if start is None else start
        steps = range(first, -1, -1)
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
        self._respaced: RespacedModel | None = None
        if var_type is not None and (var_type == "learned_range") != diffusion.learns_variance:
            raise ValueError(
                f"sampler var_type={var_type} does not fit this model, whose reverse variance is "
                f"{diffusion.var_type}: "
                + (
                    "its network learned the variance; leave the sampler's var_type unset (null)"
                    if diffusion.learns_variance
                    else "its network predicts no variance; use fixed_large or fixed_small, or leave it unset"
                )
            )
        var_type = var_type or diffusion.var_type
        if self.steps == diffusion.num_timesteps and var_type == diffusion.var_type:
            self.chain = diffusion  # nothing respaced: the chain is the diffusion itself
            return
        betas = 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev
        self.chain = GaussianDiffusion(
            betas, objective=diffusion.objective, var_type=var_type, clip_denoised=diffusion.clip_denoised
        )

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        # the chain's own step i; RespacedModel gives the network the original timestep timesteps[i] = t, with one
        # wrapper (and one device copy of the map) per network, not one per step
        index = torch.full_like(t, i)
        if self._respaced is None or self._respaced.model is not model:
            self._respaced = RespacedModel(model, self.timesteps)
        return self.chain.p_sample(self._respaced, x, index, generator=generator)


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


class ODESolver(Sampler):
    """Base of the multistep solvers of the probability-flow ODE in data-prediction form (DPM-Solver++, UniPC).

    In lambda = log(alpha / sigma) (alpha = sqrt(alphabar), sigma = sqrt(1 - alphabar)) the exact solution from s to t
    is x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_theta(x_lambda) dlambda; the solvers
    differ in how they approximate x0_theta over the step from the current and previous network outputs. The chain
    visits tau_S > ... > tau_1 and ends with alphabar = 1 (sigma = 0), where the exact first-order step returns the
    data prediction at tau_1, as DDIM does: S steps, S network calls, no noise drawn. The ODE step into tau_1 (the
    paper's t = 1, where lambda jumps the most: 4.6 at t = 1 against 1.7 at t = 52 on the linear schedule) is first
    order, as DPM-Solver++ and UniPC make their final steps.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int | None = 10,
        spacing: str = "logsnr",
        order: int = 2,
        compile: bool = False,
    ) -> None:
        super().__init__(diffusion, steps, spacing, compile)
        if order not in (1, 2):
            raise ValueError(f"{self.name} order must be 1 or 2, got {order}")
        if order > len(self.timesteps):
            raise ValueError(
                f"{self.name} of order {order} needs at least {order} steps, got steps={len(self.timesteps)}: "
                "use more steps or order=1"
            )
        self.order = order
        ac = self.alphas_cumprod
        self.alpha = ac.sqrt()
        self.sigma = (1 - ac).sqrt()
        self.lam = half_log_snr(ac)
        self.start()

    def start(self) -> None:
        self._history: list[tuple[int, Tensor]] = []  # (index, data prediction), newest last

    def data_prediction(self, model: Model, x: Tensor, t: Tensor) -> Tensor:
        return self.diffusion.predict_x0_and_eps(x, t, model(x, t))[0]

    def multistep_data(self, model: Model, x: Tensor, i: int, t: Tensor) -> Tensor:
        """D, the data prediction the 2M step from index i uses: with h = lambda_{i-1} - lambda_i, r = h_prev / h and
        the data predictions m0 here and m1 at the step before, D = (1 + 1 / (2r)) m0 - m1 / (2r); D = m0 at order 1,
        on the first step (no m1) and on the last two (into tau_1, and to sigma = 0). Records m0 for the next step."""
        m0 = self.data_prediction(model, x, t)
        previous = self._history[-1] if self._history else None
        self._history = [(i, m0)]
        if self.order == 1 or previous is None or i <= 1:
            return m0
        j, m1 = previous
        h = float(self.lam[i - 1] - self.lam[i])
        r = float(self.lam[i] - self.lam[j]) / h
        return (1 + 1 / (2 * r)) * m0 - m1 / (2 * r)

    def first_order(self, x: Tensor, s: int, t: int, m0: Tensor) -> Tensor:
        """DDIM in lambda: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m0, h = lambda_t - lambda_s; the
        final step (t = -1: alphabar = 1) returns m0."""
        if t < 0:
            return m0
        h = float(self.lam[t] - self.lam[s])
        return float(self.sigma[t] / self.sigma[s]) * x - float(self.alpha[t]) * math.expm1(-h) * m0


class DPMSolverPPSampler(ODESolver):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, second order, data prediction.

    With h = lambda_t - lambda_s, r = h_prev / h and the data predictions m0 at s and m1 at the step before:
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D, D = (1 + 1 / (2r)) m0 - m1 / (2r).
    The first step has no m1; the step into tau_1 and the last one (to sigma = 0) are first order (see ODESolver).
    """

    name = "dpm_solver_pp"

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.first_order(x, i, i - 1, self.multistep_data(model, x, i, t))


class SDEDPMSolverPPSampler(ODESolver):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, sec. 5 and appendix): the multistep data-prediction solver of the
    reverse diffusion SDE, stochastic like DDPM. Fresh noise at every step corrects part of the network's error
    where an ODE solver carries it along, which is why it gives better samples from an imperfect network.

    With h = lambda_t - lambda_s, r = h_prev / h, data predictions m0 at s and m1 at the step before, z ~ N(0, I):
    x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D + sigma_t sqrt(1 - e^{-2h}) z,
    D as in DPM-Solver++(2M) (`multistep_data`: (1 + 1 / (2r)) m0 - m1 / (2r), or m0 where that is first order).
    Order 1 is exactly ancestral DDPM with the posterior variance (fixed_small) on the respaced chain: the mean is
    mutilde(x_s, m0) and the variance betatilde between the two timesteps. The last step returns the data
    prediction at tau_1, as every sampler here does.
    """

    name = "sde_dpm_solver_pp"

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        d = self.multistep_data(model, x, i, t)
        if i == 0:
            return d  # alphabar = 1: the data prediction at tau_1
        h = float(self.lam[i - 1] - self.lam[i])
        keep = -math.expm1(-2 * h)  # 1 - e^{-2h}
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (
            float(self.sigma[i - 1] / self.sigma[i] * math.exp(-h)) * x
            + float(self.alpha[i - 1]) * keep * d
            + float(self.sigma[i - 1]) * math.sqrt(keep) * noise
        )


class UniPCSampler(ODESolver):
    """UniPC (Zhao et al. 2023) with B(h) = e^h - 1 ("bh2"), data prediction: the predictor UniP-p and, at no extra
    network call, the corrector UniC-p, which uses the network output at the predicted point to correct it before
    the next step (order p + 1).

    Step from s (x_s, data prediction m0, previous m1 at lambda_1) to t, hh = -(lambda_t - lambda_s), B = e^hh - 1,
    r1 = (lambda_1 - lambda_s) / (lambda_t - lambda_s), D1 = (m1 - m0) / r1:
      predictor  x_t = (sigma_t / sigma_s) x_s - alpha_t B m0 - alpha_t B (D1 / 2)         (order 2; order 1: no D1)
      corrector  x_t = (sigma_t / sigma_s) x_s - alpha_t B m0 - alpha_t B (rho_1 D1 + rho_t (m_t - m0)),
    with (rho_1, rho_t) solving [[1, 1], [r1, 1]] rho = (phi_2 / B, 2 phi_3 / B), phi_2 = (e^hh - 1) / hh - 1,
    phi_3 = phi_2 / hh - 1/2 (order 1: rho_t = 1/2). The first predictor, the one into tau_1 and the last step
    (to sigma = 0) are first order.
    """

    name = "unipc"

    def start(self) -> None:
        super().start()
        self._last: tuple[int, Tensor] | None = None  # (index, x) the last predictor started from

    def coefficients(self, s: int, t: int) -> tuple[float, float, float]:
        """(alpha_t, hh, B) of the step from index s to index t."""
        hh = -float(self.lam[t] - self.lam[s])
        return float(self.alpha[t]), hh, math.expm1(hh)

    def step(self, model: Model, x: Tensor, i: int, t: Tensor, generator: torch.Generator | None) -> Tensor:
        m_t = self.data_prediction(model, x, t)
        if self._last is not None:  # correct the point the last predictor reached, with the output there
            s, x_s = self._last
            x = self.correct(x_s, s, i, m_t)
        self._history = [*self._history[-1:], (i, m_t)]
        self._last = (i, x)
        if i == 0:
            return m_t  # alphabar = 1: the exact first-order step returns the data prediction
        return self.predict(x, i, i - 1)

    def predict(self, x: Tensor, s: int, t: int) -> Tensor:
        alpha_t, hh, b = self.coefficients(s, t)
        m0 = self._history[-1][1]
        out = self.first_order(x, s, t, m0)  # (sigma_t / sigma_s) x_s - alpha_t B m0
        if self.order == 2 and len(self._history) == 2 and t > 0:  # the step into tau_1 stays first order
            j, m1 = self._history[0]
            r1 = float(self.lam[j] - self.lam[s]) / -hh
            out = out - alpha_t * b * 0.5 * (m1 - m0) / r1
        return out

    def correct(self, x_s: Tensor, s: int, t: int, m_t: Tensor) -> Tensor:
        alpha_t, hh, b = self.coefficients(s, t)
        m0 = self._history[-1][1]
        out = self.first_order(x_s, s, t, m0)
        if self.order == 1 or len(self._history) < 2:
            return out - alpha_t * b * 0.5 * (m_t - m0)
        j, m1 = self._history[0]
        r1 = float(self.lam[j] - self.lam[s]) / -hh
        phi2 = math.expm1(hh) / hh - 1
        phi3 = phi2 / hh - 0.5
        rho_1, rho_t = torch.linalg.solve(
            torch.tensor([[1.0, 1.0], [r1, 1.0]], dtype=torch.float64),
            torch.tensor([phi2 / b, 2 * phi3 / b], dtype=torch.float64),
        ).tolist()
        return out - alpha_t * b * (rho_1 * (m1 - m0) / r1 + rho_t * (m_t - m0))


SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpm_solver_pp": DPMSolverPPSampler,
    "sde_dpm_solver_pp": SDEDPMSolverPPSampler,
    "unipc": UniPCSampler,
}


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
