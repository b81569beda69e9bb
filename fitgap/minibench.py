"""The embedded mini-benchmark: real photos vs reconstructions by three small autoencoders.

Real images: tiles of the colour photographs shipped in scikit-image / scikit-learn, cut at native
resolution, split by photo into train and test. Fakes: the same tiles reconstructed by three small
autoencoders whose decoders upsample differently (transposed convolution, nearest + conv, pixel
shuffle): three "generator families", a miniature of the cross-generator protocol (a reconstruction
through a generator's decoder is an established proxy for a generated image). Trained at build time
with fixed seeds; everything is saved as PNG so the file format carries no label.

    <cache>/train/{tconv,nearest,pshuffle}/{0_real,1_fake}/*.png
    <cache>/test/{tconv,nearest,pshuffle}/{0_real,1_fake}/*.png
"""
from __future__ import annotations

import json
import os
import time
from typing import List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from .progress import progress

from .files import atomic_write_text
from .data import decode_rgb
from .photos import HELDOUT, TRAIN, photo_path

FAMILIES = ("tconv", "nearest", "pshuffle")
DEFAULT_CACHE = os.path.join(".cache", "minibench")
TILE = 128
VERSION = 3  # 3: the stereo partner motorcycle_right moved from test to train


def _up(kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "tconv":
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    if kind == "nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "pshuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    raise ValueError(kind)


class AutoEncoder(nn.Module):
    """4x down, 4x up; the decoder's upsampling is the family's fingerprint."""

    def __init__(self, kind: str, width: int = 48):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            _up(kind, width, width), nn.ReLU(inplace=True),
            _up(kind, width, width // 2), nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, 3, 3, padding=1))

    def forward(self, x):
        return self.decoder(self.encoder(x))


def photo_tiles(names: List[str], tile: int = TILE) -> List[np.ndarray]:
    """Non-overlapping tile x tile crops of each photo, at native resolution."""
    out = []
    for name in names:
        a = decode_rgb(photo_path(name))
        h, w = a.shape[:2]
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                out.append(np.ascontiguousarray(a[y:y + tile, x:x + tile]))
    return out


def train_autoencoder(kind: str, tiles: List[np.ndarray], steps: int, seed: int) -> AutoEncoder:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = AutoEncoder(kind)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    data = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
    for _ in progress(range(steps), desc=f"autoencoder {kind}", leave=False, dynamic_ncols=True):
        idx = rng.integers(0, len(data), 16)
        ys, xs = rng.integers(0, TILE - 64 + 1, 2)
        x = data[idx, :, ys:ys + 64, xs:xs + 64]
        loss = F.l1_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def reconstruct(model: AutoEncoder, tiles: List[np.ndarray]) -> List[np.ndarray]:
    out = []
    for i in range(0, len(tiles), 32):
        x = torch.from_numpy(np.stack(tiles[i:i + 32])).permute(0, 3, 1, 2).float() / 255.0
        y = (model(x).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out += list(y)
    return out


def _save(folder: str, images: List[np.ndarray]) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(os.path.join(folder, f"{i:04d}.png"))


def build_minibench(cache: str = DEFAULT_CACHE, steps: int = 300, seed: int = 0) -> str:
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits = {"train": photo_tiles(TRAIN), "test": photo_tiles(HELDOUT)}
    for f, kind in enumerate(FAMILIES):
        model = train_autoencoder(kind, splits["train"], steps, seed + f)
        for split, tiles in splits.items():
            _save(os.path.join(cache, split, kind, "0_real"), tiles)
            _save(os.path.join(cache, split, kind, "1_fake"), reconstruct(model, tiles))
    info = {"version": VERSION, "families": FAMILIES, "tile": TILE, "steps": steps, "seed": seed,
            "train_tiles": len(splits["train"]), "test_tiles": len(splits["test"]),
            "seconds": round(time.time() - t0, 1)}
    atomic_write_text(os.path.join(cache, "BUILT.json"), json.dumps(info, indent=2))
    return cache


def ensure_minibench(cache: str = None) -> str:
    """The mini-benchmark folder, built once (rebuilt only when missing or from another version)."""
    cache = cache or DEFAULT_CACHE
    stamp = os.path.join(cache, "BUILT.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f).get("version") == VERSION:
                return cache
    print(f"building the mini-benchmark in {cache} (once)", flush=True)
    return build_minibench(cache)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build the embedded mini-benchmark.")
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    print(build_minibench(args.cache, args.steps))
