"""Console noise from Lightning that a user cannot act on, silenced once per process (`quiet_lightning`).

- Lightning warns on every mid-epoch resume unless the DataLoader itself is stateful; ours resumes through the
  DataModule's state_dict (EpochSampler), so the warning is wrong here.
- It warns that checkpoints load with weights_only=False (they are this project's own), and says so again each time
  it saves one at the end of a run (it saves the whole state, as it should).
- It warns about its own use of torch's pytree API, and advertises a cloud logger on every run.
"""

from __future__ import annotations

import logging
import warnings

_WARNINGS = (
    ".*your dataloader is not resumable.*",
    ".*`weights_only` was not set.*",
    ".*isinstance.treespec, LeafSpec.*",
)
# logger name -> text whose records it drops
_LOG_RECORDS = {
    "lightning.pytorch.utilities.rank_zero": "litlogger",
    "lightning.pytorch.trainer.connectors.checkpoint_connector": "`weights_only` was not set",
}


def quiet_lightning() -> None:
    """Install the filters (idempotent: a sweep runs many jobs in one process)."""
    for message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, text in _LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(getattr(f, "drops", None) == text for f in logger.filters):
            logger.addFilter(_Drop(text))


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.drops = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.drops not in record.getMessage()
