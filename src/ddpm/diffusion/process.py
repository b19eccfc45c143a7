"""The Gaussian diffusion process of Ho et al. (2020), every quantity of the paper precomputed once in float64.

Notation (index i = 0..T-1 is the paper's t = i + 1):
    alpha_t = 1 - beta_t,  alphabar_t = prod_{s<=t} alpha_s
    q(x_t | x_0)          = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I)
    q(x_{t-1} | x_t, x_0) = N(mutilde_t, betatilde_t I),
        mutilde_t   = sqrt(alphabar_{t-1}) beta_t / (1 - alphabar_t) x_0 + sqrt(alpha_t) (1 - alphabar_{t-1}) / (1 - alphabar_t) x_t
        betatilde_t = beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)
    p(x_{t-1} | x_t)      = N(mu_theta(x_t, t), sigma_t^2 I), sigma_t^2 = beta_t ("fixed_large"), betatilde_t ("fixed_small"),
        or learned ("learned_range", Nichol & Dhariwal 2021): log sigma_t^2 = f log beta_t + (1 - f) log betatilde_t,
        f = (v + 1) / 2 with v in [-1, 1] the network's extra output channels
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.diffusion.likelihood import NATS_PER_BIT, discretized_gaussian_log_likelihood, mean_flat, normal_kl

Model = Callable[[Tensor, Tensor], Tensor]
# progress(iterable, description) -> the same items, reporting progress as they are consumed (passed in by callers)
Progress = Callable[[Iterable[int], str], Iterable[int]]

OBJECTIVES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_large", "fixed_small", "learned_range")


def q_step(x_prev: Tensor, beta: Tensor | float, eps: Tensor) -> Tensor:
    """One step of the forward chain q(x_t | x_{t-1}): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps."""
    beta = torch.as_tensor(beta, dtype=x_prev.dtype)
    return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * eps


def naive_step(x_prev: Tensor, beta: Tensor | float, eps: Tensor) -> Tensor:
    """The naive chain x_t = x_{t-1} + sqrt(beta_t) eps (no sqrt(1 - beta_t) shrink), for contrast: it is not variance
    preserving. Var(x_t) = Var(x_0) + sum_{s<=t} beta_s grows and E[x_t] = E[x_0] is never forgotten."""
    beta = torch.as_tensor(beta, dtype=x_prev.dtype)
    return x_prev + beta.sqrt() * eps


class GaussianDiffusion:
    """Forward process, posterior, reverse-process parameterisation, the loss and the ancestral sampler: the paper.
    How training draws t, weighs the loss and picks its target is the training recipe (`ddpm.diffusion.recipe`).

    Args:
        betas: float64 [T] variance schedule (see `make_beta_schedule`).
        objective: what the network predicts: "eps" (the paper's L_simple), "x0", or "v" (Salimans & Ho 2022).
        var_type: reverse-process variance sigma_t^2: "fixed_large" (beta_t), "fixed_small" (betatilde_t) or
            "learned_range" (the network outputs twice the image channels; the second half v interpolates the two in
            log space, see `learned_log_variance`; training adds a weighted L_vlb, see `training_losses`).
        clip_denoised: clip the predicted x_0 to [-1, 1] before forming the posterior mean when sampling.
        self_condition: the network also takes an estimate of x_0, net(x_t, t, x_cond=x0_hat) (Chen et al. 2022; see
            `ddpm.diffusion.self_conditioning` for sampling, `ddpm.diffusion.recipe` for training).
    """

    def __init__(
        self,
        betas: Tensor,
        objective: str = "eps",
        var_type: str = "fixed_large",
        clip_denoised: bool = True,
        self_condition: bool = False,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if var_type not in VAR_TYPES:
            raise ValueError(f"unknown var_type {var_type!r}: choose one of {', '.join(VAR_TYPES)}")
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1]")
        self.objective = objective
        self.self_condition = bool(self_condition)
        self.var_type = var_type
        self.learns_variance = var_type == "learned_range"
        self.clip_denoised = clip_denoised
        self.num_timesteps = int(betas.shape[0])

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-self.alphas_cumprod)
        # signal-to-noise ratio of x_t: SNR(t) = alphabar_t / (1 - alphabar_t)
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # betatilde_1 = 0; its log is clipped to betatilde_2 as in Ho et al.'s code (to beta_1 in a one-step chain).
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )

        # p(x_{t-1} | x_t) variance; at t = 1 no noise is added, the value there only matters for the bound.
        # fixed_large uses betatilde_2 there (as Ho et al.'s code), fixed_small the clipped log betatilde_t.
        self.fixed_large_variance = torch.cat([first, betas[1:]])
        self.fixed_large_log_variance = torch.log(self.fixed_large_variance)
        self.fixed_small_log_variance = self.posterior_log_variance_clipped
        if var_type == "fixed_small":
            self.model_variance = self.posterior_variance.clone()
            self.model_log_variance = self.fixed_small_log_variance
        else:  # fixed_large; learned_range computes its own from the network output (these are unused)
            self.model_variance = self.fixed_large_variance
            self.model_log_variance = self.fixed_large_log_variance

        self._device_cache: dict[tuple[str, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def _extract(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Gather schedule quantity `name` at timesteps t [B] and shape it to broadcast against x [B, ...]."""
        key = (name, t.device)
        arr = self._device_cache.get(key)
        if arr is None:
            arr = getattr(self, name).to(device=t.device, dtype=torch.float32)
            self._device_cache[key] = arr
        return arr[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean sqrt(alphabar_t) x_0 and variance (1 - alphabar_t) of q(x_t | x_0)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        var = self._extract("alphas_cumprod", t, x0)
        return mean, 1.0 - var

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, a sample of q(x_t | x_0)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean mutilde_t(x_t, x_0), variance betatilde_t and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x0
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        var = self._extract("posterior_variance", t, x_t)
        log_var = self._extract("posterior_log_variance_clipped", t, x_t)
        return mean, var, log_var

    # ------------------------------------------------------------------ parameterisations
    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)."""
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t / sqrt(alphabar_t) - x_0) / sqrt(1 / alphabar_t - 1)."""
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def predict_x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(alphabar_t) x_t - sqrt(1 - alphabar_t) v."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def get_v(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0 (Salimans & Ho 2022)."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * noise
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def training_target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network is trained to output for the configured objective."""
        if self.objective == "eps":
            return noise
        if self.objective == "x0":
            return x0
        return self.get_v(x0, t, noise)

    def split_output(self, model_output: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the objective's prediction, the variance values v or None): a learned_range network outputs both,
        stacked along the channels, the prediction first."""
        if not self.learns_variance:
            return model_output, None
        if model_output.shape[1] % 2:
            raise ValueError(
                f"var_type=learned_range needs a network with twice the image channels, got {model_output.shape[1]}"
            )
        prediction, v = model_output.chunk(2, dim=1)
        return prediction, v

    def learned_log_variance(self, v: Tensor, t: Tensor) -> Tensor:
        """log sigma_t^2 = f log beta_t + (1 - f) log betatilde_t, f = (v + 1) / 2 (Nichol & Dhariwal 2021, eq. 15),
        with the two ends exactly the log variances of fixed_large (f = 1) and fixed_small (f = 0)."""
        frac = (v.float() + 1.0) / 2.0
        max_log = self._extract("fixed_large_log_variance", t, v)
        min_log = self._extract("fixed_small_log_variance", t, v)
        return frac * max_log + (1.0 - frac) * min_log

    def predict_x0_and_eps(
        self, x_t: Tensor, t: Tensor, model_output: Tensor, clip_denoised: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """(x_0, eps) implied by the network output (its prediction channels), with x_0 clipped to [-1, 1] if
        `clip_denoised` (default: the diffusion's setting).

        When x_0 is clipped, eps is recomputed from the clipped x_0 so that both stay consistent with x_t.
        """
        model_output = self.split_output(model_output)[0].float()
        clip = self.clip_denoised if clip_denoised is None else clip_denoised
        if self.objective == "eps":
            eps = model_output
            x0 = self.predict_x0_from_eps(x_t, t, eps)
        elif self.objective == "x0":
            x0 = model_output
            eps = self.predict_eps_from_x0(x_t, t, x0)
        else:
            x0 = self.predict_x0_from_v(x_t, t, model_output)
            eps = self.predict_eps_from_x0(x_t, t, x0)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return x0, eps

    def data_prediction(self, x_t: Tensor, t: Tensor, model_output: Tensor) -> Tensor:
        """The x_0 implied by a network output (clipped as the diffusion clips): `predict_x0_and_eps`'s first half."""
        return self.predict_x0_and_eps(x_t, t, model_output)[0]

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(
        self, model: Model, x_t: Tensor, t: Tensor, clip_denoised: bool | None = None
    ) -> dict[str, Tensor]:
        """Mean, variance and log variance of p_theta(x_{t-1} | x_t), plus the predicted x_0 and eps.

        mu_theta(x_t, t) = mutilde_t(x_t, x0_theta), which for the eps objective without clipping equals
        (x_t - beta_t / sqrt(1 - alphabar_t) eps_theta(x_t, t)) / sqrt(alpha_t). The variance is fixed, or for
        learned_range read from the network output (`learned_log_variance`).
        """
        output = model(x_t, t)
        x0, eps = self.predict_x0_and_eps(x_t, t, output, clip_denoised)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        _, v = self.split_output(output)
        if v is None:
            log_variance = self._extract("model_log_variance", t, x_t)
            variance = self._extract("model_variance", t, x_t)
        else:
            log_variance = self.learned_log_variance(v, t)
            variance = log_variance.exp()
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": x0, "eps": eps}

    def p_sample(
        self, model: Model, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """One ancestral step x_{t-1} = mu_theta + sigma_t z, z ~ N(0, I); no noise where t is the paper's t = 1."""
        out = self.p_mean_variance(model, x_t, t)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return out["mean"] + nonzero * (0.5 * out["log_variance"]).exp() * noise

    # ------------------------------------------------------------------ training
    def training_losses(
        self,
        model: Model,
        x0: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        *,
        x0_target: Callable[[Tensor, Tensor], Tensor] | None = None,
        weights: Tensor | None = None,
        vlb_weight: float = 0.001,
    ) -> Tensor:
        """Per-example mean squared error between the network output at x_t and the objective's target, times
        weights [B] (lambda(t), default 1); what t, weights and target are is the recipe's choice
        (`ddpm.diffusion.recipe`).

        For the eps objective and no weights this is L_simple = E || eps - eps_theta(sqrt(alphabar_t) x_0 +
        sqrt(1-alphabar_t) eps, t) ||^2. With learned_range it is L_hybrid (Nichol & Dhariwal 2021, sec. 3.1): plus
        vlb_weight * T * L_{t-1} in bits/dim, the single-t estimate of vlb_weight * L_vlb, computed with the predicted
        mean held fixed (detached) so that the bound trains only the variance.

        x0_target(x_t, sqrt(alphabar_t)) replaces the x_0 regressed on (the stable target field): the target is formed
        from it and the noise it implies, (x_t - sqrt(alphabar_t) x0_target) / sqrt(1 - alphabar_t), in place of the
        x_0 and eps that were drawn. A self-conditioned network is passed in as model(x_t, t) that feeds it its
        estimate (`ddpm.diffusion.recipe.self_conditioned_training`).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        prediction, v = self.split_output(model(x_t, t))
        if x0_target is None:
            target = self.training_target(x0, t, noise)
        else:
            x0_t = x0_target(x_t, self.sqrt_alphas_cumprod.to(t.device)[t])
            a = self._extract("sqrt_alphas_cumprod", t, x_t)
            noise_t = (x_t - a * x0_t) / self._extract("sqrt_one_minus_alphas_cumprod", t, x_t)
            target = self.training_target(x0_t, t, noise_t)
        mse = F.mse_loss(prediction.float(), target, reduction="none").flatten(1).mean(1)
        if weights is not None:
            mse = weights.to(mse.dtype) * mse
        if v is None:
            return mse
        frozen = torch.cat([prediction.detach(), v], dim=1)
        vb = self.vb_term_bpd(lambda *_: frozen, x0, x_t, t, clip_denoised=False)
        return mse + vlb_weight * self.num_timesteps * vb

    # ------------------------------------------------------------------ variational bound (bits per dimension)
    def prior_bpd(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per example."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, var = self.q_mean_variance(x0, t)
        kl = normal_kl(mean, torch.log(var), torch.zeros_like(mean), torch.zeros_like(mean))
        return mean_flat(kl) / NATS_PER_BIT

    def vb_term_bpd(
        self, model: Model, x0: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool | None = None
    ) -> Tensor:
        """One term of the bound, in bits per dimension, per example:
        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for the paper's t >= 2, and the decoder
        L_0 = -log p_theta(x_0 | x_1) (discretised Gaussian) at t = 1 (index 0)."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / NATS_PER_BIT
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"]))
        return torch.where(t == 0, nll / NATS_PER_BIT, kl)

    @torch.no_grad()
    def calc_bpd_loop(
        self,
        model: Model,
        x0: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Tensor]:
        """The full bound -log p(x_0) <= L_T + sum_{t>=2} L_{t-1} + L_0 in bits/dim for each example of x0 (data on the
        256-level grid in [-1, 1]), one x_t ~ q(x_t | x_0) per term. Costs T network evaluations per batch.

        Returns total_bpd [B], prior_bpd [B], vb_bpd [B, T] (index 0 is the decoder term L_0).
        `progress(iterable, description)` wraps the loop over t to report progress (e.g. ddpm.progress.progress_bar).
        """
        terms = []
        steps = range(self.num_timesteps - 1, -1, -1)
        for i in progress(steps, "bits/dim") if progress else steps:
            t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            terms.append(self.vb_term_bpd(model, x0, self.q_sample(x0, t, noise), t))
        vb = torch.stack(terms[::-1], dim=1)
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb.sum(1) + prior, "prior_bpd": prior, "vb_bpd": vb}
