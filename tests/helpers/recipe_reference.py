"""The behaviour the architecture step must keep (issue: the training recipe apart from the diffusion process): for
each training setup, the losses of 4 training steps from a seed and the images two samplers draw from the trained EMA
network with fixed seeds. tests/data/recipe_v1/reference.pt holds them as the code before the step computed them
(`python -m tests.helpers.recipe_reference` wrote it, at commit time); tests/unit/test_recipe_regression.py checks
that today's code still computes the same."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch

from ddpm.build import build_module, build_sampler
from ddpm.config import compose_config
from tests.helpers.cli import TINY
from tests.helpers.paths import ROOT

REFERENCE = ROOT / "tests" / "data" / "recipe_v1" / "reference.pt"

# name -> the overrides of that setup (spelled for today's config groups: the recipe group came with the step; before
# it, diffusion=eps and diffusion=v carried the paper's recipe and the recipe keys were diffusion.*)
CASES = {
    "cpu_default_x0": [],
    "paper_eps_uniform": ["diffusion=eps", "recipe=paper"],
    "v_uniform": ["diffusion=v", "recipe=paper"],
    "eps_min_snr_stratified": [
        "diffusion=eps",
        "recipe=paper",
        "recipe.loss_weight=min_snr",
        "recipe.t_sampling=stratified",
    ],
    "eps_learned_range": ["diffusion=eps", "recipe=paper", "diffusion.var_type=learned_range"],
    "x0_self_condition": ["diffusion.self_condition=true"],
    "conditional_x0": ["condition=class", "model.num_classes=10"],
}
SAMPLERS = {
    "ddim3": {"name": "ddim", "steps": 3},
    "sde3": {"name": "sde_dpm_solver_pp", "steps": 3, "spacing": "uniform"},
}


class RecordLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def run_case(overrides: list[str], tmp: Path) -> dict[str, torch.Tensor]:
    """Train the TINY config 4 steps (batch 8, seed 42) and sample 4 images with each of SAMPLERS (seed 0)."""
    cfg = compose_config(
        ROOT / "conf", "train", [*TINY, "logger=none", "trainer.max_steps=4", *overrides], tmp
    )
    L.seed_everything(cfg.seed)
    module = build_module(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    record = RecordLosses()
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=[record], logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=datamodule)
    out = {"losses": torch.tensor(record.losses, dtype=torch.float64)}
    labels = {"labels": torch.arange(4) % module.num_classes, "guidance": 1.0} if module.num_classes else {}
    for name, spec in SAMPLERS.items():
        sampler = build_sampler(module.diffusion, spec)
        generator = torch.Generator().manual_seed(0)
        out[name] = module.sample(sampler, 4, generator=generator, use_ema=True, **labels)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        reference = {name: run_case(overrides, Path(tmp)) for name, overrides in CASES.items()}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference, REFERENCE)
    print(f"wrote {REFERENCE}: {', '.join(reference)}")
