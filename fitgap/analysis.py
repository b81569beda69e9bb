"""What an encoder has learned, in pictures (the paper's Figures 5 and 6).

    python -m fitgap.analysis similarity --ckpt CKPT --images DIR [--n 1000] [--out DIR]
    python -m fitgap.analysis tsne --ckpt CKPT --bench NAME --root DIR [--rescale 224,192,160]
    python -m fitgap.analysis transfer --ckpt CKPT --bench NAME --train-subset NAME [--crop 64]

similarity: per image, a crop; `count` patches along its diagonal with stride 1; the cosine
similarity matrix of their features, averaged over images. An encoder that sees rescaling phase
shows bands parallel to the diagonal at offsets that are multiples of the period; the band number
is the mean similarity at those offsets minus the mean at the other offsets (per period). A period
exists only in a rescaled image, so the crops are taken from the photos rescaled (with the op) by
every ratio of the checkpoint, each scored at its own q; the photos as they are and the encoder
before pre-training (same architecture and seed) are scored beside them. The photos as they are
carry no trace of the ratios, yet a band can show there: the photos' own history (demosaicing, JPEG
grids), and, for an encoder of per-position-class statistics, the overlap itself (patches whose
offset is a multiple of q put the same pixels in the same classes). So the number to read is the
excess of a ratio's band over that control at the same q.

tsne: features of real and fake images per subset (centre crop at native resolution), and of
copies rescaled before extraction, embedded in 2-D with scikit-learn's t-SNE.

transfer: what the frozen features carry across generators, without the noise of a fine-tuning. A
logistic regression (scikit-learn, standardised features) is fitted on the encoder's features of one
subset's train split (centre crop at native resolution) and scores every subset's test split (AP);
the same for the encoder before pre-training (same architecture and seed) beside it. Both are
deterministic: two pre-trainings compare here without fine-tuning seeds moving the answer.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from .progress import progress

from .data import ImageError, decode_rgb, list_images
from .evaldata import image_features, to_tensor  # noqa: F401 - image_features: fitgap.analysis's API too
from .errors import InputError


@torch.no_grad()
def similarity_of_crops(encoder, crops: Sequence[torch.Tensor], patch: int, count: int, device="cpu",
                        batch: int = 64, desc: str = "similarity") -> np.ndarray:
    """Mean [count, count] cosine-similarity matrix of the diagonal patches (stride 1) of normalised
    [3, C, C] crops."""
    if not crops:
        raise InputError("similarity: no crop to score (images too small for --crop?)")
    if patch + count - 1 > crops[0].shape[-1]:
        raise InputError(f"patch {patch} + count {count} - 1 exceeds the crop {crops[0].shape[-1]}")
    was = encoder.training
    encoder.eval()
    total = torch.zeros(count, count, dtype=torch.float64)
    for t in progress(crops, desc=desc, leave=False, dynamic_ncols=True):
        patches = torch.stack([t[:, i:i + patch, i:i + patch] for i in range(count)])
        feats = torch.cat([encoder(patches[i:i + batch].to(device)).float().cpu()
                           for i in range(0, count, batch)])
        f = F.normalize(feats.flatten(1).double(), dim=1)
        total += f @ f.T
    encoder.train(was)
    return (total / len(crops)).numpy()


def random_crops(images: Sequence[np.ndarray], crop: int, mean, std, seed: int = 0) -> List[torch.Tensor]:
    """One random crop x crop region per image (images smaller than that are left out)."""
    rng = np.random.default_rng(seed)
    out = []
    for a in images:
        h, w = a.shape[:2]
        if h < crop or w < crop:
            continue
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        out.append(to_tensor(a[y:y + crop, x:x + crop], mean, std))
    return out


def rescaled_crops(images: Sequence[np.ndarray], ratio, crop: int, mean, std, quantize: bool = True,
                   seed: int = 0) -> List[torch.Tensor]:
    """Per image, the centred square window that rescaled by `ratio` (src/dst = p/q, the op's
    bilinear rescaling, rounded to 8 bits when `quantize`, as in pre-training) covers a crop x crop
    region without clamped taps, and that region at a random corner of the clean range: a periodic
    trace of period q over the whole crop. mean/std on the 0..1 scale; images too small are left out."""
    import rescale_ext

    from .probe import clean_range

    rng = np.random.default_rng(seed)
    p, q = ratio.numerator, ratio.denominator
    m255, s255 = [255.0 * v for v in mean], [255.0 * v for v in std]
    out = []
    for a in images:
        side = min(a.shape[0], a.shape[1], -(-(crop + 4) * p // q) + 4)
        lo, hi = clean_range(side, p, q)
        if hi - lo < crop:
            continue
        y0, x0 = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
        pixels, offsets, sizes = rescale_ext.pack_windows([np.ascontiguousarray(a[y0:y0 + side, x0:x0 + side])])
        y, x = (int(v) for v in rng.integers(lo, hi - crop + 1, size=2))
        out.append(rescale_ext.rescale_gather(pixels, offsets, sizes, torch.tensor([[p, q]]),
                                              torch.tensor([[0, y, x]]), crop, mean=m255, std=s255,
                                              quantize=quantize)[0])
    return out


def diagonal_similarity(encoder, images: Sequence[np.ndarray], crop: int = 256, patch: int = 128,
                        count: int = 128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        device="cpu", seed: int = 0, batch: int = 64) -> np.ndarray:
    """Mean [count, count] cosine-similarity matrix of diagonal patches (stride 1) of one random crop
    per image."""
    if patch + count - 1 > crop:
        raise InputError(f"patch {patch} + count {count} - 1 exceeds the crop {crop}")
    crops = random_crops(images, crop, mean, std, seed)
    if not crops:
        raise InputError(f"no image is at least {crop}x{crop}")
    return similarity_of_crops(encoder, crops, patch, count, device, batch)


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


def plot_similarity(sim, path: str, title: str = "") -> None:
    """One similarity map, or a dict of named maps (a panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = sim if isinstance(sim, dict) else {"": sim}
    cols = min(4, len(maps))
    rows = -(-len(maps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(maps):]:
        ax.axis("off")
    for ax, (name, m) in zip(axes.flat, maps.items()):
        im = ax.imshow(m, cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_xlabel("patch offset along the diagonal", fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title or "cosine similarity of diagonal patches", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def _device(name: str) -> torch.device:
    """--device auto | cpu | cuda."""
    from .distributed import uses_cuda

    return torch.device("cuda" if uses_cuda(name) else "cpu")


def _normalization(cfg: Dict):
    """(mean, std) the checkpoint's encoder was trained with (ImageNet's for a config without them)."""
    from .pretrain import IMAGENET_MEAN, IMAGENET_STD

    norm = cfg.get("normalize", {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    return norm["mean"], norm["std"]


def run_similarity(args) -> Dict[int, float]:
    """Band numbers per input (the photos as they are, and rescaled by every ratio) for the encoder
    and for the same architecture before pre-training; returns {q: mean band number over the rescaled
    inputs with that q} (over the photos as they are when the checkpoint names no ratios)."""
    import json

    from .detector import load_encoder
    from .probe import initial_encoder
    from .ratios import format_ratio, ratios_from_config

    device = _device(args.device)
    encoder, cfg = load_encoder(args.ckpt, device)
    mean, std = _normalization(cfg)
    if args.patch + args.count - 1 > args.crop:
        raise InputError(f"--patch {args.patch} + --count {args.count} - 1 exceeds --crop {args.crop}")
    paths = list_images(args.images)
    rng = np.random.default_rng(args.seed)
    paths = [paths[i] for i in sorted(rng.permutation(len(paths))[:args.n])]
    images = []
    for p in paths:
        try:
            images.append(decode_rgb(p))
        except ImageError as exc:
            print(f"skipped {p}: {exc}", file=sys.stderr)
    ratios = ratios_from_config(cfg["ratios"]) if "ratios" in cfg else []
    periods = args.periods or (sorted({r.denominator for r in ratios}) if ratios else list(range(2, 9)))
    fresh = initial_encoder(cfg, device)
    inputs = [("as they are", random_crops(images, args.crop, mean, std, args.seed), periods)]
    quantize = cfg.get("plan", {}).get("quantize", True)
    for r in ratios:
        inputs.append((f"rescaled {format_ratio(r)}",
                       rescaled_crops(images, r, args.crop, mean, std, quantize, args.seed), [r.denominator]))
    maps, rows = {}, []
    for name, crops, qs in inputs:
        if not crops:
            print(f"{name}: no image is large enough for a {args.crop}-px crop; left out", file=sys.stderr)
            continue
        sim = similarity_of_crops(encoder, crops, args.patch, args.count, device, desc=name)
        before = band_scores(similarity_of_crops(fresh, crops, args.patch, args.count, device, desc=name), qs)
        maps[name] = sim
        rows += [{"input": name, "q": q, "band": v, "before": before[q], "crops": len(crops)}
                 for q, v in band_scores(sim, qs).items()]
    if not rows:
        raise InputError(f"no image is at least {args.crop}x{args.crop} (rescaled or not)")
    rescaled = [r for r in rows if r["input"] != "as they are"] or rows
    control = {r["q"]: r for r in rows if r["input"] == "as they are"}
    per_q = {}
    for q in sorted({r["q"] for r in rescaled}):
        band = float(np.mean([r["band"] for r in rescaled if r["q"] == q]))
        before = float(np.mean([r["before"] for r in rescaled if r["q"] == q]))
        c = control.get(q)
        per_q[q] = {"band": band, "before": before, "as_they_are": c["band"] if c else None,
                    "excess": band - c["band"] if c else None,
                    "excess_before": before - c["before"] if c else None}
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "similarity.npz"), **{k.replace(" ", "_").replace("/", "_"): v
                                                           for k, v in maps.items()})
    with open(os.path.join(args.out, "similarity.json"), "w") as f:
        json.dump({"ckpt": args.ckpt, "patch": args.patch, "count": args.count, "crop": args.crop,
                   "rows": rows, "per_q": per_q}, f, indent=1)
    plot_similarity(maps, os.path.join(args.out, "similarity.png"),
                    f"{os.path.basename(args.ckpt)}: {len(images)} images, {args.patch} px patches")
    print("band number (mean similarity at diagonal offsets that are multiples of q minus the others):")
    print(f"  {'input':<16} {'q':>2} {'crops':>5} {'band':>8} {'before pre-training':>20}")
    for r in rows:
        print(f"  {r['input']:<16} {r['q']:>2} {r['crops']:>5} {r['band']:>+8.4f} {r['before']:>+20.4f}")
    label = "rescaled inputs" if rescaled is not rows else "photos as they are"
    print(f"per q, mean over the {label} (excess over the photos as they are; the same before pre-training):")
    for q, v in per_q.items():
        print(f"  q = {q}: {v['band']:+.4f} (before {v['before']:+.4f})"
              + (f"; excess {v['excess']:+.4f} (before {v['excess_before']:+.4f})" if v["excess"] is not None else ""))
    print(f"written: {args.out}/similarity.npz, similarity.json, similarity.png")
    return {q: v["band"] for q, v in per_q.items()}


def run_tsne(args) -> str:
    from .benchmarks import load_benchmark
    from .detector import load_encoder

    device = _device(args.device)
    encoder, cfg = load_encoder(args.ckpt, device)
    mean, std = _normalization(cfg)
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
                for f in image_features(encoder, items, args.patch, mean, std, device, size):
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


def _labelled_features(encoder, items, crop: int, mean, std, device):
    """(features [n, d], labels [n], images left out) of the centre crops of `items`."""
    feats = image_features(encoder, items, crop, mean, std, device)
    keep = [k for k, f in enumerate(feats) if f is not None]
    if not keep:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), len(items)
    return (np.stack([feats[k] for k in keep]), np.array([items[k][1] for k in keep]), len(items) - len(keep))


def transfer_scores(encoder, train_items, test_subsets, crop: int, mean, std, device, c: float = 0.05) -> Dict:
    """Fit a logistic regression on the frozen features of `train_items` [(path, label)] and score every
    subset of `test_subsets` [(name, items)]: {"ap": {name: AP or None}, "n": {name: images scored},
    "left_out": images unreadable or smaller than the crop}. AP None where a subset lacks a class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .realdist import MIN_REALS, fit_distance

    x, y, left = _labelled_features(encoder, train_items, crop, mean, std, device)
    if len(np.unique(y)) < 2:
        raise InputError(f"transfer: the training subset gives {int((y == 0).sum())} real and {int((y == 1).sum())} "
                         f"fake {crop}-px crops; both classes are needed")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x, y)
    # the same features read as a distance from the training subset's reals (no fake seen: fitgap.realdist)
    distance = fit_distance(x[y == 0].astype(np.float64), None)[0] if (y == 0).sum() >= MIN_REALS else None
    out = {"ap": {}, "distance_ap": {}, "n": {}, "left_out": left}
    for name, items in test_subsets:
        g, yy, gone = _labelled_features(encoder, items, crop, mean, std, device)
        out["left_out"] += gone
        out["n"][name] = int(len(yy))
        both = len(np.unique(yy)) == 2
        out["ap"][name] = float(average_precision_score(yy, clf.decision_function(g))) if both else None
        out["distance_ap"][name] = (float(average_precision_score(yy, distance(torch.from_numpy(g).float()).numpy()))
                                    if both and distance is not None else None)
    return out


def format_transfer(result: Dict) -> List[str]:
    """Markdown: AP per test subset of the frozen encoder and of the encoder before pre-training, and
    the means over the subsets other than the one fitted on."""
    from .evaluate import _fmt as _pct

    e, i = result["encoder"], result["initial"]
    rows = ["| test subset | the encoder, frozen | the same architecture untrained (its seed), frozen "
            "| distance from the reals: the encoder | distance: untrained |", "|---|---|---|---|---|"]
    for name in e["ap"]:
        mark = ""
        if name == result["train"]:
            mark = (f" (fitted on {result['train_overlap']} of these same images: not held out)"
                    if result.get("train_overlap") else " (fitted on its train split)")
        rows.append(f"| {name}{mark} | {_pct(e['ap'][name])} | {_pct(i['ap'][name])} "
                    f"| {_pct(e.get('distance_ap', {}).get(name))} | {_pct(i.get('distance_ap', {}).get(name))} |")
    rows.append(f"| mean over the others | {_pct(e['unseen'])} | {_pct(i['unseen'])} "
                f"| {_pct(e.get('distance_unseen'))} | {_pct(i.get('distance_unseen'))} |")
    return rows


def _unseen(ap: Dict[str, Optional[float]], train: str) -> Optional[float]:
    vals = [v for k, v in ap.items() if k != train and v is not None]
    return float(np.mean(vals)) if vals else None


def run_transfer(args) -> Dict:
    import json

    from .benchmarks import load_benchmark
    from .detector import load_encoder
    from .files import atomic_write_text
    from .probe import initial_encoder

    device = _device(args.device)
    encoder, cfg = load_encoder(args.ckpt, device)
    mean, std = _normalization(cfg)
    train = {s.name: s for s in load_benchmark(args.bench, args.root, args.train_split, [args.train_subset])}
    if train.get(args.train_subset) is None or train[args.train_subset].status != "ok":
        raise InputError(f"--train-subset: {args.train_subset!r} is missing or empty in {args.bench} "
                         f"(split {args.train_split})")
    tests = [(s.name, s.items) for s in load_benchmark(args.bench, args.root, args.split, args.subsets)
             if s.status == "ok"]
    if not tests:
        raise InputError(f"--bench {args.bench}: no test subset with images (split {args.split or 'default'})")
    fitted = {p for p, _ in train[args.train_subset].items}
    # a layout without splits (folder) scores the fitted subset on the very images it was fitted on: say so
    overlap = sum(p in fitted for name, items in tests if name == args.train_subset for p, _ in items)
    result = {"ckpt": args.ckpt, "bench": args.bench, "train": args.train_subset, "crop": args.crop,
              "train_overlap": overlap}
    for key, enc in (("encoder", encoder), ("initial", initial_encoder(cfg, device).eval())):
        r = transfer_scores(enc, train[args.train_subset].items, tests, args.crop, mean, std, device)
        r["unseen"] = _unseen(r["ap"], args.train_subset)
        r["distance_unseen"] = _unseen(r["distance_ap"], args.train_subset)
        result[key] = r
    if result["encoder"]["left_out"]:
        print(f"left out: {result['encoder']['left_out']} images unreadable or smaller than {args.crop} px",
              file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "transfer.json"), json.dumps(result, indent=1))
    print(f"frozen-feature transfer, logistic regression fitted on {args.train_subset} ({args.train_split}), "
          f"AP (%) on {args.split or 'the default split'}:")
    print("\n".join(format_transfer(result)))
    print(f"written: {args.out}/transfer.json")
    return result


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
    s.add_argument("--periods", type=int, nargs="*", default=None,
                   help="periods scored on the photos as they are (default: the ratios' denominators)")
    s.add_argument("--out", default="runs/analysis")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t = sub.add_parser("tsne", help="t-SNE of real and fake features per subset (Figure 6)")
    t.add_argument("--ckpt", required=True)
    t.add_argument("--bench", required=True)
    t.add_argument("--root", default=None)
    t.add_argument("--split", default=None, help="the benchmark's split (default: the one evaluate.py scores)")
    t.add_argument("--subsets", nargs="*", default=None)
    t.add_argument("--rescale", default="", help="also embed copies rescaled to these sizes, e.g. 224,192,160")
    t.add_argument("--n", type=int, default=100, help="images per class and subset")
    t.add_argument("--patch", type=int, default=128, help="centre-crop size fed to the encoder")
    t.add_argument("--out", default="runs/analysis")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r = sub.add_parser("transfer", help="frozen features: a logistic regression on one subset, AP on every subset")
    r.add_argument("--ckpt", required=True)
    r.add_argument("--bench", required=True)
    r.add_argument("--root", default=None)
    r.add_argument("--train-subset", required=True, help="the subset whose train split the regression is fitted on")
    r.add_argument("--train-split", default="train")
    r.add_argument("--split", default=None, help="the split scored (default: the one evaluate.py scores)")
    r.add_argument("--subsets", nargs="*", default=None, help="the subsets scored (default: all)")
    r.add_argument("--crop", type=int, default=64, help="centre-crop size fed to the encoder (native resolution)")
    r.add_argument("--out", default="runs/analysis")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv=None):
    from .cli import run_main

    args = get_args_parser().parse_args(argv)
    for name in ("n", "crop", "patch", "count"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            print(f"error: --{name}: must be >= 1, got {v}", file=sys.stderr)
            sys.exit(2)
    return run_main({"similarity": run_similarity, "tsne": run_tsne, "transfer": run_transfer}[args.cmd], args)


if __name__ == "__main__":
    main()
