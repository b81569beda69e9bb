"""Linear probe of a frozen encoder: does it see the rescaling ratio, and the phase?

Patches of HELD-OUT photos are rescaled by every ratio (with the op), encoded, and a logistic
regression is fitted on the patches of half of the photos and scored on the other half, so that
photo content cannot carry the answer. Reported: ratio accuracy vs chance, and per ratio the phase
(y0 mod q, x0 mod q) accuracy vs chance: phase is content-free, ratio can lean on scale cues.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch

import rescale_ext
from rescale_ext.reference import dst_length, source_taps

from .data import ImageError, decode_rgb, list_images
from .ratios import format_ratio, ratios_from_config


def clean_range(n: int, p: int, q: int):
    """Destination indices (of a length-n source at ratio p/q) whose taps are not clamped."""
    d = dst_length(n, p, q)
    idx = torch.arange(d)
    i0, i1, _, _ = source_taps(idx, p, q, n)
    num = (2 * idx + 1) * p - q
    ok = (num >= 0) & (i1 == i0 + 1)
    good = idx[ok]
    return int(good.min()), int(good.max()) + 1


def probe_patches(paths: List[str], ratios, patch: int, per_image: int, window: int, quantize: bool,
                  mean, std, seed: int = 0):
    """Patches of every photo at every ratio: x [M, 3, P, P], ratio index, phase index, photo index."""
    rng = np.random.default_rng(seed)
    xs, ri, ph, img = [], [], [], []
    for k, path in enumerate(paths):
        try:
            a = decode_rgb(path)
        except ImageError:
            continue
        s = min(window, a.shape[0], a.shape[1])
        y, x = (a.shape[0] - s) // 2, (a.shape[1] - s) // 2
        pixels, offsets, sizes = rescale_ext.pack_windows([np.ascontiguousarray(a[y:y + s, x:x + s])])
        for j, r in enumerate(ratios):
            p, q = r.numerator, r.denominator
            lo, hi = clean_range(s, p, q)
            if hi - lo < patch:
                continue
            ys = rng.integers(lo, hi - patch + 1, size=per_image)
            xs_ = rng.integers(lo, hi - patch + 1, size=per_image)
            corners = torch.tensor([[0, int(a_), int(b_)] for a_, b_ in zip(ys, xs_)])
            xs.append(rescale_ext.rescale_gather(pixels, offsets, sizes, torch.tensor([[p, q]]), corners,
                                                 patch, mean=mean, std=std, quantize=quantize))
            ri += [j] * per_image
            ph += [int((a_ % q) * q + (b_ % q)) for a_, b_ in zip(ys, xs_)]
            img += [k] * per_image
    if not xs:
        raise ValueError("probe: no held-out photo gave a patch (photos too small for probe.window?)")
    return torch.cat(xs), np.array(ri), np.array(ph), np.array(img)


@torch.no_grad()
def encode(encoder, x: torch.Tensor, device, batch: int = 64) -> np.ndarray:
    was = encoder.training
    encoder.eval()
    feats = []
    for i in range(0, x.shape[0], batch):
        feats.append(encoder(x[i:i + batch].to(device)).float().cpu())
    encoder.train(was)
    return torch.cat(feats).numpy()


def _fit_score(f_tr, y_tr, f_te, y_te) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_tr)) < 2 or len(y_te) == 0:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    clf.fit(f_tr, y_tr)
    return float((clf.predict(f_te) == y_te).mean())


def probe_encoder(encoder, paths: List[str], ratios, patch: int, device, per_image: int = 8,
                  window: int = 384, quantize: bool = True, mean=None, std=None, seed: int = 0
                  ) -> Dict[str, Any]:
    x, ri, ph, img = probe_patches(paths, ratios, patch, per_image, window, quantize, mean, std, seed)
    f = encode(encoder, x, device)
    photos = np.unique(img)
    perm = np.random.default_rng(seed).permutation(photos)
    train_photos = set(perm[: max(1, len(perm) // 2)].tolist())
    tr = np.array([i in train_photos for i in img])
    te = ~tr
    report = {"ratio_acc": _fit_score(f[tr], ri[tr], f[te], ri[te]), "ratio_chance": 1.0 / len(ratios),
              "n_train": int(tr.sum()), "n_test": int(te.sum()), "photos": len(photos), "phase": {}}
    for j, r in enumerate(ratios):
        m = ri == j
        acc = _fit_score(f[m & tr], ph[m & tr], f[m & te], ph[m & te])
        report["phase"][format_ratio(r)] = {"acc": acc, "chance": 1.0 / r.denominator ** 2}
    return report


def run_probe(encoder, cfg: Dict[str, Any], device) -> Dict[str, Any]:
    """The probe of a pre-training config (probe.images, the run's ratios, patch and normalisation)."""
    from .pretrain import op_normalization

    mean, std = op_normalization(cfg)
    return probe_encoder(encoder, list_images(cfg["probe"]["images"]), ratios_from_config(cfg["ratios"]),
                         cfg["plan"]["patch"], device, cfg["probe"]["patches"], cfg["probe"]["window"],
                         cfg["plan"]["quantize"], mean, std, cfg["probe"]["split_seed"])


def format_probe(r: Dict[str, Any]) -> str:
    ratio = r["ratio_acc"] / r["ratio_chance"]
    phases = ", ".join(f"{k} {v['acc']:.2f} (chance {v['chance']:.2f})" for k, v in r["phase"].items())
    return (f"probe (held-out photos, {r['n_test']} test patches): ratio accuracy {r['ratio_acc']:.3f} vs "
            f"chance {r['ratio_chance']:.3f} ({ratio:.1f}x); phase accuracy per ratio: {phases}")
