"""Detector checkpoints: build, load pre-trained encoders into them, score images."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from . import checkpoint as ckpt
from .models import Detector, encoder_from_config
from .optim import amp_context


def load_pretrained_encoder(detector: Detector, path: str) -> Dict[str, List[str]]:
    """Copy the encoder of a pre-training checkpoint into `detector`; refuses anything but the
    expected differences (the projection head is dropped, the classifier is new)."""
    saved = ckpt.load(path)
    state = saved["model"] if "model" in saved else saved
    result = detector.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(f"init: {path} does not fit this encoder: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if not any(k.startswith("classifier.") for k in result.missing_keys):
        raise ValueError(f"init: {path} already holds a classifier; give a pre-training checkpoint")
    return {"missing": result.missing_keys, "unexpected": result.unexpected_keys}


def load_detector(path: str, device) -> Tuple[Detector, Dict[str, Any]]:
    """A fine-tuned detector checkpoint -> (model in eval mode on `device`, its config)."""
    saved = ckpt.load(path)
    if saved.get("kind") != "detector":
        raise ValueError(f"--ckpt: {path} is not a detector checkpoint (kind={saved.get('kind')!r}); "
                         "fine-tune a pre-trained encoder with finetune.py first")
    cfg = saved["config"]
    model = Detector(encoder_from_config(cfg["model"]))
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def score_crops(model, crops: List[torch.Tensor], device, amp: str = "none") -> List[float]:
    """P(fake) per image from its crops (mean logit over the crops of one image)."""
    out: List[float] = []
    shapes = {tuple(c.shape[1:]) for c in crops}
    with amp_context(amp, device):
        if len(shapes) == 1:
            logits = model(torch.cat(crops).to(device)).float().cpu()
            k = 0
            for c in crops:
                out.append(torch.sigmoid(logits[k:k + c.shape[0]].mean()).item())
                k += c.shape[0]
        else:
            for c in crops:
                out.append(torch.sigmoid(model(c.to(device)).float().mean()).item())
    return out


def load_encoder(path: str, device):
    """The encoder of a pre-training or detector checkpoint -> (encoder in eval mode, its config)."""
    saved = ckpt.load(path)
    cfg = saved.get("config", {})
    if "model" not in cfg:
        raise ValueError(f"--ckpt: {path} has no model description in its config")
    encoder = encoder_from_config(cfg["model"])
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in saved["model"].items() if k.startswith(prefix)}
    encoder.load_state_dict(state)
    return encoder.to(device).eval(), cfg
