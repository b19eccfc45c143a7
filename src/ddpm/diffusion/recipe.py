"""The training recipe: how training uses a GaussianDiffusion. The process fixes what x_t is and what the network
predicts; the recipe decides, for each batch,

    which t it trains on           t ~ p(t):  `uniform_timesteps`, `stratified_timesteps`, `lognormal_timesteps`
    how much each t weighs         lambda(t): `min_snr_weights`, `x0_mse_weights` (or 1)
    which x_0 it regresses on      x_0 as drawn, or the stable target field: `stable_target`, `StableTargetField`
    what a self-conditioned        its own detached estimate for half of the batches: `self_condition_input`
      network sees beside x_t

and `Recipe` holds the settings that pick one of each. The loss it asks the process for is

    L = E_{t ~ p(t)} [ lambda(t) || target_t - net(x_t, t) ||^2 ]   (+ vlb_weight L_vlb with learned_range),

so p(t) and lambda(t) together weigh the noise levels, and only their product matters to the expected gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ddpm.diffusion.process import GaussianDiffusion, Model
from ddpm.diffusion.self_conditioning import DataPrediction, SelfConditionedNet

T_SAMPLINGS = ("uniform", "stratified", "lognormal")
LOSS_WEIGHTS = ("none", "min_snr", "x0_mse")
# the x_0 a batch regresses on, given x_t and sqrt(alphabar_t) [B] (float64): see `StableTargetField`
X0Target = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------------------- t ~ p(t)
def uniform_timesteps(
    n: int, T: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """n i.i.d. t_i ~ U{0..T-1} (Ho et al.)."""
    return torch.randint(0, T, (n,), device=device, generator=generator)


def stratified_timesteps(
    n: int, T: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """The low-discrepancy sampler of Kingma et al. 2021 (VDM): u ~ U[0, 1), t_i = floor(T ((u + i / n) mod 1)), one t
    in each n-th of [0, T). Each t_i is still marginally uniform, so the batch's mean loss estimates the same
    expectation, with less variance because the batch covers the noise levels evenly."""
    u = torch.rand((), device=device, generator=generator, dtype=torch.float64)
    s = (u + torch.arange(n, device=device, dtype=torch.float64) / n) % 1.0
    return (s * T).long().clamp(max=T - 1)


def log_sigma_midpoints(snr: Tensor) -> Tensor:
    """m_t = (ln sigma_t + ln sigma_{t+1}) / 2 for t = 0..T-2, with ln sigma_t = -ln SNR(t) / 2 the log noise level of
    x_t / sqrt(alphabar_t) (increasing in t): the boundaries between the t nearest in ln sigma."""
    log_sigma = -0.5 * snr.log()
    return 0.5 * (log_sigma[:-1] + log_sigma[1:])


def lognormal_timesteps(
    n: int,
    midpoints: Tensor,
    mean: float,
    std: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-normal noise levels (Karras et al. 2022): i.i.d. ln sigma_i ~ N(mean, std^2), each rounded to the t whose
    ln sigma_t is nearest, t_i = #{m_t < ln sigma_i}. So P(t) = Phi((m_t - mean) / std) - Phi((m_{t-1} - mean) / std)
    with m the `log_sigma_midpoints` (m_{-1} = -inf, m_{T-1} = +inf)."""
    z = torch.randn((n,), device=device, generator=generator, dtype=torch.float64)
    return torch.bucketize(mean + std * z, midpoints.to(device))


# ---------------------------------------------------------------------------------------------- lambda(t)
def min_snr_weights(snr: Tensor, objective: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) per timestep: the weight that makes the objective's MSE equal
    min(SNR_t, gamma) ||x_0 - x0_theta||^2, i.e. min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v,
    and min(SNR, gamma) for x0."""
    clipped = snr.clamp(max=gamma)
    if objective == "eps":
        return clipped / snr
    if objective == "v":
        return clipped / (snr + 1.0)
    return clipped


def x0_mse_weights(snr: Tensor, objective: str) -> Tensor:
    """The weight that turns the objective's MSE into the squared error of the x_0 it implies, ||x_0 - x0_theta||^2:
    1 / SNR for eps (eps - eps_theta = sqrt(SNR) (x0_theta - x_0)), 1 / (SNR + 1) for v, 1 for x0. With v this trains
    the v-parameterised network (whose x_0 passes x_t through at low noise) on the x0 objective's weighting."""
    if objective == "eps":
        return 1.0 / snr
    if objective == "v":
        return 1.0 / (snr + 1.0)
    return torch.ones_like(snr)


# ---------------------------------------------------------------------------------------------- the target
def stable_target(
    x_t: Tensor, sqrt_alphabar: Tensor, reference: Tensor, allowed: Tensor | None = None
) -> Tensor:
    """The stable target field (Xu et al. 2023): the posterior mean of x_0 given x_t when x_0 is uniform over the
    reference images r_j, E[x_0 | x_t] = sum_j w_j r_j with w_j = softmax_j(-||x_t - sqrt(alphabar_t) r_j||^2 /
    (2 (1 - alphabar_t))), i.e. w_j proportional to q(x_t | x_0 = r_j). x_t [B, ...], sqrt_alphabar [B] (float64 is
    best), reference [R, ...]; allowed [B, R] (bool, optional) restricts example i's posterior to the r_j it allows
    (a conditional network's E[x_0 | x_t, y]: the references of its class); returns [B, ...] in x_t's dtype."""
    a = sqrt_alphabar.double().view(-1, 1)
    xt = x_t.flatten(1).double()
    ref = reference.flatten(1).double()
    # ||x_t - a r||^2 = ||x_t||^2 - 2 a <x_t, r> + a^2 ||r||^2; the first term is the same for every j
    logits = (2 * a * (xt @ ref.T) - a**2 * ref.square().sum(1)) / (2 * (1 - a**2))
    if allowed is not None:
        logits = logits.masked_fill(~allowed, -math.inf)
    return (logits.softmax(dim=1) @ ref).to(x_t.dtype).view_as(x_t)


class StableTargetField:
    """The reference images of the stable target field: each training batch, then the most recent training images
    before it, `size` in all (0: off, train on x_0 as drawn). Its state (the images and, for a class-conditional
    network, their labels) goes into checkpoints, so a resumed run trains on the same targets."""

    def __init__(self, size: int = 0) -> None:
        if size < 0:
            raise ValueError(f"stf_reference must be >= 0 (0: off), got {size}")
        self.size = int(size)
        self.images: Tensor | None = None
        self.labels: Tensor | None = None

    def target(
        self,
        x0: Tensor,
        labels: Tensor | None = None,
        conditioned_on: Tensor | None = None,
        null_class: int | None = None,
    ) -> X0Target | None:
        """Push a training batch into the references and return its target, x_0's posterior mean over them
        (`stable_target`); None when off. With labels (a class-conditional network), example i's posterior is over the
        references of the class it is conditioned on (conditioned_on, after label dropout), over all of them where its
        label was dropped to the null class."""
        if self.size <= 0:
            return None
        reference = x0.detach() if self.images is None else torch.cat([x0.detach(), self.images])[: self.size]
        self.images = reference
        if labels is None:
            self.labels = None
            return lambda x_t, sqrt_alphabar: stable_target(x_t, sqrt_alphabar, reference)
        ref_labels = labels if self.labels is None else torch.cat([labels, self.labels])[: reference.shape[0]]
        self.labels = ref_labels
        cond = labels if conditioned_on is None else conditioned_on
        allowed = ref_labels[None, :] == cond[:, None]
        if null_class is not None:
            allowed |= (cond == null_class)[:, None]
        return lambda x_t, sqrt_alphabar: stable_target(x_t, sqrt_alphabar, reference, allowed)

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"images": self.images, "labels": self.labels}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        self.images, self.labels = state["images"], state["labels"]


# ---------------------------------------------------------------------------------------------- self-conditioning
def self_condition_input(
    net: SelfConditionedNet,
    x0_of: DataPrediction,
    x_t: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    p: float = 0.5,
) -> Tensor:
    """x0_hat for a training batch (Chen et al. 2022, Algorithm 1): with probability p, x0_of(x_t, t, net(x_t, t,
    x_cond=0)) held fixed (no gradient flows through it); otherwise zeros. One coin per batch, drawn from `generator`
    (on a GPU, reading it waits for the device once per step: the price of skipping the extra pass on half the
    batches). The extra pass costs about a sixth of a step on average (a backward pass costs two forward passes)."""
    empty = torch.zeros_like(x_t)
    coin = torch.rand((), generator=generator, device=x_t.device)
    if float(coin) >= p:
        return empty
    with torch.no_grad():
        return x0_of(x_t, t, net(x_t, t, x_cond=empty)).to(x_t.dtype)


def self_conditioned_training(
    net: SelfConditionedNet, x0_of: DataPrediction, generator: torch.Generator | None = None
) -> Model:
    """A self-conditioned network as the loss calls it, model(x_t, t) = net(x_t, t, x_cond=self_condition_input(...))."""
    return lambda x_t, t: net(x_t, t, x_cond=self_condition_input(net, x0_of, x_t, t, generator))


# ---------------------------------------------------------------------------------------------- the recipe
class Recipe:
    """The training recipe for one GaussianDiffusion.

    Args:
        diffusion: the process trained on.
        t_sampling: "uniform", "stratified" or "lognormal" (see the functions of that name).
        log_sigma_mean, log_sigma_std: the normal of ln sigma for t_sampling="lognormal".
        loss_weight: "none" (L_simple: every t weighs 1), "min_snr" (`min_snr_weights`) or "x0_mse"
            (`x0_mse_weights`).
        snr_gamma: gamma of min_snr.
        stf_reference: R > 0 trains on the stable target field over R reference images (`StableTargetField`, which
            the LightningModule owns: its state goes into checkpoints); 0 trains on x_0 as drawn.
        vlb_weight: lambda of L_hybrid = L_simple + lambda L_vlb (learned_range only; 0.001 in Nichol & Dhariwal).

    The defaults are Ho et al.'s recipe: uniform t, unweighted, x_0 as drawn.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        t_sampling: str = "uniform",
        log_sigma_mean: float = -1.2,
        log_sigma_std: float = 1.2,
        loss_weight: str = "none",
        snr_gamma: float = 5.0,
        stf_reference: int = 0,
        vlb_weight: float = 0.001,
    ) -> None:
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"unknown t_sampling {t_sampling!r}: choose one of {', '.join(T_SAMPLINGS)}")
        if not log_sigma_std > 0:
            raise ValueError(f"log_sigma_std must be positive, got {log_sigma_std}")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss_weight {loss_weight!r}: choose one of {', '.join(LOSS_WEIGHTS)}")
        if not snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive, got {snr_gamma}")
        if stf_reference < 0:
            raise ValueError(f"stf_reference must be >= 0 (0: off), got {stf_reference}")
        if not vlb_weight >= 0:
            raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
        self.diffusion = diffusion
        self.t_sampling = t_sampling
        self.log_sigma_mean, self.log_sigma_std = float(log_sigma_mean), float(log_sigma_std)
        self.stf_reference = int(stf_reference)
        self.vlb_weight = float(vlb_weight)
        self.loss_weight = loss_weight
        snr, objective = diffusion.snr, diffusion.objective
        # lambda(t) for t = 0..T-1 (float64), None for loss_weight="none"
        self.loss_weights: Tensor | None = {
            "none": lambda: None,
            "min_snr": lambda: min_snr_weights(snr, objective, snr_gamma),
            "x0_mse": lambda: x0_mse_weights(snr, objective),
        }[loss_weight]()
        self._midpoints = log_sigma_midpoints(diffusion.snr) if t_sampling == "lognormal" else None
        self._on_device: dict[tuple[str, torch.device], Tensor] = {}

    def _to(self, name: str, table: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (name, torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = table.to(device=device, dtype=dtype)
        return self._on_device[key]

    def sample_timesteps(
        self, n: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """n training timesteps t ~ p(t) of `t_sampling`."""
        T = self.diffusion.num_timesteps
        if self.t_sampling == "uniform":
            return uniform_timesteps(n, T, device, generator)
        if self.t_sampling == "stratified":
            return stratified_timesteps(n, T, device, generator)
        midpoints = self._to("midpoints", self._midpoints, device, torch.float64)
        return lognormal_timesteps(n, midpoints, self.log_sigma_mean, self.log_sigma_std, device, generator)

    def weights_at(self, t: Tensor) -> Tensor | None:
        """lambda(t) [B] (float32), None where every t weighs 1."""
        if self.loss_weights is None:
            return None
        return self._to("weights", self.loss_weights, t.device, torch.float32)[t]

    def training_model(self, net: Any, generator: torch.Generator | None = None) -> Model:
        """The network as the loss calls it, model(x_t, t): with the self-conditioning coin of
        `self_conditioned_training` when the diffusion is self-conditioned."""
        if not self.diffusion.self_condition:
            return net
        return self_conditioned_training(net, self.diffusion.data_prediction, generator)

    def losses(
        self,
        net: Any,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        generator: torch.Generator | None = None,
        x0_target: X0Target | None = None,
    ) -> Tensor:
        """Per-example lambda(t) ||target - net(x_t, t)||^2 (+ vlb_weight L_vlb): `GaussianDiffusion.training_losses`
        with this recipe's weights and self-conditioning, and the stable target `x0_target` if given."""
        return self.diffusion.training_losses(
            self.training_model(net, generator),
            x0,
            t,
            noise,
            x0_target=x0_target,
            weights=self.weights_at(t),
            vlb_weight=self.vlb_weight,
        )
