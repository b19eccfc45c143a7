"""Hydra rewrites a run folder's record of its config (.hydra/*.yaml) before the job starts. When train.py is pointed at
a folder that holds a run and then refuses to resume it (another model), the folder must be left as it was: this
Hydra callback keeps the record's bytes at the start of the run, and `restore` puts them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_kept: dict[Path, bytes] = {}


class KeepRunRecord(Callback):
    """Registered in conf/hydra/default.yaml (hydra.callbacks.run_record)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _kept.clear()
        try:
            record = Path(str(config.hydra.run.dir)) / str(config.hydra.output_subdir)
        except Exception:  # a run folder that only resolves inside the job is a new one: nothing to keep
            return
        if record.is_dir():
            _kept.update({p: p.read_bytes() for p in record.glob("*.yaml")})


def restore() -> None:
    """Put back the run folder's record as it was before this run started (nothing if the folder was new)."""
    for path, data in _kept.items():
        path.write_bytes(data)
