"""`python evaluate.py ckpt_path=...`: FID (N, sampler) against the held-out split and NLL in bits/dim, to JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Subset

from ddpm.build import build_sampler
from ddpm.checkpoint import load_checkpoint
from ddpm.cli.errors import exit_on_config_error
from ddpm.errors import ConfigError, building
from ddpm.host_memory import retain_freed_memory
from ddpm.metrics import fid_key, install_reference, make_fid, score_samples
from ddpm.progress import progress_bar

log = logging.getLogger(__name__)
METRICS = ("fid", "nll")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    retain_freed_memory()  # no page faults on each batch's activations: see ddpm.host_memory
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metrics {unknown}: choose from {', '.join(METRICS)}")
    metric = make_fid(cfg.fid.weights_path) if "fid" in cfg.metrics else None  # fail before any sampling

    module, run_cfg = load_checkpoint(cfg.ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    data_cfg = run_cfg.data
    if cfg.data_root:
        data_cfg = OmegaConf.merge(data_cfg, {"root": cfg.data_root})
    datamodule = building("data", lambda: hydra.utils.instantiate(data_cfg))
    datamodule.check()
    datamodule.setup("validate")

    results: dict[str, Any] = {"checkpoint": str(cfg.ckpt_path), "ema": cfg.use_ema, "data": data_cfg.source}
    if metric is not None:
        sampler = build_sampler(module.diffusion, cfg.sampler)
        metric.to(device)
        n_ref = install_reference(
            metric, datamodule, cfg.fid.cache_dir, cfg.fid.reference_n, cfg.fid.weights_path
        )
        log.info("FID: %d samples with %s against %d held-out images", cfg.fid.n, sampler.label, n_ref)
        scores = score_samples(
            metric,
            lambda count, generator: module.sample(
                sampler, count, generator=generator, use_ema=cfg.use_ema, progress=progress_bar
            ),
            cfg.fid.n,
            cfg.fid.batch_size,
            cfg.fid.seed,
            device=device,
        )
        results["fid"] = {
            "key": fid_key(cfg.fid.n, sampler.label),
            "value": scores["fid"],
            "kid_key": fid_key(cfg.fid.n, sampler.label, "kid"),
            "kid": scores["kid"],
            "kid_std": scores["kid_std"],
            "n": cfg.fid.n,
            "sampler": sampler.label,
            "network_calls_per_image": len(sampler.timesteps),
            "reference": f"{data_cfg.source} held-out split, {n_ref} images",
        }
    if "nll" in cfg.metrics:
        net = module.ema.module if cfg.use_ema else module.net
        net.eval()
        held_out = datamodule.val_set
        n = min(cfg.nll.n, len(held_out))
        loader = DataLoader(Subset(held_out, range(n)), batch_size=cfg.nll.batch_size)
        generator = torch.Generator(device=device).manual_seed(cfg.nll.seed)
        parts = {"total_bpd": [], "prior_bpd": [], "decoder_bpd": []}
        for i, batch in enumerate(loader):
            x0 = batch.to(device)
            log.info(
                "NLL: batch %d / %d (%d network calls)", i + 1, len(loader), module.diffusion.num_timesteps
            )
            out = module.diffusion.calc_bpd_loop(net, x0, generator=generator, progress=progress_bar)
            parts["total_bpd"].append(out["total_bpd"].cpu())
            parts["prior_bpd"].append(out["prior_bpd"].cpu())
            parts["decoder_bpd"].append(out["vb_bpd"][:, 0].cpu())
        results["nll"] = {k: float(torch.cat(v).mean()) for k, v in parts.items()}
        results["nll"]["n"] = n

    out = Path(cfg.output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    _print(results, out)
    return results


def _print(results: dict[str, Any], path: Path) -> None:
    table = Table(title=f"evaluation of {results['checkpoint']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if "fid" in results:
        fid = results["fid"]
        table.add_row(f"{fid['key']} ({fid['reference']})", f"{fid['value']:.2f}")
        table.add_row(
            f"{fid['kid_key']} (mean ± std over subsets)", f"{fid['kid']:.4f} ± {fid['kid_std']:.4f}"
        )
    if "nll" in results:
        table.add_row(
            f"NLL bits/dim ({results['nll']['n']} held-out images)", f"{results['nll']['total_bpd']:.3f}"
        )
    Console().print(table)
    Console().print(f"written to {path}")


def main(cfg: DictConfig) -> Any:
    return exit_on_config_error(lambda: evaluate(cfg))
