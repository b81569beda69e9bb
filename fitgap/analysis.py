"""What an encoder has learned, in pictures (the paper's Figures 5 and 6).

    python -m fitgap.analysis similarity --ckpt CKPT --images DIR [--n 1000] [--out DIR]
    python -m fitgap.analysis tsne --ckpt CKPT --bench NAME --root DIR [--rescale 224,192,160]

similarity: per image, a random crop; `count` patches along its diagonal with stride 1; the cosine
similarity matrix of their features, averaged over images. An encoder that sees rescaling phase
shows bands parallel to the diagonal at offsets that are multiples of the period; the band number
is the mean similarity at those offsets minus the mean at the other offsets (per period).

tsne: features of real and fake images per subset (centre crop at native resolution), and of
copies rescaled before extraction, embedded in 2-D with scikit-learn's t-SNE.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import ImageError, decode_rgb, list_images
from .evaldata import center_crop, to_tensor
from .errors import InputError


@torch.no_grad()
def diagonal_similarity(encoder, images: Sequence[np.ndarray], crop: int = 256, patch: int = 128,
                        count: int = 128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        device="cpu", seed: int = 0, batch: int = 64) -> np.ndarray:
    """Mean [count, count] cosine-similarity matrix of diagonal patches (stride 1)."""
    if patch + count - 1 > crop:
        raise InputError(f"patch {patch} + count {count} - 1 exceeds the crop {crop}")
    rng = np.random.default_rng(seed)
    total = torch.zeros(count, count, dtype=torch.float64)
    used = 0
    for a in tqdm(images, desc="similarity", leave=False, dynamic_ncols=True):
        h, w = a.shape[:2]
        if h < crop or w < crop:
            continue
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        t = to_tensor(a[y:y + crop, x:x + crop], mean, std)
        patches = torch.stack([t[:, i:i + patch, i:i + patch] for i in range(count)])
        feats = torch.cat([encoder(patches[i:i + batch].to(device)).float().cpu()
                           for i in range(0, count, batch)])
        f = F.normalize(feats.flatten(1).double(), dim=1)
        total += f @ f.T
        used += 1
    if not used:
        raise InputError(f"no image is at least {crop}x{crop}")
    return (total / used).numpy()


def band_scores(sim: np.ndarray, periods: Sequence[int]) -> Dict[int, float]:
    """Per period q: mean similarity at diagonal offsets d > 0 with d % q == 0 minus the mean at
    the other offsets d > 0 (positive: bands parallel to the diagonal)."""
    n = sim.shape[0]
    by_offset = np.array([np.diagonal(sim, d).mean() for d in range(1, n)])
    d = np.arange(1, n)
    out = {}
    for q in periods:
        on = d % q == 0
        if on.any() and (~on).any():
            out[int(q)] = float(by_offset[on].mean() - by_offset[~on].mean())
    return out


def plot_similarity(sim: np.ndarray, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(sim, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("patch offset along the diagonal")
    ax.set_ylabel("patch offset along the diagonal")
    ax.set_title(title or "cosine similarity of diagonal patches", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def image_features(encoder, items, crop: int, mean, std, device, rescale: Optional[int] = None,
                   batch: int = 32) -> List[Optional[np.ndarray]]:
    """Features of the centre crop (crop x crop, native resolution) of each image; with `rescale`,
    of that crop resized (bilinear) to rescale x rescale. Unreadable or smaller images give None."""
    from PIL import Image

    out: List[Optional[np.ndarray]] = [None] * len(items)
    pending: List[torch.Tensor] = []
    slots: List[int] = []

    def flush():
        if pending:
            f = encoder(torch.stack(pending).to(device)).float().cpu().numpy()
            for s, v in zip(slots, f):
                out[s] = v
            pending.clear()
            slots.clear()

    for k, (path, _) in enumerate(items):
        try:
            c = center_crop(decode_rgb(path), crop)
        except ImageError:
            continue
        if c.shape[0] != crop or c.shape[1] != crop:
            continue
        if rescale is not None:
            c = np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((rescale, rescale), Image.BILINEAR))
        pending.append(to_tensor(c, mean, std))
        slots.append(k)
        if len(pending) == batch:
            flush()
    flush()
    return out


def tsne_points(features: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def plot_tsne(points: np.ndarray, groups: List[str], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.6))
    names = sorted(set(groups))
    cmap = plt.get_cmap("tab20")
    g = np.array(groups)
    for k, name in enumerate(names):
        m = g == name
        marker = "o" if "real" in name else "x"
        ax.scatter(points[m, 0], points[m, 1], s=10, marker=marker, color=cmap(k % 20), label=name)
    ax.legend(fontsize=6, markerscale=1.5, loc="best", ncol=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of encoder features", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_similarity(args) -> Dict[int, float]:
    from .detector import load_encoder
    from .ratios import ratios_from_config

    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda"
                          else "cpu")
    encoder, cfg = load_encoder(args.ckpt, device)
    norm = cfg.get("normalize", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    paths = list_images(args.images)
    rng = np.random.default_rng(args.seed)
    paths = [paths[i] for i in sorted(rng.permutation(len(paths))[:args.n])]
    images = []
    for p in paths:
        try:
            images.append(decode_rgb(p))
        except ImageError as exc:
            print(f"skipped {p}: {exc}", file=sys.stderr)
    sim = diagonal_similarity(encoder, images, args.crop, args.patch, args.count, norm["mean"], norm["std"],
                              device, args.seed)
    periods = args.periods or sorted({r.denominator for r in ratios_from_config(cfg["ratios"])}
                                     if "ratios" in cfg else range(2, 9))
    scores = band_scores(sim, periods)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "similarity.npy"), sim)
    plot_similarity(sim, os.path.join(args.out, "similarity.png"),
                    f"{os.path.basename(args.ckpt)}: {len(images)} images, {args.patch} px patches")
    print("band number (mean similarity at offsets that are multiples of q minus the others):")
    for q, v in scores.items():
        print(f"  q = {q}: {v:+.4f}")
    print(f"written: {args.out}/similarity.npy, similarity.png")
    return scores


def run_tsne(args) -> str:
    from .benchmarks import load_benchmark
    from .detector import load_encoder

    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda"
                          else "cpu")
    encoder, cfg = load_encoder(args.ckpt, device)
    norm = cfg.get("normalize", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    rng = np.random.default_rng(args.seed)
    feats, groups = [], []
    sizes = [None] + [int(s) for s in args.rescale.split(",") if s.strip()] if args.rescale else [None]
    for sub in load_benchmark(args.bench, args.root, args.split, args.subsets):
        if sub.status != "ok":
            print(f"{sub.name}: {sub.status}", file=sys.stderr)
            continue
        for label, cls in ((0, "real"), (1, "fake")):
            items = [it for it in sub.items if it[1] == label]
            items = [items[i] for i in sorted(rng.permutation(len(items))[:args.n])]
            for size in sizes:
                for f in image_features(encoder, items, args.patch, norm["mean"], norm["std"], device, size):
                    if f is not None:
                        feats.append(f)
                        groups.append(f"{sub.name} {cls}" + ("" if size is None else f" @{size}"))
    if len(feats) < 5:
        raise InputError("t-SNE needs at least 5 images")
    x = np.stack(feats)
    pts = tsne_points(x, args.seed)
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "tsne.npz"), points=pts, features=x, groups=np.array(groups))
    plot_tsne(pts, groups, os.path.join(args.out, "tsne.png"), f"{os.path.basename(args.ckpt)} on {args.bench}")
    print(f"written: {args.out}/tsne.npz, tsne.png ({len(feats)} points)")
    return os.path.join(args.out, "tsne.png")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("similarity", help="diagonal patch cosine-similarity map (Figure 5)")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--n", type=int, default=1000, help="images to average over")
    s.add_argument("--crop", type=int, default=256)
    s.add_argument("--patch", type=int, default=128)
    s.add_argument("--count", type=int, default=128, help="patches along the diagonal (stride 1)")
    s.add_argument("--periods", type=int, nargs="*", default=None, help="default: the ratios' denominators")
    s.add_argument("--out", default="runs/analysis")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t = sub.add_parser("tsne", help="t-SNE of real and fake features per subset (Figure 6)")
    t.add_argument("--ckpt", required=True)
    t.add_argument("--bench", required=True)
    t.add_argument("--root", default=None)
    t.add_argument("--split", default="val")
    t.add_argument("--subsets", nargs="*", default=None)
    t.add_argument("--rescale", default="", help="also embed copies rescaled to these sizes, e.g. 224,192,160")
    t.add_argument("--n", type=int, default=100, help="images per class and subset")
    t.add_argument("--patch", type=int, default=128, help="centre-crop size fed to the encoder")
    t.add_argument("--out", default="runs/analysis")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        return run_similarity(args) if args.cmd == "similarity" else run_tsne(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
