"""Sweepers that outlive their failing jobs: `python train.py -m ...` (GridSweeper, the default of conf/hydra) and
`hparams_search=...` (OptunaSweeper). Hydra's own stop the whole sweep at the first job that fails, or refuse every
job when one of them cannot be composed. Here a failing job prints its sentence naming the job (ddpm.cli.errors),
the sweep goes on, and ends with a table of every job (ddpm.cli.sweep_report) and a non-zero exit when one failed.

Hydra finds sweepers only in the hydra_plugins namespace package, hence this module outside src/ddpm.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as HydraOptunaSweeper
from omegaconf import OmegaConf

from ddpm.cli.app import composition_error_sentence
from ddpm.cli.sweep_report import JobRow, finish, row_of, shown_overrides


class GridSweeper(BasicSweeper):
    """Hydra's BasicSweeper (every combination, in order), except that each job's config is composed on its own (one
    that cannot be is that job's failure) and a failed job is recorded, not raised."""

    def sweep(self, arguments: list[str]) -> Any:
        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params), self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        rows: list[JobRow] = []
        first = 0
        while not self.is_done():
            batch = self.get_job_batch()
            runs: list[list[tuple[int, list[str]]]] = [[]]  # consecutive composable jobs, launched together
            for i, job in enumerate(batch):
                problem = self.composition_problem(job)
                if problem is None:
                    runs[-1].append((first + i, list(job)))
                    continue
                print(
                    f"error: job {first + i} ({shown_overrides(job)}): {problem}", file=sys.stderr, flush=True
                )
                rows.append(JobRow(first + i, shown_overrides(job), False, problem, user_mistake=True))
                runs.append([])
            for run in filter(None, runs):
                returns = self.launcher.launch([job for _, job in run], initial_job_idx=run[0][0])
                rows.extend(row_of(num, ret) for (num, _), ret in zip(run, returns, strict=True))
            first += len(batch)
        finish(sweep_dir, rows, "sweep")
        return rows

    def composition_problem(self, job: list[str]) -> str | None:
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        except Exception as e:
            return composition_error_sentence(e) or str(e).strip().splitlines()[0]
        return None


class _RecordingLauncher:
    """Passes launches through to Hydra's launcher and keeps a row per job."""

    def __init__(self, launcher: Any, rows: list[JobRow]) -> None:
        self.launcher, self.rows = launcher, rows

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        self.rows.extend(row_of(initial_job_idx + i, r) for i, r in enumerate(returns))
        return returns


class OptunaSweeper(HydraOptunaSweeper):
    """hydra-optuna-sweeper's sweeper: a trial that fails is told to Optuna as failed (its max_failure_rate, 1.0 in
    conf/hparams_search, lets the study go on), and the study ends with the table of every trial."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.rows: list[JobRow] = []
        self.sweeper.launcher = _RecordingLauncher(self.sweeper.launcher, self.rows)
        self.sweep_dir = config.hydra.sweep.dir

    def sweep(self, arguments: list[str]) -> None:
        try:
            super().sweep(arguments)
        except ValueError as e:  # Optuna's best_trial when no trial completed
            if not self.rows or any(r.ok for r in self.rows):
                raise
            print(f"error: no trial of the study completed ({e})", file=sys.stderr, flush=True)
        finish(self.sweep_dir, self.rows, "Optuna study")
