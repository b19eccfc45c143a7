"""`python evaluate.py ckpt_path=...`: FID and KID (N, sampler) against the held-out split and NLL in bits/dim, to JSON;
with sweep.samplers=[...] sweep.steps=[...] the quality-vs-NFE table (markdown, CSV, PNG) instead of one sampler."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Subset

from ddpm.build import build_held_out_data, build_sampler
from ddpm.checkpoint import load_checkpoint
from ddpm.cli.conditional import refuse_unless_conditional
from ddpm.cli.errors import check_writable, run_job
from ddpm.cli.student import sampler_chosen, sampler_for
from ddpm.diffusion import SAMPLERS, Sampler
from ddpm.diffusion.guidance import spread_labels
from ddpm.diffusion.self_conditioning import refined
from ddpm.errors import ConfigError
from ddpm.host_memory import retain_freed_memory
from ddpm.images import to_uint8
from ddpm.metrics import fid_key, guidance_table, install_reference, make_fid, nfe_table, score_samples
from ddpm.metrics.classifier import load_or_train_classifier, predict
from ddpm.metrics.kid import format_kid
from ddpm.progress import progress_bar
from ddpm.schema import check_evaluate

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Check the request, load the checkpoint and the held-out data, score what metrics asks (FID / KID of one
    sampler, of a sampler sweep or of a guidance sweep; NLL), write the results and their reports."""
    sweep = check_request(cfg)
    metric = make_fid(cfg.fid.weights_path) if "fid" in cfg.metrics else None  # fail before any sampling
    module, run_cfg = load_checkpoint(cfg.ckpt_path)
    guidances = check_guidance(cfg, sweep, module.num_classes)
    samplers = sweep_samplers(module.diffusion, sweep, cfg.sampler) if sweep.get("samplers") else {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    datamodule = build_held_out_data(run_cfg, cfg.data_root)
    sampler_node = sampler_for(cfg.sampler, run_cfg, sampler_chosen())

    results: dict[str, Any] = {
        "checkpoint": str(cfg.ckpt_path),
        "ema": cfg.use_ema,
        "data": datamodule.source,
    }
    if metric is not None:
        scorer = Scorer(module, metric, datamodule, cfg, device)
        if scorer.classifier_accuracy is not None:
            results["classifier_held_out_accuracy"] = scorer.classifier_accuracy
        if guidances:
            results["guidance_sweep"] = guidance_sweep(
                scorer, build_sampler(module.diffusion, sampler_node), guidances
            )
        elif samplers:
            results["sweep"] = sampler_sweep(scorer, samplers)
        else:
            results["fid"] = one_sampler(
                scorer, build_sampler(module.diffusion, sampler_node), cfg.get("guidance")
            )
    if "nll" in cfg.metrics:
        results["nll"] = bits_per_dim(module, datamodule.val_set, cfg.nll, cfg.use_ema, device)
    write_results(results, cfg)
    return results


def check_request(cfg: DictConfig) -> DictConfig:
    """Everything about the request that can be checked before loading anything; returns its sweep node."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    check_evaluate(cfg)  # ranges; the types were checked when Hydra composed the config (ddpm.schema)
    check_writable(Path(cfg.output_file).parent, "output_file")
    retain_freed_memory()  # no page faults on each batch's activations: see ddpm.host_memory
    sweep = cfg.get("sweep") or {}
    if (sweep.get("samplers") or sweep.get("guidance")) and "fid" not in cfg.metrics:
        raise ConfigError("a sweep needs the fid metric: add fid to metrics (metrics=[fid])")
    if sweep.get("samplers") and sweep.get("guidance"):
        raise ConfigError("sweep over samplers or over guidance, not both: leave one of them empty")
    return sweep


class Scorer:
    """FID and KID of a model's samples against the held-out split (the reference statistics installed once), with
    the class accuracy of the samples for a class-conditional model (a classifier trained on the training split)."""

    def __init__(self, module, metric, datamodule, cfg: DictConfig, device: torch.device) -> None:
        self.module, self.metric, self.fid, self.use_ema = module, metric.to(device), cfg.fid, cfg.use_ema
        self.device = device
        split = cfg.fid.reference_split
        self.n_ref = install_reference(
            metric, datamodule, cfg.fid.cache_dir, cfg.fid.reference_n, cfg.fid.weights_path, split=split
        )
        what = "held-out split" if split == "held_out" else "training split (unflipped)"
        self.reference = f"{datamodule.source} {what}, {self.n_ref} images"
        self.classifier, self.classifier_accuracy = None, None
        if module.num_classes is not None:
            self.classifier, self.classifier_accuracy = load_or_train_classifier(
                datamodule, module.num_classes, cfg.fid.cache_dir, cfg.classifier.epochs
            )

    def __call__(self, sampler: Sampler, guidance: float | None = None) -> dict[str, Any]:
        """FID and KID of fid.n samples and the seconds per image; for a class-conditional model the classes are
        spread evenly (image i of each batch is class i mod K) and the class accuracy of the same images (as PNG
        bytes) is added."""
        module, n = self.module, self.fid.n
        seconds, correct = 0.0, 0

        def draw(count: int, generator: torch.Generator) -> torch.Tensor:
            nonlocal seconds, correct
            start = time.perf_counter()
            kwargs = {}
            if module.num_classes is not None:
                labels = spread_labels(count, module.num_classes)
                kwargs = {"labels": labels, "guidance": guidance}
            images = module.sample(
                sampler, count, generator=generator, use_ema=self.use_ema, progress=progress_bar, **kwargs
            )
            seconds += time.perf_counter() - start
            if self.classifier is not None:  # judged against the very labels the images were drawn with
                as_saved = to_uint8(images).float().cpu() / 127.5 - 1.0
                correct += int((predict(self.classifier, as_saved) == labels).sum())
            return images

        what = f"{sampler.label}" + (f", guidance {guidance:g}" if guidance is not None else "")
        log.info("FID: %d samples with %s against the %s", n, what, self.reference)
        scores = score_samples(self.metric, draw, n, self.fid.batch_size, self.fid.seed, device=self.device)
        out = {**scores, "seconds_per_image": seconds / n}
        if self.classifier is not None:
            out["accuracy"] = correct / n
        return out


def one_sampler(score: Scorer, sampler: Sampler, guidance: float | None) -> dict[str, Any]:
    """The `fid` section: FID and KID of one sampler, named as training logs them (`fid_key`)."""
    scores, n = score(sampler, guidance), score.fid.n
    out = {
        "key": fid_key(n, sampler.label),
        "value": scores["fid"],
        "kid_key": fid_key(n, sampler.label, "kid"),
        "kid": scores["kid"],
        "kid_std": scores["kid_std"],
        "n": n,
        "sampler": sampler.label,
        "network_calls_per_image": len(sampler.timesteps),
        "seconds_per_image": scores["seconds_per_image"],
        "reference": score.reference,
    }
    if score.classifier is not None:
        w = score.module.hparams.guidance if guidance is None else guidance
        out |= {"guidance": w, "class_accuracy": scores["accuracy"]}
    return out


def guidance_sweep(score: Scorer, sampler: Sampler, guidances: list[float]) -> dict[str, Any]:
    """The `guidance_sweep` section: a row per guidance scale, the same seeds in each."""
    rows = []
    for w in guidances:
        rows.append({"guidance": w, "nfe": len(sampler.timesteps), "n": score.fid.n, **score(sampler, w)})
        r = rows[-1]
        log.info(
            "guidance %g: FID %.2f, KID %.4f, class accuracy %.1f%%",
            w,
            r["fid"],
            r["kid"],
            100 * r["accuracy"],
        )
    return {"reference": score.reference, "seed": score.fid.seed, "sampler": sampler.label, "rows": rows}


def sampler_sweep(score: Scorer, samplers: dict[tuple[str, int], Sampler]) -> dict[str, Any]:
    """The `sweep` section: a row per (sampler, steps) cell, the same seeds in each."""
    rows = []
    for (name, steps), sampler in samplers.items():
        nfe = len(sampler.timesteps)
        rows.append({"sampler": name, "steps": steps, "nfe": nfe, "n": score.fid.n, **score(sampler)})
        log.info("%s: FID %.2f, KID %.4f", sampler.label, rows[-1]["fid"], rows[-1]["kid"])
    return {"reference": score.reference, "seed": score.fid.seed, "rows": rows}


def bits_per_dim(module, held_out, nll: DictConfig, use_ema: bool, device: torch.device) -> dict[str, Any]:
    """The `nll` section: the variational bound in bits/dim (total, prior and decoder terms) averaged over the first
    nll.n held-out images, one x_t per term from the seed nll.seed."""
    net = module.ema.module if use_ema else module.net
    net.eval()
    n = min(nll.n, len(held_out))
    loader = DataLoader(Subset(held_out, range(n)), batch_size=nll.batch_size)
    generator = torch.Generator(device=device).manual_seed(nll.seed)
    parts = {"total_bpd": [], "prior_bpd": [], "decoder_bpd": []}
    for i, batch in enumerate(loader):
        x0 = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        model = net
        if module.num_classes is not None:  # the bound of p(x_0 | c) with each image's own class
            labels = batch[1].to(device)
            model = lambda x, t, y=labels, **kw: net(x, t, y, **kw)  # noqa: E731
        # a self-conditioned network: no chain carries an estimate here, so two calls per t (see `refined`)
        if module.diffusion.self_condition:
            model = refined(model, module.diffusion.data_prediction)
        log.info("NLL: batch %d / %d (%d network calls)", i + 1, len(loader), module.diffusion.num_timesteps)
        out = module.diffusion.calc_bpd_loop(model, x0, generator=generator, progress=progress_bar)
        parts["total_bpd"].append(out["total_bpd"].cpu())
        parts["prior_bpd"].append(out["prior_bpd"].cpu())
        parts["decoder_bpd"].append(out["vb_bpd"][:, 0].cpu())
    return {**{k: float(torch.cat(v).mean()) for k, v in parts.items()}, "n": n}


def write_results(results: dict[str, Any], cfg: DictConfig) -> None:
    """The results as JSON at output_file, a sweep's table, CSV and plot beside it, a summary on the console, and
    the W&B run (wandb.enabled)."""
    out = Path(cfg.output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    about = f"{results['checkpoint']} (EMA: {results['ema']})"
    if "sweep" in results:
        results["sweep"]["files"] = nfe_table.write_report(
            results["sweep"], about, results["data"], out.parent
        )
    if "guidance_sweep" in results:
        results["guidance_sweep"]["files"] = guidance_table.write_report(
            results["guidance_sweep"],
            results["classifier_held_out_accuracy"],
            about,
            results["data"],
            out.parent,
        )
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, out)
    if cfg.wandb.enabled:
        log_to_wandb(results, cfg)


def check_guidance(cfg: DictConfig, sweep: DictConfig, num_classes: int | None) -> list[float]:
    """The guidance scales of sweep.guidance (empty: no guidance sweep); ConfigError for guidance asked of an
    unconditional checkpoint (the values themselves were checked by check_evaluate)."""
    asked = list(sweep.get("guidance") or [])
    refuse_unless_conditional(
        cfg.ckpt_path, num_classes, {"guidance": cfg.get("guidance"), "sweep.guidance": asked}
    )
    return [float(w) for w in asked]


def sweep_samplers(diffusion, sweep: DictConfig, base: DictConfig) -> dict[tuple[str, int], Sampler]:
    """Every (sampler, steps) cell of the sweep, built (so every mistake is found) before any sampling. Each cell is
    the sampler group's option <name> with its steps, and the run's sampler.compile."""
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
    for name in names:  # the group option as Hydra composes it for this app (its search path, its schema)
        node = compose(config_name="evaluate", overrides=[f"sampler={name}"]).sampler
        node.compile = bool(base.get("compile", False))
        for s in steps:
            node.steps = s
            cells[(name, s)] = build_sampler(diffusion, node, what=f"sweep cell {name} with {s} steps")
    return cells


def log_to_wandb(results: dict[str, Any], cfg: DictConfig) -> None:
    """The results as an offline (or online) W&B run of job type `evaluate` in the output folder: the scores as
    summary values, a sweep as a table and its plot (eval/nfe_table and eval/nfe_plot, eval/guidance_table and
    eval/guidance_plot)."""
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
        for key, report, name in (
            ("sweep", nfe_table, "nfe"),
            ("guidance_sweep", guidance_table, "guidance"),
        ):
            if key in results:
                columns = list(report.COLUMNS)
                rows = [[r[c] for c in columns] for r in results[key]["rows"]]
                logged |= {
                    f"eval/{name}_table": wandb.Table(columns=columns, data=rows),
                    f"eval/{name}_plot": wandb.Image(results[key]["files"]["plot"]),
                }
        run.log(logged)
    finally:
        run.finish()


# a sweep's rows in the console summary: (results key, what the row is, its values)
SWEEP_LINES = (
    (
        "guidance_sweep",
        lambda r: f"guidance {r['guidance']:g}: FID / KID / class accuracy (N = {r['n']})",
        lambda r: f"{r['fid']:.2f} / {r['kid']:.4f} / {100 * r['accuracy']:.1f}%",
    ),
    (
        "sweep",
        lambda r: f"{r['sampler']}, {r['nfe']} calls: FID / KID (N = {r['n']}) / s per image",
        lambda r: f"{r['fid']:.2f} / {r['kid']:.4f} / {r['seconds_per_image']:.3f}",
    ),
)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) for each score in the results, as the console summary shows them."""
    rows = []
    fid = results.get("fid")
    if fid:
        rows.append((f"{fid['key']} ({fid['reference']})", f"{fid['value']:.2f}"))
        rows.append((f"{fid['kid_key']} (mean ± std over subsets)", format_kid(fid["kid"], fid["kid_std"])))
        if "class_accuracy" in fid:
            rows.append(
                (f"class accuracy (guidance {fid['guidance']:g})", f"{100 * fid['class_accuracy']:.1f}%")
            )
    if "classifier_held_out_accuracy" in results:
        accuracy = results["classifier_held_out_accuracy"]
        rows.append(("classifier accuracy on the held-out split", f"{100 * accuracy:.1f}%"))
    for key, what, value in SWEEP_LINES:
        rows += [(what(r), value(r)) for r in results.get(key, {}).get("rows", [])]
    if "nll" in results:
        nll = results["nll"]
        rows.append((f"NLL bits/dim ({nll['n']} held-out images)", f"{nll['total_bpd']:.3f}"))
    return rows


def print_summary(results: dict[str, Any], path: Path) -> None:
    table = Table(title=f"evaluation of {results['checkpoint']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for what, value in summary_rows(results):
        table.add_row(what, value)
    Console().print(table)
    Console().print(f"written to {path}")


def main(cfg: DictConfig) -> Any:
    return run_job(
        lambda: evaluate(cfg), interrupted="interrupted: evaluation stopped, no metrics were written"
    )
