"""Resampling sensitivity and robustness sweeps: does the detector's answer follow generation, or the
resizing and compression history of a file?

    python -m fitgap.robustness --ckpt runs/finetune/best.pt --bench genimage --root /data/GenImage --out DIR
    python -m fitgap.robustness ... --reencode jpeg:95       # both classes re-encoded alike first

Every image (real and fake identically) is scored at native resolution and under each condition:
- resize by each factor (default 0.5 0.75 0.9 1.1 1.25 1.5) with each kernel: nearest, bilinear,
  bicubic, lanczos (PIL's filters, antialiased when shrinking), area (exact area averaging, OpenCV
  INTER_AREA when shrinking), plus bilinear-noaa and
  bicubic-noaa (OpenCV INTER_LINEAR / INTER_CUBIC convention: torch `F.interpolate`, half-pixel
  centres, no antialiasing);
- JPEG quality (default 100 95 90 75 50), WebP quality (default 90 75), Gaussian blur sigma.
Per subset and condition, separately for real and fake: the share of images whose decision flips
against native, the mean change of P(fake); and AP / accuracy / AUC. Writes robustness.json,
robustness.csv, robustness.md, resize_ap.png (AP and flips vs factor, a line per kernel) and
degrade.png (AP and accuracy vs JPEG / WebP quality and blur).

A detector that reads generation should keep its ranking (AP) under mild resizing and keep its
decisions on real photos; one that reads "was resized" flips real photos to fake when they are
resized, and one that reads file format collapses when both classes are re-encoded alike.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from .progress import progress

from .benchmarks import BENCHES, add_bench_args, bench_kwargs, load_benchmark
from .files import atomic_write_text
from .data import ImageError, decode_rgb
from .detector import crop_size, load_detector, score_crops
from .evaldata import (ANTIALIAS_CHOICE, RESIZE_KERNELS, TIERS, Perturbation, center_crop, collate_eval, stack_uint8,
                       tiles)
from .errors import InputError

FACTORS = (0.5, 0.75, 0.9, 1.1, 1.25, 1.5)
KERNELS = ("nearest", "bilinear", "bilinear-noaa", "bicubic", "bicubic-noaa", "lanczos", "area")
JPEG_QUALITIES = (100, 95, 90, 75, 50)
WEBP_QUALITIES = (90, 75)
BLUR_SIGMAS = (0.5, 1.0, 2.0)
CONVENTION = {"nearest": "PIL NEAREST", "bilinear": "PIL BILINEAR (antialiased)",
              "bilinear-noaa": "OpenCV INTER_LINEAR = torch bilinear, antialias=False",
              "bicubic": "PIL BICUBIC (antialiased)",
              "bicubic-noaa": "OpenCV INTER_CUBIC = torch bicubic, antialias=False (a=-0.75)",
              "lanczos": "PIL LANCZOS (antialiased)", "area": "area averaging = OpenCV INTER_AREA when shrinking"}


@dataclass(frozen=True)
class Condition:
    name: str  # e.g. resize0.5-bicubic-noaa, jpeg75, blur1
    group: str  # resize:<kernel> | jpeg | webp | blur
    strength: float
    perturb: Perturbation


def parse_kernel(k: str) -> Perturbation:
    base, _, aa = k.partition("-")
    if base not in RESIZE_KERNELS or aa not in ("", "noaa") or (aa and base not in ANTIALIAS_CHOICE):
        raise InputError(f"--kernels: one of {', '.join(KERNELS)}, got {k!r}")
    return Perturbation(resize_kernel=base, antialias=False if aa else None)


def conditions(factors: Sequence[float] = FACTORS, kernels: Sequence[str] = KERNELS,
               jpeg: Sequence[int] = JPEG_QUALITIES, webp: Sequence[int] = WEBP_QUALITIES,
               blur: Sequence[float] = BLUR_SIGMAS, reencode: Optional[str] = None,
               tiers: Sequence[str] = tuple(TIERS)) -> List[Condition]:
    """Every condition of the sweep; `reencode` is applied to every image first (native included);
    `tiers` adds the robustness tiers (web, hard: a long-side cap then JPEG) as one condition each."""
    out = []
    for k in kernels:
        kp = parse_kernel(k)
        for f in factors:
            p = Perturbation(resize=float(f), resize_kernel=kp.resize_kernel, antialias=kp.antialias, reencode=reencode)
            out.append(Condition(f"resize{f:g}-{k}", f"resize:{k}", float(f), p))
    out += [Condition(f"jpeg{q}", "jpeg", float(q), Perturbation(jpeg=int(q), reencode=reencode)) for q in jpeg]
    out += [Condition(f"webp{q}", "webp", float(q), Perturbation(webp=int(q), reencode=reencode)) for q in webp]
    out += [Condition(f"blur{s:g}", "blur", float(s), Perturbation(blur=float(s), reencode=reencode)) for s in blur]
    for t in tiers:
        if t not in TIERS:
            raise InputError(f"--tiers: one of {', '.join(TIERS)}, got {t!r}")
        tp = TIERS[t][1]
        out.append(Condition(f"tier-{t}", "tier", float(tp.max_side),
                             Perturbation(jpeg=tp.jpeg, max_side=tp.max_side, reencode=reencode)))
    for c in out:
        c.perturb.check()
    return out


class SweepDataset(Dataset):
    """(path, label) -> ([crops of native, crops of condition 1, ...], index, error). One decode per
    image; every condition is applied to the same decoded pixels."""

    def __init__(self, items, conds: Sequence[Condition], crop: int, mode: str, reencode: Optional[str] = None,
                 min_side: int = 1):
        self.items, self.conds, self.crop, self.mode = items, list(conds), crop, mode
        self.base = Perturbation(reencode=reencode)
        self.min_side = min_side  # the encoder's smallest input: an image below it under any condition is skipped

    def __len__(self):
        return len(self.items)

    def _crops(self, a: np.ndarray) -> torch.Tensor:
        return stack_uint8([center_crop(a, self.crop)] if self.mode == "center" else tiles(a, self.crop))

    def __getitem__(self, i):
        try:
            raw = decode_rgb(self.items[i][0])
        except ImageError as exc:
            return None, i, str(exc)
        images = [self.base(raw)] + [c.perturb(raw) for c in self.conds]  # reencode is in each condition
        small = [k for k, a in enumerate(images) if min(a.shape[:2]) < self.min_side]
        if small:
            a = images[small[0]]
            where = "native" if small[0] == 0 else self.conds[small[0] - 1].name
            return None, i, f"too small for the encoder ({where}): {a.shape[1]}x{a.shape[0]} < {self.min_side} px"
        return [self._crops(a) for a in images], i, ""


def flip_stats(native: np.ndarray, cond: np.ndarray, threshold: float = 0.5) -> Dict[str, Optional[float]]:
    """Share of images whose decision (P(fake) > threshold) differs between native and the condition,
    share that turn fake, and the mean change of P(fake). Empty input gives None values."""
    if len(native) == 0:
        return {"flip": None, "to_fake": None, "dp": None}
    a, b = native > threshold, cond > threshold
    return {"flip": float((a != b).mean()), "to_fake": float((~a & b).mean()), "dp": float((cond - native).mean())}


def condition_metrics(labels: np.ndarray, native: np.ndarray, cond: np.ndarray, threshold: float = 0.5
                      ) -> Dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    both = bool((labels == 0).any() and (labels == 1).any())
    pred = cond > threshold
    out = {"ap": float(average_precision_score(labels, cond)) if both else None,
           "auc": float(roc_auc_score(labels, cond)) if both else None,
           "acc": float((pred == (labels == 1)).mean()) if len(labels) else None}
    for name, cls in (("real", 0), ("fake", 1)):
        m = labels == cls
        out[f"{name}_acc"] = float((pred[m] == bool(cls)).mean()) if m.any() else None
        out.update({f"{name}_{k}": v for k, v in flip_stats(native[m], cond[m], threshold).items()})
    return out


def sweep_subset(model, items, conds: Sequence[Condition], crop: int, mode: str, mean, std, device,
                 batch: int = 16, workers: int = 2, amp: str = "none", reencode: Optional[str] = None,
                 desc: str = ""):
    """Scores [n_images, 1 + n_conditions] (NaN for unreadable images or non-finite scores)."""
    from .models import min_input_side

    ds = SweepDataset(items, conds, crop, mode, reencode, min_side=min_input_side(model))
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_eval)
    scores = np.full((len(items), 1 + len(conds)), np.nan)
    errors: Dict[int, str] = {}
    for group in progress(loader, desc=desc, leave=False, dynamic_ncols=True):
        ok = [g for g in group if g[0] is not None]
        for g in group:
            if g[0] is None:
                errors[g[1]] = g[2]
        if ok:
            flat = [c for g in ok for c in g[0]]
            s = np.asarray(score_crops(model, flat, device, amp, mean=mean, std=std),
                           dtype=np.float64).reshape(len(ok), -1)
            for g, row in zip(ok, s):
                scores[g[1]] = row
    return scores, errors


def summarize(labels: np.ndarray, scores: np.ndarray, conds: Sequence[Condition], threshold: float
              ) -> Dict[str, Any]:
    """Per-condition metrics of one subset; images with any non-finite score are left out."""
    keep = np.isfinite(scores).all(axis=1)
    y, s = labels[keep], scores[keep]
    out: Dict[str, Any] = {"n": int(keep.sum()), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
                           "dropped": int((~keep).sum()), "conditions": {}}
    out["conditions"]["native"] = condition_metrics(y, s[:, 0], s[:, 0], threshold)
    for j, c in enumerate(conds, 1):
        out["conditions"][c.name] = condition_metrics(y, s[:, 0], s[:, j], threshold)
    return out


def mean_over_subsets(per_subset: Dict[str, Dict[str, Any]], names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for name in names:
        rows = [v["conditions"][name] for v in per_subset.values() if name in v.get("conditions", {})]
        out[name] = {}
        for k in (rows[0].keys() if rows else []):
            vals = [r[k] for r in rows if r[k] is not None]
            out[name][k] = float(np.mean(vals)) if vals else None
    return out


def _p(v, signed=False) -> str:
    return "-" if v is None else (f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}")


def format_tables(result: Dict[str, Any]) -> str:
    conds = ["native"] + [c["name"] for c in result["conditions"]]
    resize = [c for c in result["conditions"] if c["group"].startswith("resize:")]
    lines = [f"# Robustness: {result['title']}", "",
             f"Decisions at P(fake) > {result['threshold']:.4g}; every condition applied to real and fake images "
             f"alike{'; every image first re-encoded as ' + result['reencode'] if result['reencode'] else ''}. "
             "flip: share whose decision differs from native; to fake: share that turn fake; dP: mean change "
             "of P(fake). Values in %.", ""]
    if resize:
        factors = sorted({c["strength"] for c in resize})
        kernels = list(dict.fromkeys(c["group"].split(":", 1)[1] for c in resize))
        m = result["mean"]
        lines += ["## Mean over subsets: AP under resizing (native " + _p(m["native"]["ap"]) + ")", "",
                  "| kernel (convention) | " + " | ".join(f"x{f:g}" for f in factors) + " |",
                  "|---" * (len(factors) + 1) + "|"]
        for k in kernels:
            lines.append(f"| {k} ({CONVENTION[k]}) | " + " | ".join(
                _p(m.get(f"resize{f:g}-{k}", {}).get("ap")) for f in factors) + " |")
        lines += ["", "## Mean over subsets: real photos turned fake by resizing (to fake, %)", "",
                  "| kernel | " + " | ".join(f"x{f:g}" for f in factors) + " |", "|---" * (len(factors) + 1) + "|"]
        for k in kernels:
            lines.append(f"| {k} | " + " | ".join(
                _p(m.get(f"resize{f:g}-{k}", {}).get("real_to_fake")) for f in factors) + " |")
        lines.append("")
    tier_conds = [c for c in result["conditions"] if c["group"] == "tier"]
    if tier_conds:
        m = result["mean"]
        lines += ["## Robustness tiers (mean over subsets; both classes)", "",
                  "| tier | what | AP | acc | real to fake | fake flip |", "|---|---|---|---|---|---|",
                  f"| native | as distributed | {_p(m['native']['ap'])} | {_p(m['native']['acc'])} | - | - |"]
        for c in tier_conds:
            r, t = m.get(c["name"], {}), c["name"].split("-", 1)[1]
            lines.append(f"| {t} | {TIERS[t][0] if t in TIERS else ''} | {_p(r.get('ap'))} | {_p(r.get('acc'))} | "
                         f"{_p(r.get('real_to_fake'))} | {_p(r.get('fake_flip'))} |")
        lines.append("")
    for sub, v in result["subsets"].items():
        lines += [f"## {sub}", ""]
        if "conditions" not in v:
            lines += [f"{v.get('status', 'not scored')}", ""]
            continue
        lines += [f"{v['n_real']} real, {v['n_fake']} fake" + (f", {v['dropped']} unreadable or failed (left out)"
                                                               if v["dropped"] else ""), "",
                  "| condition | AP | acc | real acc | real flip | real to fake | real dP | fake acc | fake flip | fake dP |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name in conds:
            r = v["conditions"][name]
            lines.append(f"| {name} | {_p(r['ap'])} | {_p(r['acc'])} | {_p(r['real_acc'])} | {_p(r['real_flip'])} | "
                         f"{_p(r['real_to_fake'])} | {_p(r['real_dp'], True)} | {_p(r['fake_acc'])} | "
                         f"{_p(r['fake_flip'])} | {_p(r['fake_dp'], True)} |")
        lines.append("")
    return "\n".join(lines)


def format_csv(result: Dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ["ap", "auc", "acc", "real_acc", "real_flip", "real_to_fake", "real_dp", "fake_acc", "fake_flip",
            "fake_to_fake", "fake_dp"]
    w.writerow(["subset", "condition", "group", "strength", *keys])
    meta = {c["name"]: c for c in result["conditions"]}
    blocks = list(result["subsets"].items()) + [("mean", {"conditions": result["mean"]})]
    for sub, v in blocks:
        for name, r in v.get("conditions", {}).items():
            c = meta.get(name, {"group": "native", "strength": ""})
            w.writerow([sub, name, c["group"], c["strength"], *(r.get(k) for k in keys)])
    return buf.getvalue()


def _pct_or_gap(v: Optional[float]) -> float:
    """A plotted percentage; NaN (a gap in the line, not a point at 0) where the metric is undefined."""
    return float("nan") if v is None else 100 * v


def plot(result: Dict[str, Any], out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, conds, written = result["mean"], result["conditions"], []
    native = m["native"]
    resize = [c for c in conds if c["group"].startswith("resize:")]
    if resize:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for k in dict.fromkeys(c["group"].split(":", 1)[1] for c in resize):
            # native is factor 1.0 of every kernel: each line passes through it
            pts = sorted([(c["strength"], m[c["name"]]) for c in resize if c["group"] == f"resize:{k}"] +
                         [(1.0, native)], key=lambda t: t[0])
            style = "--" if k.endswith("noaa") else "-"
            for ax, key in zip(axes, ("ap", "real_to_fake", "fake_flip")):
                ax.plot([x for x, _ in pts], [_pct_or_gap(r[key]) for _, r in pts], style, marker="o", ms=3, label=k)
        if native["ap"] is not None:
            axes[0].axhline(100 * native["ap"], color="k", lw=0.8, ls=":", label="native")
        for ax, t in zip(axes, ("AP (%) under resizing", "real photos turned fake (%)", "fake images flipped (%)")):
            ax.set_xlabel("resize factor")
            ax.set_title(t, fontsize=9)
            ax.axvline(1.0, color="grey", lw=0.5)
        axes[0].legend(fontsize=7)
        written.append(_save(fig, result, os.path.join(out_dir, "resize_ap.png")))
    groups = [g for g in ("jpeg", "webp", "blur") if any(c["group"] == g for c in conds)]
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(4.3 * len(groups), 3.6), squeeze=False)
        for ax, g in zip(axes[0], groups):
            cs = sorted([c for c in conds if c["group"] == g], key=lambda c: c["strength"])
            # native is the left end of every line: blur 0, or "no re-encoding" beyond quality 100
            native_x = 0.0 if g == "blur" else 105.0
            pts = sorted([(c["strength"], m[c["name"]]) for c in cs] + [(native_x, native)], key=lambda t: t[0])
            for key, label in (("ap", "AP"), ("acc", "acc"), ("real_acc", "real acc"), ("fake_acc", "fake acc")):
                ax.plot([x for x, _ in pts], [_pct_or_gap(r[key]) for _, r in pts], marker="o", ms=3, label=label)
            ticks = sorted({x for x, _ in pts})
            ax.set_xticks(ticks, ["native" if x == native_x else f"{x:g}" for x in ticks], fontsize=7)
            if native["ap"] is not None:
                ax.axhline(100 * native["ap"], color="k", lw=0.8, ls=":", label="native AP")
            ax.set_xlabel({"jpeg": "JPEG quality", "webp": "WebP quality", "blur": "blur sigma (px)"}[g])
            if g in ("jpeg", "webp"):
                ax.invert_xaxis()
            ax.set_ylim(0, 100)
            ax.legend(fontsize=7)
        written.append(_save(fig, result, os.path.join(out_dir, "degrade.png")))
    return written


def _save(fig, result: Dict[str, Any], path: str) -> str:
    import matplotlib.pyplot as plt

    fig.suptitle(f"{result['title']} (mean over subsets)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--root", default=None)
    add_bench_args(p)
    p.add_argument("--split", default=None)
    p.add_argument("--subsets", nargs="*", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--factors", nargs="*", type=float, default=list(FACTORS))
    p.add_argument("--kernels", nargs="*", default=list(KERNELS), help=f"of {', '.join(KERNELS)}")
    p.add_argument("--jpeg", nargs="*", type=int, default=list(JPEG_QUALITIES))
    p.add_argument("--webp", nargs="*", type=int, default=list(WEBP_QUALITIES))
    p.add_argument("--blur", nargs="*", type=float, default=list(BLUR_SIGMAS))
    p.add_argument("--tiers", nargs="*", default=list(TIERS),
                   help="robustness tiers, one summary row each: web (long side <= 768 px, JPEG q60), hard "
                        "(<= 512 px, JPEG q40) (default both; none: --tiers with no value)")
    p.add_argument("--reencode", default=None, help="re-encode every image first: png, jpeg:Q or webp:Q")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="score at most this many real and fake images per subset (seeded sample)")
    p.add_argument("--threshold-from", default=None, help="as in evaluate.py")
    p.add_argument("--crop", default="center", choices=["center", "tiles"])
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    return p


def sample_items(items, k: Optional[int], seed: int):
    if k is None:
        return list(items)
    rng = np.random.default_rng(seed)
    out = []
    for cls in (0, 1):
        idx = [i for i, (_, y) in enumerate(items) if y == cls]
        if len(idx) > k:
            idx = sorted(rng.choice(idx, size=k, replace=False).tolist())
        out += [items[i] for i in idx]
    return out


def run(args) -> Dict[str, Any]:
    from . import distributed as D
    from .evaluate import load_threshold, run_title

    conds = conditions(args.factors, args.kernels, args.jpeg, args.webp, args.blur, args.reencode, args.tiers)
    threshold, threshold_from = load_threshold(args.threshold_from) if args.threshold_from else (0.5, "default 0.5")
    info = D.init(args.device)
    model, cfg = load_detector(args.ckpt, info.device)
    subsets = load_benchmark(args.bench, args.root, args.split, args.subsets, **bench_kwargs(args))
    if not any(s.status == "ok" for s in subsets):
        raise InputError(f"no subset to score: {', '.join(f'{s.name} ({s.status})' for s in subsets)}"
                         + (" (check the --subsets names)" if args.subsets else ""))
    crop = crop_size(args.size, cfg)
    n = cfg["normalize"]
    title = run_title(args.bench, args.ckpt, None) + (f", every image re-encoded as {args.reencode} first"
                                                      if args.reencode else "")
    result: Dict[str, Any] = {"title": title, "checkpoint": os.path.abspath(args.ckpt), "bench": args.bench,
                              "threshold": threshold, "threshold_from": threshold_from, "reencode": args.reencode,
                              "crop": {"size": crop, "mode": args.crop},
                              "conditions": [{"name": c.name, "group": c.group, "strength": c.strength}
                                             for c in conds], "subsets": {}}
    for sub in subsets:
        if sub.status != "ok":
            result["subsets"][sub.name] = {"status": sub.status}
            continue
        items = sample_items(sub.items, args.max_per_class, args.seed)
        scores, errors = sweep_subset(model, items, conds, crop, args.crop, n["mean"], n["std"], info.device,
                                      args.batch, args.workers, args.amp, args.reencode, desc=sub.name)
        labels = np.asarray([y for _, y in items], dtype=np.int64)
        result["subsets"][sub.name] = summarize(labels, scores, conds, threshold)
        result["subsets"][sub.name]["errors"] = {items[i][0]: e for i, e in list(errors.items())[:10]}
    scored = {k: v for k, v in result["subsets"].items() if "conditions" in v and v["n"]}
    if not scored:
        raise InputError(f"no image could be scored in {', '.join(result['subsets'])} (unreadable or too small: "
                         f"{[e for v in result['subsets'].values() for e in v.get('errors', {}).values()][:3]})")
    result["mean"] = mean_over_subsets(scored, ["native"] + [c.name for c in conds])
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "robustness.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(args.out, "robustness.csv"), format_csv(result))
    text = format_tables(result)
    atomic_write_text(os.path.join(args.out, "robustness.md"), text + "\n")
    figures = plot(result, args.out) if scored else []
    print(text, flush=True)
    print(f"\nwritten to {args.out}/robustness.{{json,csv,md}}" + "".join(f", {os.path.basename(f)}" for f in figures),
          flush=True)
    return result


def main(argv=None):
    from .cli import run_main

    return run_main(run, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
