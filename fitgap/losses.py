"""Supervised contrastive loss (Khosla et al. 2020), computed in float32 even under autocast."""
from __future__ import annotations

from typing import Optional

import torch


def supcon_loss(features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                temperature: float = 0.1, base_temperature: Optional[float] = None,
                contrast: Optional[torch.Tensor] = None, contrast_labels: Optional[torch.Tensor] = None,
                anchor_offset: int = 0) -> torch.Tensor:
    """SupCon over L2-normalised features.

    Args:
        features: [N, D] (or [B, V, D]: V views of B samples, labels then per sample).
        labels: [N] (or [B]) class ids; None means every sample is its own class (SimCLR).
        temperature, base_temperature: loss = -(t / t_base) * mean log-prob of the positives;
            base_temperature defaults to temperature.
        contrast, contrast_labels: the samples to contrast with (e.g. gathered from all ranks);
            default: the anchors themselves. Anchor i sits at row anchor_offset + i of contrast.
    Returns:
        the mean over anchors; an anchor without positives contributes 0.
    """
    if features.dim() == 3:
        b, v, d = features.shape
        features = features.transpose(0, 1).reshape(v * b, d)
        labels = torch.arange(b, device=features.device) if labels is None else labels
        labels = labels.repeat(v)
    if labels is None:
        labels = torch.arange(features.shape[0], device=features.device)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"supcon_loss: {labels.shape[0]} labels for {features.shape[0]} features")
    if contrast is None:
        contrast, contrast_labels, anchor_offset = features, labels, 0
    base_temperature = temperature if base_temperature is None else base_temperature
    with torch.autocast(device_type=features.device.type, enabled=False):
        anchors = features.float()
        contrast = contrast.float()
        n, m = anchors.shape[0], contrast.shape[0]
        logits = anchors @ contrast.T / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        idx = torch.arange(n, device=anchors.device)
        not_self = torch.ones((n, m), dtype=torch.bool, device=anchors.device)
        not_self[idx, idx + anchor_offset] = False
        positive = (labels.view(-1, 1) == contrast_labels.view(1, -1)) & not_self
        exp = torch.exp(logits) * not_self
        log_prob = logits - torch.log(exp.sum(dim=1, keepdim=True))
        n_pos = positive.sum(dim=1)
        mean_log_prob_pos = (log_prob * positive).sum(dim=1) / n_pos.clamp(min=1)
        loss = -(temperature / base_temperature) * mean_log_prob_pos
        return loss.mean()
