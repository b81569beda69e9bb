"""The optimiser step shared by pre-training and fine-tuning."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from . import distributed as D


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def amp_context(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def optimizer_step(loss, model, optimizer, scaler, grad_clip: float, step: int, where: str = "") -> float:
    """Backward, (unscale + clip), step; returns the loss averaged over ranks, and stops with
    NonFiniteLoss on NaN/inf (every rank sees the same averaged value, so all stop together)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    mean_loss = D.all_reduce_mean(loss.detach()).item()
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(f"loss is {mean_loss} at step {step}; stopping. {where}".strip())
    return mean_loss
