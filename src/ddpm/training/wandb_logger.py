"""Lightning's WandbLogger without the warning a user cannot act on."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger. Lightning always passes `anonymous` to wandb.init (None when not asked for), and
    wandb >= 0.2x warns on every run that the setting has no effect; the key is dropped before the run starts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning keeps the wandb.init arguments here
            self._wandb_init.pop("anonymous", None)
