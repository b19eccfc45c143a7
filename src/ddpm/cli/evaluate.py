"""`python evaluate.py ckpt_path=...`: FID and KID (N, sampler) against the held-out split and NLL in bits/dim, to JSON;
with sweep.samplers=[...] sweep.steps=[...] the quality-vs-NFE table (markdown, CSV, PNG) instead of one sampler."""

from __future__ import annotations

import json
import logging
import time
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
from ddpm.config import CONFIG_DIR
from ddpm.diffusion import SAMPLERS, Sampler
from ddpm.errors import ConfigError, building
from ddpm.host_memory import retain_freed_memory
from ddpm.metrics import fid_key, install_reference, make_fid, nfe_table, score_samples
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
    sweep = cfg.get("sweep") or {}
    if sweep.get("samplers") and "fid" not in cfg.metrics:
        raise ConfigError("sweep.samplers needs the fid metric: add fid to metrics (metrics=[fid])")
    metric = make_fid(cfg.fid.weights_path) if "fid" in cfg.metrics else None  # fail before any sampling

    module, run_cfg = load_checkpoint(cfg.ckpt_path)
    samplers = sweep_samplers(module.diffusion, sweep, cfg.sampler) if sweep.get("samplers") else {}
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
        metric.to(device)
        n_ref = install_reference(
            metric, datamodule, cfg.fid.cache_dir, cfg.fid.reference_n, cfg.fid.weights_path
        )
        reference = f"{data_cfg.source} held-out split, {n_ref} images"

        def score(sampler: Sampler) -> dict[str, Any]:
            seconds = 0.0

            def draw(count: int, generator: torch.Generator) -> torch.Tensor:
                nonlocal seconds
                start = time.perf_counter()
                images = module.sample(
                    sampler, count, generator=generator, use_ema=cfg.use_ema, progress=progress_bar
                )
                seconds += time.perf_counter() - start
                return images

            log.info("FID: %d samples with %s against %d held-out images", cfg.fid.n, sampler.label, n_ref)
            scores = score_samples(metric, draw, cfg.fid.n, cfg.fid.batch_size, cfg.fid.seed, device=device)
            return {**scores, "seconds_per_image": seconds / cfg.fid.n}

        if samplers:
            rows = []
            for (name, steps), sampler in samplers.items():
                rows.append(
                    {
                        "sampler": name,
                        "steps": steps,
                        "nfe": len(sampler.timesteps),
                        "n": cfg.fid.n,
                        **score(sampler),
                    }
                )
                log.info("%s: FID %.2f, KID %.4f", sampler.label, rows[-1]["fid"], rows[-1]["kid"])
            results["sweep"] = {"reference": reference, "seed": cfg.fid.seed, "rows": rows}
        else:
            sampler = build_sampler(module.diffusion, cfg.sampler)
            scores = score(sampler)
            results["fid"] = {
                "key": fid_key(cfg.fid.n, sampler.label),
                "value": scores["fid"],
                "kid_key": fid_key(cfg.fid.n, sampler.label, "kid"),
                "kid": scores["kid"],
                "kid_std": scores["kid_std"],
                "n": cfg.fid.n,
                "sampler": sampler.label,
                "network_calls_per_image": len(sampler.timesteps),
                "seconds_per_image": scores["seconds_per_image"],
                "reference": reference,
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
    if "sweep" in results:
        results["sweep"]["files"] = write_sweep(results, out.parent)
    out.write_text(json.dumps(results, indent=2) + "\n")
    _print(results, out)
    if cfg.wandb.enabled:
        log_to_wandb(results, cfg)
    return results


def sweep_samplers(diffusion, sweep: DictConfig, base: DictConfig) -> dict[tuple[str, int], Sampler]:
    """Every (sampler, steps) cell of the sweep, built (so every mistake is found) before any sampling. Each cell is
    conf/sampler/<name>.yaml with its steps, and the run's sampler.compile."""
    names, steps = list(sweep.samplers), list(sweep.get("steps") or [])
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise ConfigError(
            f"unknown sampler(s) {unknown} in sweep.samplers: choose from {', '.join(SAMPLERS)}"
        )
    if not steps or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise ConfigError(
            f"sweep.steps must be a list of whole numbers of steps, e.g. [5,10,20], got {steps}"
        )
    cells = {}
    for name in names:
        node = OmegaConf.load(CONFIG_DIR / "sampler" / f"{name}.yaml")
        node.compile = bool(base.get("compile", False))
        for s in steps:
            node.steps = s
            cells[(name, s)] = build_sampler(diffusion, node, what=f"sweep cell {name} with {s} steps")
    return cells


def write_sweep(results: dict[str, Any], folder: Path) -> dict[str, str]:
    """nfe_table.md, nfe_table.csv and nfe_plot.png of the sweep, in `folder`."""
    rows = results["sweep"]["rows"]
    md = folder / "nfe_table.md"
    md.write_text(
        f"Quality against network calls: {results['checkpoint']} (EMA: {results['ema']}), against the "
        f"{results['sweep']['reference']}; the same {rows[0]['n']} seeds (fid.seed={results['sweep']['seed']}) in "
        "every cell.\n\n" + nfe_table.markdown_table(rows)
    )
    csv = nfe_table.write_csv(rows, folder / "nfe_table.csv")
    png = nfe_table.plot(rows, folder / "nfe_plot.png", title=f"{results['data']}, N = {rows[0]['n']}")
    return {"markdown": str(md), "csv": str(csv), "plot": str(png)}


def log_to_wandb(results: dict[str, Any], cfg: DictConfig) -> None:
    """The results as an offline (or online) W&B run of job type `evaluate` in the output folder: the scores as
    summary values, the sweep as a table (eval/nfe_table) and its plot (eval/nfe_plot)."""
    import wandb

    run = wandb.init(
        project=cfg.wandb.project,
        dir=str(Path(cfg.output_file).parent),
        mode="offline" if cfg.wandb.offline else "online",
        job_type="evaluate",
        config={"checkpoint": results["checkpoint"], "ema": results["ema"], "data": results["data"]},
    )
    try:
        logged: dict[str, Any] = {}
        if "fid" in results:
            fid = results["fid"]
            logged |= {f"eval/{fid['key']}": fid["value"], f"eval/{fid['kid_key']}": fid["kid"]}
        if "nll" in results:
            logged["eval/nll_bpd"] = results["nll"]["total_bpd"]
        if "sweep" in results:
            rows = results["sweep"]["rows"]
            table = wandb.Table(
                columns=list(nfe_table.COLUMNS), data=[[r[c] for c in nfe_table.COLUMNS] for r in rows]
            )
            logged |= {
                "eval/nfe_table": table,
                "eval/nfe_plot": wandb.Image(results["sweep"]["files"]["plot"]),
            }
        run.log(logged)
    finally:
        run.finish()


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
    for r in results.get("sweep", {}).get("rows", []):
        table.add_row(
            f"{r['sampler']}, {r['nfe']} calls: FID / KID (N = {r['n']}) / s per image",
            f"{r['fid']:.2f} / {r['kid']:.4f} / {r['seconds_per_image']:.3f}",
        )
    if "nll" in results:
        table.add_row(
            f"NLL bits/dim ({results['nll']['n']} held-out images)", f"{results['nll']['total_bpd']:.3f}"
        )
    Console().print(table)
    Console().print(f"written to {path}")


def main(cfg: DictConfig) -> Any:
    return exit_on_config_error(lambda: evaluate(cfg))
