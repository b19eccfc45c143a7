"""This project's process as diffusers' DDPMScheduler config and back.

    schedule         linear = "linear", quadratic = "scaled_linear", sigmoid = "sigmoid" (with the endpoints the
                     schedule used: Ho et al.'s scaled by 1000 / T), cosine with s = 0.008 and max_beta = 0.999 =
                     "squaredcos_cap_v2"; any other betas as `trained_betas`
    objective        eps = "epsilon", x0 = "sample", v = "v_prediction"  (prediction_type)
    reverse variance fixed_large, fixed_small, learned_range  (variance_type, the same names)
    clipping         clip_denoised = clip_sample, to [-1, 1]

diffusers computes its betas in float32; they agree with ours to float32 rounding (a test checks every schedule).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ddpm.errors import ConfigError

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
VARIANCE_TYPES = ("fixed_large", "fixed_small", "learned_range")
NAMED = {"linear": "linear", "quadratic": "scaled_linear", "sigmoid": "sigmoid"}


def scheduler_config(schedule: dict[str, Any], diffusion: dict[str, Any], betas: Tensor) -> dict[str, Any]:
    """The DDPMScheduler config of a run's schedule and diffusion nodes (`betas`: the process's own, float64)."""
    name, T = schedule["name"], int(schedule["num_timesteps"])
    config: dict[str, Any] = {
        "num_train_timesteps": T,
        "beta_schedule": "linear",
        "beta_start": float(betas[0]),
        "beta_end": float(betas[-1]),
        "trained_betas": None,
    }
    if name in NAMED:
        config["beta_schedule"] = NAMED[name]
        if name != "linear":  # the endpoints a ramp of another shape started from (ours: scaled by 1000 / T)
            scale = 1000.0 / T
            config |= {"beta_start": scale * schedule["beta_start"], "beta_end": scale * schedule["beta_end"]}
    elif name == "cosine" and schedule.get("s") == 0.008 and schedule.get("max_beta") == 0.999:
        config["beta_schedule"] = "squaredcos_cap_v2"
    else:
        config["trained_betas"] = [float(b) for b in betas]
    return config | {
        "variance_type": diffusion["var_type"],
        "clip_sample": bool(diffusion.get("clip_denoised", True)),
        "clip_sample_range": 1.0,
        "prediction_type": PREDICTION_TYPES[diffusion["objective"]],
        "thresholding": False,
    }


def process_settings(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schedule node, diffusion node) of a DDPMScheduler config; ConfigError for what this project cannot run."""
    for key, ok in (("thresholding", False), ("rescale_betas_zero_snr", False)):
        if config.get(key, ok) != ok:
            raise ConfigError(f"this scheduler has {key}={config[key]!r}, which this project's process lacks")
    if config.get("clip_sample", True) and float(config.get("clip_sample_range", 1.0)) != 1.0:
        raise ConfigError("this scheduler clips samples to a range other than [-1, 1]: it cannot be imported")
    objectives = {v: k for k, v in PREDICTION_TYPES.items()}
    prediction, variance = (
        config.get("prediction_type", "epsilon"),
        config.get("variance_type", "fixed_small"),
    )
    if prediction not in objectives or variance not in VARIANCE_TYPES:
        raise ConfigError(
            f"prediction_type={prediction!r} with variance_type={variance!r}: this project runs "
            f"{', '.join(objectives)} with {', '.join(VARIANCE_TYPES)}"
        )
    T = int(config.get("num_train_timesteps", 1000))
    name = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        raise ConfigError(
            "this scheduler gives its betas as a list (trained_betas), which no schedule of this project builds: "
            "it cannot be imported"
        )
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if name == "squaredcos_cap_v2":
        schedule = {"name": "cosine", "num_timesteps": T, "s": 0.008, "max_beta": 0.999}
    elif name in NAMED.values():
        ours = {v: k for k, v in NAMED.items()}[name]
        scale = 1000.0 / T  # our endpoints are Ho et al.'s, multiplied by 1000 / T when the schedule is built
        schedule = {"name": ours, "num_timesteps": T, "beta_start": start / scale, "beta_end": end / scale}
    else:
        raise ConfigError(f"beta_schedule={name!r} is not one this project builds: it cannot be imported")
    diffusion = {
        "objective": objectives[prediction],
        "var_type": variance,
        "clip_denoised": bool(config.get("clip_sample", True)),
        "self_condition": False,
    }
    return schedule, diffusion
