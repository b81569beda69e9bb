"""The shared optimiser step: a NaN gradient stops the run before any weight changes."""
import pytest
import torch
import torch.nn as nn

from fitgap.optim import NonFiniteLoss, optimizer_step


def _setup():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, opt, scaler


def test_finite_step_updates_and_returns_loss():
    model, opt, scaler = _setup()
    before = model.weight.detach().clone()
    loss = model(torch.ones(2, 4)).pow(2).mean()
    assert optimizer_step(loss, model, opt, scaler, 0.0, 0) == pytest.approx(loss.item())
    assert not torch.equal(before, model.weight)


def test_nan_gradient_with_finite_loss_stops_before_the_update():
    model, opt, scaler = _setup()
    model.weight.register_hook(lambda g: g * float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.ones(2, 4)).pow(2).mean()
    assert torch.isfinite(loss)
    with pytest.raises(NonFiniteLoss, match="gradient norm is nan at step 7"):
        optimizer_step(loss, model, opt, scaler, 0.0, 7)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_nan_loss_stops():
    model, opt, scaler = _setup()
    loss = model(torch.ones(2, 4)).sum() * float("nan")
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 3"):
        optimizer_step(loss, model, opt, scaler, 1.0, 3)


def test_clipping_bounds_the_update():
    model, opt, scaler = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    loss = (model(torch.ones(2, 4)) * 1000).sum()
    optimizer_step(loss, model, opt, scaler, 0.5, 0)
    step = torch.cat([(model.weight - before).flatten()])
    assert step.norm() <= 0.5 + 1e-5
