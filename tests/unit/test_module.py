import math

import lightning as L
import pytest
import torch
from torch import nn

from ddpm.diffusion import DDIMSampler
from ddpm.training import NonFiniteLossError
from tests.helpers.tiny import loader, tiny_module, trainer


def test_training_updates_net_and_ema_and_warms_up_lr(tmp_path):
    module = tiny_module(lr=1e-2, warmup_steps=4, ema_decay=0.9, ema_warmup=False)
    start = [p.clone() for p in module.net.parameters()]
    lrs = []

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(max_steps=6, callbacks=[RecordLR()]).fit(module, loader())
    assert lrs[:5] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])
    changed = [not torch.equal(a, b) for a, b in zip(start, module.net.parameters(), strict=True)]
    assert any(changed)
    ema_changed = [not torch.equal(a, b) for a, b in zip(start, module.ema.module.parameters(), strict=True)]
    assert any(ema_changed)
    # the average lags behind: it differs from the current weights
    assert any(
        not torch.equal(a, b)
        for a, b in zip(module.net.parameters(), module.ema.module.parameters(), strict=True)
    )


def test_non_finite_loss_stops_with_the_step_number():
    module = tiny_module()
    module.net.forward = lambda x, t: torch.full_like(x, float("nan"))
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at step 0: lower optim.lr"):
        trainer(max_steps=2).fit(module, loader())


def test_checkpoint_round_trip_keeps_ema(tmp_path):
    module = tiny_module(ema_decay=0.5)
    t = trainer(max_steps=3)
    t.fit(module, loader())
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["global_step"] == 3
    fresh = tiny_module()
    fresh.load_state_dict(ckpt["state_dict"])
    for a, b in zip(fresh.ema.module.parameters(), module.ema.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sample_uses_ema_weights_in_eval_mode():
    module = tiny_module()
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.normal_(std=0.1)
    module.ema.module.train()
    sampler = DDIMSampler(module.diffusion, steps=3)
    a = module.sample(sampler, 2, generator=torch.Generator().manual_seed(0))
    b = module.sample(sampler, 2, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert a.shape == (2, 1, 8, 8) and not torch.allclose(a, b)
    assert module.ema.module.training  # mode restored


def test_validation_loss_is_reproducible():
    module = tiny_module()
    batch = next(iter(loader()))
    assert torch.equal(module.validation_step(batch, 0), module.validation_step(batch, 0))


def test_plain_module_forward():
    module = tiny_module()
    x = torch.randn(2, 1, 8, 8)
    assert module(x, torch.tensor([0, 5])).shape == x.shape
    assert isinstance(module.net, nn.Module) and module.num_parameters > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the deferred (sync-free) check is the CUDA path")
def test_cuda_non_finite_loss_is_caught_one_step_late():
    from ddpm.training.finite_loss import FiniteLossCheck

    check = FiniteLossCheck()
    check.submit(torch.tensor(float("nan"), device="cuda"), step=3)  # no error yet: nothing was read
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        check.submit(torch.tensor(1.0, device="cuda"), step=4)
    check.submit(torch.tensor(float("nan"), device="cuda"), step=5)
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        check.flush()  # what on_save_checkpoint and on_train_end do


def test_checkpoints_and_train_end_flush_the_loss_check(tmp_path):
    """On a GPU the last step's loss is still in flight: it is read before any checkpoint and at the end."""
    from ddpm.training.finite_loss import FiniteLossCheck

    flushes: list[int] = []

    class Recording(FiniteLossCheck):
        def flush(self) -> None:
            flushes.append(1)
            super().flush()

    module = tiny_module()
    module.loss_check = Recording()
    t = trainer(max_steps=2)
    t.fit(module, loader())
    at_end = len(flushes)
    t.save_checkpoint(tmp_path / "m.ckpt")
    assert at_end == 1 and len(flushes) == 2


def test_progress_bar_reads_metrics_every_n_steps(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from ddpm.training import StepProgressBar

    reads: list[int] = []
    read_metrics = RichProgressBar.get_metrics  # what reads the logged (GPU) values

    def counting(self, trainer, pl_module):
        if trainer.training:
            reads.append(trainer.global_step)
        return read_metrics(self, trainer, pl_module)

    monkeypatch.setattr(RichProgressBar, "get_metrics", counting)

    class CountingBar(StepProgressBar):
        pass

    L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        max_steps=7,
        callbacks=[CountingBar(metrics_every_n_steps=3)],
    ).fit(tiny_module(), loader(64))
    assert reads == [3, 6]


def test_eta_is_the_sooner_of_max_steps_and_max_time():
    from ddpm.training.headless_progress import clock, eta_seconds

    assert eta_seconds(10, 90, 20.0, None) == 180.0  # 2 s per step, 90 steps left
    assert eta_seconds(10, 90, 20.0, 60.0) == 60.0  # the time budget ends first
    assert eta_seconds(0, 90, 0.0, None) is None and eta_seconds(5, None, 1.0, None) is None
    assert clock(59.6) == "1:00" and clock(3725) == "1:02:05" and clock(None) == "?"


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_lr_decays_to_the_final_ratio_at_max_steps(decay):
    """After a 2-step warm-up the rate falls to final_lr_ratio * lr at max_steps: each step's rate, recorded in a
    real Trainer, against the decay written out from its definition."""
    lr, warmup, max_steps, final = 1e-2, 2, 10, 0.1
    module = tiny_module(lr=lr, warmup_steps=warmup, lr_decay=decay, final_lr_ratio=final)
    lrs = []

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(max_steps=max_steps, callbacks=[RecordLR()]).fit(module, loader(n=96))
    assert len(lrs) == max_steps

    def expected(step: int) -> float:
        # LambdaLR evaluates the rate of step k after k optimizer steps, when the global step is k
        p = step / max_steps
        shape = 0.5 * (1 + math.cos(math.pi * p)) if decay == "cosine" else 1 - p
        return lr * min(1.0, (step + 1) / warmup) * (final + (1 - final) * shape)

    assert lrs == pytest.approx([expected(k) for k in range(max_steps)], rel=1e-9)
    assert lrs[-1] < lrs[warmup] < lr


def test_lr_decay_follows_max_time_when_it_ends_the_run_first(monkeypatch):
    """With a wall-clock budget, progress is the larger of the step fraction and the time fraction."""
    from lightning.pytorch.callbacks import Timer

    from ddpm.training.module import lr_at, training_progress

    timer = Timer(duration="00:00:01:40")  # 100 s
    monkeypatch.setattr(timer, "time_elapsed", lambda stage="train": 75.0)
    fake = type("T", (), {"max_steps": 1000, "global_step": 100, "callbacks": [timer]})()
    assert training_progress(fake) == pytest.approx(0.75)  # time: 75%, steps: 10%
    fake.global_step = 900
    assert training_progress(fake) == pytest.approx(0.9)
    fake.max_steps, fake.callbacks = -1, []
    assert training_progress(fake) == 0.0
    assert lr_at(50, 2.0, 0, "cosine", 0.5) == pytest.approx(1.0)
    assert lr_at(50, 2.0, 0, "constant", 0.9) == 2.0
    with pytest.raises(ValueError, match="is not one of constant, cosine, linear"):
        tiny_module(lr_decay="step")
