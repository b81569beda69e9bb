"""Fit a detector's real-distance score (models.RealDistance): fine-tuning's `score: distance`.

The detector's encoder, as fine-tuning left it, embeds the real images of the training split; a
Gaussian with a Ledoit-Wolf shrunk covariance (scikit-learn) is fitted to those features, and a new
image's logit is its Mahalanobis distance from them, log-scaled and centred on held-out reals (the
validation split's): 0 at the distance 95 % of those reals stay under, one unit per standard deviation
of their log distances. The head trained on one generator family separates it along one direction of
the features; families whose traces differ from the reals the other way land on the real side of
that direction, while their distance from the reals still grows (benchmarks/RESULTS.md).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import InputError
from .evaldata import image_features
from .models import RealDistance

MIN_REALS = 10          # real training images (at least the crop's size) the Gaussian needs
MIN_HELDOUT = 5         # held-out reals to centre on; fewer: centred on the training reals, said so
MAX_REALS = 5000        # a seeded sample of this many reals at most (a 2048-d Gaussian needs no more)
QUANTILE = 0.95         # logit 0: the held-out reals' distance at this quantile


def _reals(items: Sequence[Tuple[str, int]], limit: int, seed: int) -> List[int]:
    """Indices of the real items, a seeded sample of `limit` of them when there are more."""
    reals = [k for k, it in enumerate(items) if it[1] == 0]
    if len(reals) > limit:
        reals = [reals[k] for k in np.sort(np.random.default_rng(seed).permutation(len(reals))[:limit])]
    return reals


def fit_distance(train: np.ndarray, heldout: Optional[np.ndarray]) -> Tuple[RealDistance, Dict[str, Any]]:
    """A RealDistance fitted to the feature rows `train`, centred and scaled on `heldout` (or on `train`
    when fewer than MIN_HELDOUT rows are given)."""
    from sklearn.covariance import LedoitWolf

    if len(train) < MIN_REALS:
        raise InputError(f"score: distance needs at least {MIN_REALS} real training images, got {len(train)}")
    lw = LedoitWolf().fit(train)
    precision = (lw.precision_ + lw.precision_.T) / 2
    whiten = np.linalg.cholesky(precision).T  # W^T W = precision
    own = heldout is None or len(heldout) < MIN_HELDOUT
    ref = train if own else heldout
    logd = 0.5 * np.log(np.maximum(lw.mahalanobis(ref), 1e-24))
    module = RealDistance(train.shape[1])
    module.mean.copy_(torch.from_numpy(lw.location_).float())
    module.whiten.copy_(torch.from_numpy(whiten).float())
    module.center.fill_(float(np.quantile(logd, QUANTILE)))
    module.scale.fill_(float(max(logd.std(), 1e-3)))
    info = {"reals": int(len(train)), "heldout_reals": int(0 if heldout is None else len(heldout)),
            "centred_on": "training reals" if own else "held-out reals", "shrinkage": float(lw.shrinkage_),
            "center": float(module.center), "scale": float(module.scale)}
    return module, info


@torch.no_grad()
def fit_detector_distance(model, train_items, heldout_items, crop: int, mean, std, device,
                          seed: int = 0) -> Dict[str, Any]:
    """Fit model.distance on the real images of `train_items`, centred on the reals of `heldout_items`
    (both [(path, label)]), with `crop`-px centre crops; returns what was fitted, what was left out and
    the fitted distance's AP on `heldout_items` ("val_ap", None without both classes). Every image's
    features are computed once."""
    from sklearn.metrics import average_precision_score

    was_training = model.training
    model.eval()
    model.distance = None
    try:
        reals = [train_items[k] for k in _reals(train_items, MAX_REALS, seed)]
        tr = [f for f in image_features(model.encoder, reals, crop, mean, std, device) if f is not None]
        if len(tr) < MIN_REALS:
            raise InputError(f"score: distance: {len(tr)} of the training split's {len(reals)} real images could be "
                             f"read at {crop} px or more (the evaluation crop); at least {MIN_REALS} are needed")
        held = image_features(model.encoder, heldout_items, crop, mean, std, device)
        centre_on = _reals(heldout_items, MAX_REALS, seed)
        ho = [held[k] for k in centre_on if held[k] is not None]
        module, info = fit_distance(np.stack(tr).astype(np.float64), np.stack(ho).astype(np.float64) if ho else None)
    finally:
        model.train(was_training)
    model.distance = module.to(next(model.parameters()).device)
    info["left_out"] = len(reals) - len(tr) + len(centre_on) - len(ho)  # unreadable, or smaller than the crop
    keep = [k for k, f in enumerate(held) if f is not None]
    labels = np.array([heldout_items[k][1] for k in keep])
    info["val_ap"] = None
    if len(np.unique(labels)) == 2:
        x = torch.from_numpy(np.stack([held[k] for k in keep])).to(model.distance.mean.device)
        info["val_ap"] = float(average_precision_score(labels, model.distance(x).cpu().numpy()))
    return info
