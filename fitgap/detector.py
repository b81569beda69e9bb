"""Detector checkpoints: build, load pre-trained encoders into them, score images."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from . import checkpoint as ckpt
from .evaldata import normalize_uint8
from .models import Detector, RealDistance, encoder_from_config, has_distance
from .optim import amp_context
from .errors import InputError


def load_pretrained_encoder(detector: Detector, path: str) -> Dict[str, List[str]]:
    """Copy the encoder of a pre-training checkpoint into `detector`; refuses anything but the
    expected differences (the projection heads are dropped, the classifier is new)."""
    saved = ckpt.load(path)
    state = saved["model"] if "model" in saved else saved
    result = detector.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(("head.", "backbone_head."))]
    if missing or unexpected:
        raise InputError(f"init: {path} does not fit this encoder: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if not any(k.startswith("classifier.") for k in result.missing_keys):
        raise InputError(f"init: {path} already holds a classifier; give a pre-training checkpoint")
    return {"missing": result.missing_keys, "unexpected": result.unexpected_keys}


def load_detector(path: str, device) -> Tuple[Detector, Dict[str, Any]]:
    """A fine-tuned detector checkpoint -> (model in eval mode on `device`, its config)."""
    saved = ckpt.load(path)
    if saved.get("kind") != "detector":
        raise InputError(f"--ckpt: {path} is not a detector checkpoint (kind={saved.get('kind')!r}); "
                         "fine-tune a pre-trained encoder with finetune.py first")
    cfg = saved["config"]
    encoder = encoder_from_config(cfg["model"], load_weights=False)  # every weight is in the file
    distance = None
    if cfg.get("score", "head") == "distance":
        if not has_distance(saved["model"]):
            raise InputError(f"--ckpt: {path} is configured with score: distance but holds no fitted distance "
                             "(finetune.py fits it into best.pt when training ends: run it again to resume)")
        distance = RealDistance(encoder.num_features)
    model = Detector(encoder, distance)
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), cfg


def check_size(size: Optional[int]) -> None:
    """--size: refuse a non-positive crop size before any work (0 used to mean "the default")."""
    if size is not None and size < 1:
        raise InputError(f"--size: a crop size must be >= 1 px, got {size}")


def crop_size(size: Optional[int], cfg: Dict[str, Any]) -> int:
    """The evaluation crop: --size when given, else the checkpoint's eval.size, else its patch."""
    check_size(size)
    return size if size is not None else (cfg["eval"]["size"] or cfg["patch"])


MAX_CROPS = 64  # crops per forward pass: peak memory does not depend on image size or count


def mean_logits(crops: List[torch.Tensor], forward, max_crops: int = MAX_CROPS) -> List[float]:
    """Mean logit per image from its crops ([K_i, 3, h, w] each), with `forward` mapping a stacked chunk
    to its logits (a sequence of floats). Crops of one shape are batched across images, at most
    `max_crops` per call, so an image of thousands of tiles runs in chunks and peak memory does not grow
    with the image."""
    sums = [0.0] * len(crops)
    by_shape: Dict[tuple, List[Tuple[int, torch.Tensor]]] = {}
    for i, c in enumerate(crops):
        for k in range(c.shape[0]):
            by_shape.setdefault(tuple(c.shape[1:]), []).append((i, c[k]))
    for group in by_shape.values():
        for start in range(0, len(group), max_crops):
            part = group[start:start + max_crops]
            for (i, _), v in zip(part, forward(torch.stack([t for _, t in part]))):
                sums[i] += float(v)
    return [s / c.shape[0] for s, c in zip(sums, crops)]


@torch.no_grad()
def score_logits(model, crops: List[torch.Tensor], device, amp: str = "none", max_crops: int = MAX_CROPS,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> List[float]:
    """Mean logit per image from its crops (normalised float, or uint8 that is normalised here with
    mean/std, one chunk at a time; see mean_logits)."""
    def forward(x):
        x = x.to(device)
        if x.dtype == torch.uint8:
            if mean is None or std is None:
                raise ValueError("score_logits: uint8 crops need mean and std")
            x = normalize_uint8(x, mean, std)
        return model(x).float().view(-1).cpu().tolist()

    with amp_context(amp, device):
        return mean_logits(crops, forward, max_crops)


def score_crops(model, crops: List[torch.Tensor], device, amp: str = "none", max_crops: int = MAX_CROPS,
                mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> List[float]:
    """P(fake) per image from its crops: sigmoid of the mean logit (NaN stays NaN for the caller)."""
    return [sigmoid(v) for v in score_logits(model, crops, device, amp, max_crops, mean, std)]


def sigmoid(v: float) -> float:
    if math.isnan(v):
        return math.nan
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def load_encoder(path: str, device):
    """The encoder of a pre-training or detector checkpoint -> (encoder in eval mode, its config)."""
    saved = ckpt.load(path)
    cfg = saved.get("config", {})
    if "model" not in cfg:
        raise InputError(f"--ckpt: {path} has no model description in its config")
    encoder = encoder_from_config(cfg["model"], load_weights=False)  # every weight is in the checkpoint
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in saved["model"].items() if k.startswith(prefix)}
    encoder.load_state_dict(state)
    return encoder.to(device).eval(), cfg
