"""The embedded mini-benchmark: real photos vs five small generator families, GAN-like and diffusion-like.

Real images: tiles of the colour photographs shipped in scikit-image / scikit-learn, cut at native
resolution, split by photo into train and test. Fakes: the same tiles passed through a generator,
trained at build time on the training tiles with fixed seeds (a reconstruction through a generator's
decoder is an established proxy for a generated image; every output pixel comes from the network):

- tconv, nearest, pshuffle: autoencoders whose decoders upsample as GAN generators do (transposed
  convolution, nearest + conv, pixel shuffle);
- pixdiff: pixel-space diffusion. A small denoising U-Net (down- and up-sampling inside, a timestep
  embedding, as ADM/DDPM models have) trained to predict the noise on the part of the schedule SDEdit
  samples (t <= 35 of 100); a fake is SDEdit-style: the real tile noised to strength 0.35 and denoised
  by 5 deterministic DDIM steps, the last one's x0 estimate;
- ldm: latent diffusion's decoder. An autoencoder with a 4-channel latent at 1/8 resolution whose
  decoder is built like Stable Diffusion's (GroupNorm, SiLU, nearest upsampling + conv); the fake is
  the decoded latent.

Everything is saved as PNG so the file format carries no label. BUILT.json records, per family, how
far the fakes are from their reals (PSNR), how much high-frequency residual they carry against their
reals (the median ratio of Laplacian energies, so a family that is mostly added noise is seen) and the
AP of a trivial baseline, a logistic regression on each tile's radial power spectrum (fitted on the
train split, scored on the test split), so a family that is trivially separable, or identical to the
reals, is seen.

    <cache>/{train,test}/{tconv,nearest,pshuffle,pixdiff,ldm}/{0_real,1_fake}/*.png
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from .progress import progress

from .files import atomic_write_text
from .data import decode_rgb
from .photos import HELDOUT, TRAIN, photo_path

AUTOENCODERS = ("tconv", "nearest", "pshuffle")
FAMILIES = AUTOENCODERS + ("pixdiff", "ldm")
DEFAULT_CACHE = os.path.join(".cache", "minibench")
TILE = 128
BUILD_STEPS = 300  # training steps per autoencoder of the build (the others' counts are multiples)
VERSION = 5  # 3: the stereo partner motorcycle_right moved from test to train; 4: pixdiff and ldm;
# 5: the pixdiff denoiser trained on SDEdit's part of the schedule, 3x the autoencoders' steps


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


class TimeBlock(nn.Module):
    """conv-GroupNorm-SiLU-conv with the timestep embedding added in between, residual."""

    def __init__(self, c: int, temb: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(8, c), nn.GroupNorm(8, c)
        self.emb = nn.Linear(temb, c)

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(e)[:, :, None, None]
        return x + self.conv2(F.silu(self.norm2(h)))


class TinyUNet(nn.Module):
    """A denoising U-Net in miniature: two resolution levels below the input (stride-2 convolutions
    down, nearest upsampling + conv up, skip connections), a sinusoidal timestep embedding."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.temb = 4 * w
        self.embed = nn.Sequential(nn.Linear(w, self.temb), nn.SiLU(), nn.Linear(self.temb, self.temb))
        self.inp = nn.Conv2d(3, w, 3, padding=1)
        self.b0 = TimeBlock(w, self.temb)
        self.down1 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.b1 = TimeBlock(2 * w, self.temb)
        self.down2 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.mid = TimeBlock(2 * w, self.temb)
        self.up2 = nn.Conv2d(4 * w, 2 * w, 3, padding=1)
        self.b2 = TimeBlock(2 * w, self.temb)
        self.up1 = nn.Conv2d(3 * w, w, 3, padding=1)
        self.b3 = TimeBlock(w, self.temb)
        self.out = nn.Sequential(nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, 3, 3, padding=1))
        self.width = w

    def timestep_embedding(self, t):
        half = self.width // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
        a = t.float()[:, None] * freqs[None]
        return self.embed(torch.cat([a.sin(), a.cos()], 1))

    def forward(self, x, t):
        e = self.timestep_embedding(t)
        h0 = self.b0(self.inp(x), e)
        h1 = self.b1(self.down1(h0), e)
        m = self.mid(self.down2(h1), e)
        u2 = self.b2(self.up2(torch.cat([F.interpolate(m, scale_factor=2, mode="nearest"), h1], 1)), e)
        u1 = self.b3(self.up1(torch.cat([F.interpolate(u2, scale_factor=2, mode="nearest"), h0], 1)), e)
        return self.out(u1)


DIFFUSION_STEPS = 100
SDEDIT_STRENGTH = 0.35  # the share of the noise schedule a real tile is noised to before denoising
DDIM_STEPS = 5
PIXDIFF_T_MAX = round(SDEDIT_STRENGTH * DIFFUSION_STEPS)  # the build's denoiser learns only the t SDEdit visits
PIXDIFF_STEP_FACTOR = 3  # its training steps per autoencoder step


def alpha_bars(steps: int = DIFFUSION_STEPS) -> torch.Tensor:
    """The cosine schedule's cumulative alphas (Nichol & Dhariwal), index t = 0..steps."""
    s = 0.008
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f / f[0]).clamp(1e-5, 1.0).float()


class LatentAutoEncoder(nn.Module):
    """Stable Diffusion's autoencoder in miniature: 3 stride-2 stages down to a 4-channel latent at
    1/8 resolution; the decoder is GroupNorm + SiLU + nearest upsampling + conv, stage by stage."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width

        def stage_down(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        def stage_up(cin, cout):
            return nn.Sequential(nn.GroupNorm(8, cin), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                                 nn.Conv2d(cin, cout, 3, padding=1))

        self.encoder = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), stage_down(w, w), stage_down(w, 2 * w),
                                     stage_down(2 * w, 2 * w), nn.Conv2d(2 * w, 4, 1))
        self.decoder = nn.Sequential(nn.Conv2d(4, 2 * w, 3, padding=1), stage_up(2 * w, 2 * w),
                                     stage_up(2 * w, 2 * w), stage_up(2 * w, w), nn.GroupNorm(8, w), nn.SiLU(),
                                     nn.Conv2d(w, 3, 3, padding=1))

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


def _crops(data: torch.Tensor, rng: np.random.Generator, n: int = 16, size: int = 64) -> torch.Tensor:
    idx = rng.integers(0, len(data), n)
    ys, xs = rng.integers(0, TILE - size + 1, 2)
    return data[idx, :, ys:ys + size, xs:xs + size]


def train_autoencoder(kind: str, tiles: List[np.ndarray], steps: int, seed: int) -> nn.Module:
    """tconv / nearest / pshuffle (AutoEncoder) or ldm (LatentAutoEncoder): L1 reconstruction of
    random 64-px crops of the training tiles."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LatentAutoEncoder() if kind == "ldm" else AutoEncoder(kind)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    data = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
    for _ in progress(range(steps), desc=f"autoencoder {kind}", leave=False, dynamic_ncols=True):
        x = _crops(data, rng)
        loss = F.l1_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_denoiser(tiles: List[np.ndarray], steps: int, seed: int, t_max: int = DIFFUSION_STEPS) -> TinyUNet:
    """pixdiff: the U-Net learns to predict the noise of x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps on
    random 48-px crops (x0 in [-1, 1]), t uniform over 1..t_max (the whole schedule unless told)."""
    if not 1 <= t_max <= DIFFUSION_STEPS:
        raise ValueError(f"t_max must lie in 1..{DIFFUSION_STEPS}, got {t_max}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TinyUNet()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    ab = alpha_bars()
    data = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    for _ in progress(range(steps), desc="denoiser pixdiff", leave=False, dynamic_ncols=True):
        x0 = _crops(data, rng, size=48)
        t = torch.randint(1, t_max + 1, (x0.shape[0],))
        eps = torch.randn_like(x0)
        a = ab[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_pixdiff(tiles: List[np.ndarray], steps: int, seed: int) -> TinyUNet:
    """The build's pixdiff denoiser: PIXDIFF_STEP_FACTOR x `steps` (the autoencoders' count) on t <= PIXDIFF_T_MAX.
    Trained over the whole schedule for 600 steps it left 45x the reals' residual energy in its fakes
    (noise a detector reads instead of the generator); on SDEdit's range for 900 steps, 5.6x."""
    return train_denoiser(tiles, PIXDIFF_STEP_FACTOR * steps, seed, PIXDIFF_T_MAX)


@torch.no_grad()
def sdedit(model: TinyUNet, tiles: List[np.ndarray], seed: int, strength: float = SDEDIT_STRENGTH,
           steps: int = DDIM_STEPS) -> List[np.ndarray]:
    """Each tile noised to t_s = strength * T with seeded noise, then `steps` deterministic DDIM steps
    down to t = 0; the output is the last x0 estimate, so every pixel comes from the U-Net."""
    ab = alpha_bars()
    ts = np.linspace(round(strength * DIFFUSION_STEPS), 0, steps + 1).round().astype(int)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(tiles), 32):
        x0 = torch.from_numpy(np.stack(tiles[i:i + 32])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = ab[ts[0]].sqrt() * x0 + (1 - ab[ts[0]]).sqrt() * torch.randn(x0.shape, generator=g)
        for t, t_next in zip(ts[:-1], ts[1:]):
            eps = model(x, torch.full((x.shape[0],), int(t)))
            x0_hat = ((x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-1, 1)
            x = ab[t_next].sqrt() * x0_hat + (1 - ab[t_next]).sqrt() * eps
        y = ((x0_hat + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out += list(y)
    return out


def psnr(real: List[np.ndarray], fake: List[np.ndarray]) -> float:
    """Mean PSNR (dB) of each fake against its real tile."""
    vals = []
    for a, b in zip(real, fake):
        mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
        vals.append(99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))
    return float(np.mean(vals))


def laplacian_energy(a: np.ndarray) -> float:
    """Mean square of the grey tile's 4-neighbour Laplacian (its high-frequency residual)."""
    g = a.astype(np.float64).mean(2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float((lap ** 2).mean())


def residual_energy_ratio(real: List[np.ndarray], fake: List[np.ndarray]) -> float:
    """Median over tile pairs of the fake's Laplacian energy over its real's (reals with none left out):
    above 1 the fakes are noisier or sharper than their reals, below 1 smoother."""
    r = np.array([laplacian_energy(a) for a in real])
    f = np.array([laplacian_energy(a) for a in fake])
    keep = r > 0
    return float(np.median(f[keep] / r[keep])) if keep.any() else float("nan")


def radial_spectrum(a: np.ndarray, bins: int = 32) -> np.ndarray:
    """log mean power of the grey tile's 2-D spectrum in `bins` rings of radial frequency."""
    g = a.astype(np.float64).mean(2)
    p = np.abs(np.fft.fftshift(np.fft.fft2(g - g.mean()))) ** 2
    h, w = g.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h // 2, xx - w // 2) / (min(h, w) / 2)
    ring = np.minimum((r * bins).astype(int), bins)  # the corners (r > 1) share the last ring
    s = np.bincount(ring.ravel(), p.ravel(), bins + 1) / np.maximum(np.bincount(ring.ravel(), None, bins + 1), 1)
    return np.log(s + 1e-6)


def spectrum_baseline_ap(train: Dict[str, List[np.ndarray]], test: Dict[str, List[np.ndarray]]) -> float:
    """AP (fake positive) on the test split of a logistic regression on radial spectra, fitted on the
    train split: how separable a family is without any learned image features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def xy(split):
        x = np.stack([radial_spectrum(a) for a in split["real"] + split["fake"]])
        return x, np.r_[np.zeros(len(split["real"])), np.ones(len(split["fake"]))]

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(*xy(train))
    x, y = xy(test)
    return float(average_precision_score(y, clf.predict_proba(x)[:, 1]))


@torch.no_grad()
def reconstruct(model: nn.Module, tiles: List[np.ndarray]) -> List[np.ndarray]:
    out = []
    for i in range(0, len(tiles), 32):
        x = torch.from_numpy(np.stack(tiles[i:i + 32])).permute(0, 3, 1, 2).float() / 255.0
        y = (model(x).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out += list(y)
    return out


def train_generator(kind: str, tiles: List[np.ndarray], steps: int, seed: int) -> nn.Module:
    """The build's generator of one family: `steps` training steps for an autoencoder, twice that for
    the latent autoencoder and three times for the denoiser (they learn more from each step's noise or
    compression; the denoiser's leftover noise is what a detector would read otherwise)."""
    if kind == "pixdiff":
        return train_pixdiff(tiles, steps, seed)
    return train_autoencoder(kind, tiles, 2 * steps if kind == "ldm" else steps, seed)


def generate(kind: str, model: nn.Module, tiles: List[np.ndarray], seed: int) -> List[np.ndarray]:
    """One family's fakes of `tiles`: SDEdit with seeded noise (pixdiff) or the reconstruction (the others)."""
    return sdedit(model, tiles, seed) if kind == "pixdiff" else reconstruct(model, tiles)


def _save(folder: str, images: List[np.ndarray]) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(os.path.join(folder, f"{i:04d}.png"))


def build_minibench(cache: str = DEFAULT_CACHE, steps: int = BUILD_STEPS, seed: int = 0) -> str:
    """Every family from the same real tiles, its generator trained `train_generator`'s way."""
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits = {"train": photo_tiles(TRAIN), "test": photo_tiles(HELDOUT)}
    stats = {}
    for f, kind in enumerate(FAMILIES):
        t = time.time()
        model = train_generator(kind, splits["train"], steps, seed + f)
        fakes = {split: generate(kind, model, tiles, seed + 100 * (k + 1)) for k, (split, tiles) in enumerate(splits.items())}
        for split, tiles in splits.items():
            _save(os.path.join(cache, split, kind, "0_real"), tiles)
            _save(os.path.join(cache, split, kind, "1_fake"), fakes[split])
        stats[kind] = {"psnr_test": round(psnr(splits["test"], fakes["test"]), 2),
                       "residual_energy_test": round(residual_energy_ratio(splits["test"], fakes["test"]), 2),
                       "spectrum_ap_test": round(spectrum_baseline_ap(
                           {"real": splits["train"], "fake": fakes["train"]},
                           {"real": splits["test"], "fake": fakes["test"]}), 4),
                       "seconds": round(time.time() - t, 1)}
    info = {"version": VERSION, "families": FAMILIES, "tile": TILE, "steps": steps, "seed": seed,
            "pixdiff_denoiser": {"steps": PIXDIFF_STEP_FACTOR * steps, "t_max": PIXDIFF_T_MAX},
            "train_tiles": len(splits["train"]), "test_tiles": len(splits["test"]), "per_family": stats,
            "seconds": round(time.time() - t0, 1)}
    atomic_write_text(os.path.join(cache, "BUILT.json"), json.dumps(info, indent=2))
    return cache


def refresh_derived(out: str, owned: List[str]) -> None:
    """A folder a benchmark builds from the mini-benchmark's generators or fakes: its `owned` subfolders are
    removed when they were built for another VERSION (or carry no stamp), so they are built again."""
    import shutil

    stamp = os.path.join(out, "MINIBENCH_VERSION")
    built = open(stamp).read().strip() if os.path.exists(stamp) else None
    if built == str(VERSION):
        return
    stale = [d for d in owned if os.path.exists(os.path.join(out, d))]
    if stale:
        print(f"{out}: built for mini-benchmark version {built or 'unknown'}, now {VERSION}; "
              f"rebuilding {', '.join(stale)}", flush=True)
    for d in stale:
        shutil.rmtree(os.path.join(out, d))
    os.makedirs(out, exist_ok=True)
    atomic_write_text(stamp, f"{VERSION}\n")


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
    ap.add_argument("--steps", type=int, default=BUILD_STEPS)
    args = ap.parse_args()
    print(build_minibench(args.cache, args.steps))
