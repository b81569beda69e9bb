"""The optimiser step and the learning-rate schedule shared by pre-training and fine-tuning."""
from __future__ import annotations

import contextlib
import math
from typing import List

import torch
import torch.nn as nn

from . import distributed as D
from .errors import FitgapError


class NonFiniteLoss(FitgapError, RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def amp_context(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def set_lr(optimizer, lr: float) -> None:
    """Every parameter group at `lr` times its own `lr_scale` (1 when the group has none)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def optimizer_step(loss, model, optimizer, scaler, grad_clip: float, step: int, where: str = "") -> float:
    """Backward, unscale, clip, step; returns the loss averaged over ranks.

    Stops with NonFiniteLoss BEFORE the weights are touched when the loss or (without an fp16
    GradScaler, which skips such steps itself) the gradient norm is NaN/inf: a finite loss can still
    give a NaN gradient (seen with bf16 convolutions on the CPU), and one such step would otherwise
    poison every weight and the next checkpoint. Under DDP the gradients and the averaged loss are the
    same on every rank, so all ranks stop together. One host sync per step for both checks."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # a no-op when the scaler is disabled
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    mean_loss, grad_norm = torch.stack([D.all_reduce_mean(loss.detach()).float(), norm.float()]).tolist()
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(f"loss is {mean_loss} at step {step}; stopping. {where}".strip())
    if not math.isfinite(grad_norm) and not scaler.is_enabled():
        raise NonFiniteLoss(f"gradient norm is {grad_norm} at step {step} (loss {mean_loss:.4f}); stopping "
                            f"before the weights change. {where}".strip())
    scaler.step(optimizer)
    scaler.update()
    return mean_loss


def cosine_schedule(base: float, total_steps: int, warmup_steps: int, min_value: float = 0.0) -> List[float]:
    """Per-iteration linear warm-up to `base`, then cosine decay to `min_value`."""
    out = []
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    for s in range(total_steps):
        if s < warmup_steps:
            out.append(base * (s + 1) / warmup_steps)
        else:
            t = (s - warmup_steps) / max(1, total_steps - warmup_steps)
            out.append(min_value + 0.5 * (base - min_value) * (1 + math.cos(math.pi * t)))
    return out
