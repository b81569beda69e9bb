"""Small image trees (written with PIL) and detector checkpoints for tests."""
import os

import numpy as np
import torch
from PIL import Image

from fitgap import checkpoint as ckpt
from fitgap.models import Detector, RealDistance, build_encoder


def smooth_noise(h, w, seed):
    """A photo-like RGB image: random noise blurred at a few scales (so rescaling leaves traces)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3))
    for scale in (4, 8, 16):
        small = rng.normal(size=(h // scale + 2, w // scale + 2, 3))
        big = np.kron(small, np.ones((scale, scale, 1)))[:h, :w]
        img += big * scale
    img += rng.normal(size=(h, w, 3)) * 8
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


def write_images(folder, n, size=(72, 80), seed=0, ext=".png"):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"img_{i:03d}{ext}")
        Image.fromarray(smooth_noise(size[0], size[1], seed + i)).save(p)
        paths.append(p)
    return paths


def write_odd_images(folder):
    """One of each kind a loader meets in the wild; returns {kind: path}."""
    os.makedirs(folder, exist_ok=True)
    base = smooth_noise(96, 104, 99)
    out = {}

    def path(name):
        out[name.split(".")[0]] = os.path.join(folder, name)
        return out[name.split(".")[0]]

    Image.fromarray(base).save(path("good.png"))
    Image.fromarray(base).save(path("full.jpg"), quality=95)
    with open(out["full"], "rb") as f:
        data = f.read()
    with open(path("truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    open(path("empty.jpg"), "wb").close()
    with open(path("text.jpg"), "w") as f:
        f.write("this is not an image\n")
    Image.fromarray(base).convert("CMYK").save(path("cmyk.jpg"))
    Image.fromarray((base[:, :, 0].astype(np.uint16) * 257)).save(path("sixteen.png"))
    Image.fromarray(base).convert("RGBA").save(path("rgba.png"))
    Image.fromarray(base).convert("L").save(path("grey.png"))
    Image.fromarray(base).convert("P").save(path("palette.png"))
    Image.fromarray(base[:8, :8]).save(path("tiny.png"))
    Image.fromarray(smooth_noise(2400, 3000, 5)).save(path("large.jpg"), quality=90)
    return out


def detector_ckpt(path, backbone, patch, **model):
    torch.manual_seed(0)
    both, trace = model.get("highpass_both", False), model.get("trace_features", 0)
    enc = build_encoder(backbone, highpass=model.get("highpass", False), highpass_norm="both" if both else False,
                        trace_features=trace)
    distance = RealDistance(enc.num_features) if model.get("distance") else None
    det = Detector(enc, distance).eval()
    with torch.no_grad():  # batch-norm statistics away from their defaults, so the export must carry them
        for m in det.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        if distance is not None:  # a fitted distance's buffers, away from the identity
            distance.mean.normal_()
            distance.whiten.copy_(torch.eye(enc.num_features) + 0.1 * torch.randn(enc.num_features, enc.num_features))
            distance.center.fill_(1.5)
            distance.scale.fill_(0.7)
    cfg = {"model": {"backbone": backbone, "pretrained": False, "weights": None, "stem_stride": None,
                     "stem_pool": True, "highpass": model.get("highpass", False), "pool_grid": 1,
                     "highpass_both": both, "trace_features": trace},
           "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
           "patch": patch, "eval": {"size": patch}, "score": "distance" if distance is not None else "head"}
    ckpt.atomic_save({"model": det.state_dict(), "config": cfg, "kind": "detector"}, str(path))
    return det, cfg
