import pytest
import torch
from torch import nn

from ddpm.training import EMA, ema_decay_at


def test_decay_warms_up_then_saturates():
    assert ema_decay_at(0, 0.9999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.9999) == pytest.approx(0.91)
    assert ema_decay_at(10**7, 0.9999) == 0.9999
    assert ema_decay_at(0, 0.9999, warmup=False) == 0.9999


def test_update_is_an_exponential_moving_average():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.9, warmup=False)
    start = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(7.0)
    ema.update(model, step=0)
    for s, e, p in zip(start, ema.module.parameters(), model.parameters(), strict=True):
        assert torch.allclose(e, 0.9 * s + 0.1 * p)
        assert not e.requires_grad
    assert torch.equal(ema.module[1].running_mean, torch.full((3,), 7.0))  # buffers are copied


def test_ema_is_saved_in_state_dict():
    ema = EMA(nn.Linear(2, 2))
    assert set(ema.state_dict()) == {"module.weight", "module.bias"}
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        EMA(nn.Linear(2, 2), decay=1.0)
