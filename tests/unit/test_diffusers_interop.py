"""Models move to and from diffusers: the exported UNet2DModel computes what our UNet computes, DDPMScheduler has our
betas, its chain over an exported pipeline is our ancestral sampler, and a randomly initialised UNet2DModel with the
published config of google/ddpm-cifar10-32 (Ho et al.'s CIFAR-10 network) imports into the paper's network."""

from __future__ import annotations

import diffusers
import pytest
import torch
from omegaconf import OmegaConf

from ddpm.build import build_diffusion, build_module, network_settings
from ddpm.config import compose_config
from ddpm.diffusion import DDPMSampler, make_beta_schedule
from ddpm.errors import ConfigError
from ddpm.interop.ddpm_scheduler import process_settings, scheduler_config
from ddpm.interop.pipeline import export_pipeline, import_pipeline
from ddpm.interop.unet2d import unet2d_config, unet_settings

# google/ddpm-cifar10-32's unet/config.json, as published on the Hugging Face Hub (diffusers' documentation of
# UNet2DModel lists the same keys): Ho et al.'s 35.7M-parameter network
CIFAR10_UNET = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
CIFAR10_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}

SETUPS = {  # train.py overrides of each network checked
    "cpu_default": [],
    "paper": ["experiment=ddpm_cifar10"],
    "conditional": ["condition=class", "model.num_classes=10"],
    "learned_range_adaptive_norm": ["diffusion.var_type=learned_range", "model.scale_shift_norm=true"],
}


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight drawn at random (a freshly built network has zeroed output layers, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def run_config(*overrides: str):
    return compose_config(overrides=[*overrides, "logger=none"])


@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_exported_unet_computes_what_ours_computes(setup, tmp_path):
    cfg = run_config(*SETUPS[setup])
    module = build_module(cfg)
    randomised(module.ema.module)
    folder = export_pipeline(module, cfg, tmp_path / "pipeline")
    unet, info = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    size, channels = cfg.data.image_size, cfg.data.channels
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, channels, size, size, generator=g), torch.tensor([0, 400, 999])
    y = torch.tensor([0, 7, 10]) if module.num_classes else None  # 10: the null class
    with torch.no_grad():
        ours = module.ema.module(x, t) if y is None else module.ema.module(x, t, y)
        theirs = unet.eval()(x, t, class_labels=y).sample
    assert ours.abs().max() > 0.1  # a real signal, not two zero outputs
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "schedule",
    [
        ["schedule=linear"],
        ["schedule=cosine"],
        ["schedule=quadratic"],
        ["schedule=sigmoid"],
        ["schedule=linear", "schedule.num_timesteps=200"],
        ["schedule=cosine", "schedule.s=0.01"],  # not diffusers' cosine: written out as trained_betas
    ],
)
def test_the_scheduler_has_our_betas(schedule):
    cfg = run_config(*schedule)
    ours = build_diffusion(cfg)
    config = scheduler_config(
        OmegaConf.to_container(cfg.schedule), OmegaConf.to_container(cfg.diffusion), ours.betas
    )
    theirs = diffusers.DDPMScheduler(**config)
    torch.testing.assert_close(theirs.betas, ours.betas.float(), rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(theirs.alphas_cumprod, ours.alphas_cumprod.float(), rtol=1e-5, atol=1e-7)
    assert (config["trained_betas"] is not None) == (cfg.schedule.get("s") == 0.01)
    if config["trained_betas"] is None:  # a named schedule reads back as the same schedule
        assert process_settings(config)[0] == pytest.approx(OmegaConf.to_container(cfg.schedule))


@pytest.mark.parametrize(
    "objective,var_type",
    [
        ("eps", "fixed_large"),
        pytest.param("x0", "fixed_small", marks=pytest.mark.slow),
        pytest.param("v", "fixed_large", marks=pytest.mark.slow),
    ],
)
def test_diffusers_ddpm_chain_is_our_ancestral_sampler(objective, var_type, tmp_path):
    """The same x_T and the same noise at every step (one generator, drawn in the same order): the same images."""
    cfg = run_config(
        f"diffusion={objective}",
        f"diffusion.var_type={var_type}",
        "schedule.num_timesteps=50",
        "data.image_size=16",
    )
    module = build_module(cfg)
    randomised(module.ema.module, seed=2)
    folder = export_pipeline(module, cfg, tmp_path / "pipeline")
    pipe = diffusers.DDPMPipeline.from_pretrained(folder)
    shape = (2, 1, 16, 16)
    ours = DDPMSampler(module.diffusion).sample(
        module.ema.module, shape, generator=torch.Generator().manual_seed(3)
    )
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    pipe.scheduler.set_timesteps(50)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(pipe.unet(x, t).sample, t, x, generator=g).prev_sample
    assert ours.std() > 1e-3  # not a constant image
    torch.testing.assert_close(x, ours, atol=1e-4, rtol=1e-4)


def test_the_published_cifar10_network_imports_as_the_papers_network(tmp_path):
    """A randomly initialised UNet2DModel with google/ddpm-cifar10-32's config, saved as a pipeline folder, imports
    into this project's unet_ddpm_cifar10 (TensorFlow's SAME padding on) and computes the same outputs."""
    torch.manual_seed(0)
    config = {k: v for k, v in CIFAR10_UNET.items() if not k.startswith("_")}
    unet = randomised(diffusers.UNet2DModel(**config))
    scheduler = diffusers.DDPMScheduler(
        **{k: v for k, v in CIFAR10_SCHEDULER.items() if not k.startswith("_")}
    )
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "hub")
    module, cfg = import_pipeline(tmp_path / "hub")
    paper = compose_config(overrides=["experiment=ddpm_cifar10"])
    expected = {k: v for k, v in network_settings(paper).items() if k not in ("channels_last", "dropout")}
    got = network_settings(cfg)
    assert {k: got.get(k) for k in expected} == expected and got.get("out_channels") is None
    assert got["tf_padding"] and module.num_parameters == 35_746_307
    assert (cfg.schedule.name, cfg.diffusion.objective, cfg.diffusion.var_type) == (
        "linear",
        "eps",
        "fixed_large",
    )
    assert cfg.data.source == "cifar10"
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(module.ema.module.eval()(x, t), unet(x, t).sample, atol=1e-4, rtol=1e-4)


def test_symmetric_padding_is_not_the_published_network():
    """The setting matters: with padding on every side the same weights compute something else."""
    settings = unet_settings({k: v for k, v in CIFAR10_UNET.items() if not k.startswith("_")})
    assert settings["tf_padding"]
    config = unet2d_config({**settings, "tf_padding": False})
    assert config["downsample_padding"] == 1


def test_what_diffusers_cannot_express_is_refused_before_anything_is_written(tmp_path):
    cfg = run_config("diffusion.self_condition=true")
    with pytest.raises(
        ConfigError, match="self-conditioning estimate: a model trained with diffusion.self_condition"
    ):
        export_pipeline(build_module(cfg), cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="fewer than num_groups"):
        unet2d_config({**network_settings(run_config()), "num_groups": 64})


def test_a_foreign_layout_is_refused():
    with pytest.raises(ConfigError, match="flip_sin_to_cos=True"):
        unet_settings({**CIFAR10_UNET, "flip_sin_to_cos": True})
    with pytest.raises(ConfigError, match="not DDPM's"):
        unet_settings({**CIFAR10_UNET, "down_block_types": ["CrossAttnDownBlock2D"] * 4})
    with pytest.raises(ConfigError, match="trained_betas"):
        process_settings({**CIFAR10_SCHEDULER, "trained_betas": [0.1, 0.2]})


def test_betas_of_the_import_are_the_schedules_own():
    schedule, _ = process_settings({**CIFAR10_SCHEDULER, "num_train_timesteps": 100, "beta_end": 0.2})
    torch.testing.assert_close(
        make_beta_schedule(**schedule),
        torch.linspace(1e-4, 0.2, 100, dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
