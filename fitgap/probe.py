"""Linear probe of a frozen encoder: does it see the rescaling ratio, and the phase?

Patches of HELD-OUT photos are rescaled by every ratio (with the op) and encoded; a logistic
regression is scored leave-one-photo-out: the patches of each photo are predicted by a classifier
fitted on the patches of the other photos, so that photo content cannot carry the answer and every
photo is tested. With many photos (probe.folds = k > 0 and more than k photos) the photos are dealt
into k folds instead and each fold is predicted by a classifier fitted on the others: still never on
the photo it predicts, at a k-th of the fits. Reported: ratio accuracy vs chance (overall and per ratio), and per ratio the phase
(y0 mod q, x0 mod q) accuracy vs chance: phase is content-free, ratio can lean on scale cues.
Chance is the majority-class rate of the patches actually drawn (a ratio that gave no patch, because
the photos are smaller than its window, is named and counts in no chance level).

Beside the encoder, the same probe scores a hand-made trace statistic of the same patches (the
reference: `trace_statistic`, no learning): how much of the ratio and the phase these patches carry
at all, for this patch size, these photos and this many patches. An encoder at chance where the
reference is well above chance has not learned what is there; where the reference is at chance too,
the patches (or the probe's sample) do not carry it, and no encoder can be asked to show it.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

import rescale_ext
from rescale_ext.reference import dst_length, source_taps

from .data import ImageError, decode_rgb, list_images
from .errors import InputError
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
    """Patches of every photo at every ratio: x [M, 3, P, P], ratio index, phase index, photo index,
    and the photos skipped [(path, reason)] (unreadable, or too small to give any patch)."""
    rng = np.random.default_rng(seed)
    xs, ri, ph, img, skipped = [], [], [], [], []
    for k, path in enumerate(paths):
        try:
            a = decode_rgb(path)
        except ImageError as exc:
            skipped.append((path, f"unreadable: {exc}"))
            continue
        n_before = len(xs)
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
        if len(xs) == n_before:
            skipped.append((path, f"too small: {a.shape[1]}x{a.shape[0]}"))
    if not xs:
        raise InputError(f"probe: no held-out photo gave a patch (photos too small for probe.window?); "
                         f"skipped: {skipped[:5]}")
    return torch.cat(xs), np.array(ri), np.array(ph), np.array(img), skipped


@torch.no_grad()
def encode(encoder, x: torch.Tensor, device, batch: int = 64) -> np.ndarray:
    was = encoder.training
    encoder.eval()
    feats = []
    for i in range(0, x.shape[0], batch):
        feats.append(encoder(x[i:i + batch].to(device)).float().cpu())
    encoder.train(was)
    return torch.cat(feats).numpy()


def _fit_predict(f_tr, y_tr, f_te) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_tr)) < 2:
        return np.full(len(f_te), y_tr[0] if len(y_tr) else -1)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.01))
    clf.fit(f_tr, y_tr)
    return clf.predict(f_te)


def photo_folds(photo: np.ndarray, folds: int = 0) -> np.ndarray:
    """The fold of every row: one fold per photo (leave-one-photo-out) when folds is 0 or there are at
    most `folds` photos; else the photos, in order of their index, dealt round-robin into `folds` folds
    (deterministic: the same photos give the same folds on every machine)."""
    photos = np.unique(photo)
    if not folds or len(photos) <= folds:
        return photo.copy()
    fold_of = {p: i % folds for i, p in enumerate(photos)}
    return np.array([fold_of[p] for p in photo], dtype=np.int64)


def leave_one_photo_out(f: np.ndarray, y: np.ndarray, photo: np.ndarray, folds: int = 0) -> np.ndarray:
    """Prediction for every row, from a classifier fitted on the rows of the other photos (of the other
    folds of photos, see photo_folds)."""
    group = photo_folds(photo, folds)
    pred = np.full(len(y), -1)
    for k in np.unique(group):
        m = group == k
        pred[m] = _fit_predict(f[~m], y[~m], f[m])
    return pred


def cv_text(photos: int, folds: int = 0) -> str:
    """How the probe's classifiers were scored, for its report."""
    if not folds or photos <= folds:
        return "leave-one-photo-out"
    return f"photos in {folds} folds, each predicted by a classifier fitted on the other folds"


_LAPLACIAN = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]).view(1, 1, 3, 3)


def _energy_profiles(x: torch.Tensor):
    """Row and column profiles [M, P-2] of each patch's Laplacian residual energy (grey, |residual|,
    divided by its mean over the patch, so that the amount of detail does not count)."""
    e = F.conv2d(x.float().mean(1, keepdim=True), _LAPLACIAN)[:, 0].abs()
    e = e / (e.mean((1, 2), keepdim=True) + 1e-6)
    return e.mean(2), e.mean(1)


def trace_statistic(x: torch.Tensor, q: Optional[int] = None) -> np.ndarray:
    """The probe's reference, a hand-made trace statistic of patches x [M, C, P, P] (no learning).
    q=None: the log magnitude spectra of the row and column energy profiles (which periods the trace
    has: the ratio). q: the log mean of each profile over every position class mod q (where in the
    period the trace sits: the phase (y0 mod q, x0 mod q) of a ratio with denominator q)."""
    rows, cols = _energy_profiles(x)
    if q is None:
        spec = [torch.log1p(torch.fft.rfft(v - v.mean(1, keepdim=True)).abs()) for v in (rows, cols)]
        return torch.cat(spec, 1).numpy()
    n = rows.shape[1]
    classes = F.one_hot((torch.arange(n) + 1) % q, q).float()  # profile index i is patch pixel i + 1
    classes = classes / classes.sum(0).clamp_min(1)
    return torch.log(torch.cat([rows @ classes, cols @ classes], 1) + 1e-6).numpy()


def _scores(f: np.ndarray, ri: np.ndarray, ph: np.ndarray, img: np.ndarray, names: List[str],
            phase_features=None, folds: int = 0) -> Dict[str, Any]:
    """Ratio accuracy (overall, per ratio) and per-ratio phase accuracy of features f, leave-one-photo-out
    (or by folds of photos). phase_features(j) gives the features for ratio j's phase (default: f's rows
    of that ratio)."""
    pred = leave_one_photo_out(f, ri, img, folds)
    out = {"ratio_acc": float((pred == ri).mean()), "per_ratio": {}, "phase": {}}
    for j, name in enumerate(names):
        m = ri == j
        if not m.any():
            continue  # named in "no_patch"; it counts in no chance level
        out["per_ratio"][name] = float((pred[m] == j).mean())
        g = f[m] if phase_features is None else phase_features(j)
        acc = float((leave_one_photo_out(g, ph[m], img[m], folds) == ph[m]).mean())
        out["phase"][name] = {"acc": acc, "chance": majority_rate(ph[m])}
    return out


def probe_encoder(encoder, paths: List[str], ratios, patch: int, device, per_image: int = 8,
                  window: int = 384, quantize: bool = True, mean=None, std=None, seed: int = 0,
                  reference: bool = False, folds: int = 0) -> Dict[str, Any]:
    """The probe's report for `encoder`; reference=True adds the same scores of `trace_statistic` on the
    same patches as "reference". folds: see photo_folds."""
    x, ri, ph, img, skipped = probe_patches(paths, ratios, patch, per_image, window, quantize, mean, std, seed)
    photos = np.unique(img)
    if len(photos) < 2:
        raise InputError(f"probe: {len(photos)} usable held-out photo(s); leave-one-photo-out needs >= 2 "
                         f"(skipped {len(skipped)}: {skipped[:5]})")
    names = [format_ratio(r) for r in ratios]
    report = {"ratio_chance": majority_rate(ri), "n_test": int(len(ri)), "photos": int(len(photos)),
              "cv": cv_text(len(photos), folds),
              **_scores(encode(encoder, x, device), ri, ph, img, names, folds=folds),
              "no_patch": [n for j, n in enumerate(names) if not (ri == j).any()],
              "skipped": {"count": len(skipped), "examples": [f"{os.path.basename(p)}: {r}" for p, r in skipped[:5]]}}
    if reference and patch < 3:
        report["reference_skipped"] = f"{patch}-px patches: the statistic's 3x3 residual needs at least 3 px"
    elif reference:
        report["reference"] = _scores(trace_statistic(x), ri, ph, img, names,
                                      lambda j: trace_statistic(x[torch.from_numpy(ri == j)], ratios[j].denominator),
                                      folds)
    return report


FOLDS_RULE = "0 (leave-one-photo-out) or an integer >= 2 (folds of photos)"


def valid_folds(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0 and value != 1


def check_folds(value, name: str = "probe.folds") -> None:
    if not valid_folds(value):
        raise InputError(f"{name}: {FOLDS_RULE}, got {value!r}")


def majority_rate(labels: np.ndarray) -> float:
    """Chance level of a classifier that always answers the most frequent class present: 1/K when
    the K classes present are equally frequent, more when they are not (or when some never occur)."""
    return float(np.bincount(labels).max() / len(labels))


def initial_encoder(cfg: Dict[str, Any], device) -> torch.nn.Module:
    """The encoder a pre-training run started from: the same architecture initialised with the run's
    seed (or model.weights when given and still there; when it is gone, the seeded architecture, with
    a note as `.initial_note`), without touching the caller's random state (CPU and CUDA generators:
    fork_rng restores them all)."""
    import sys

    from .models import encoder_from_config

    weights = cfg["model"].get("weights")
    gone = bool(weights) and not os.path.isfile(weights)
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        torch.manual_seed(cfg.get("seed", 0))
        encoder = encoder_from_config(cfg["model"], load_weights=not gone).to(device)
    if gone:
        encoder.initial_note = (f"model.weights {weights} no longer exists: 'before pre-training' is the same "
                                f"architecture initialised with seed {cfg.get('seed', 0)}")
        print(f"warning: {encoder.initial_note}", file=sys.stderr, flush=True)
    return encoder


def run_probe(encoder, cfg: Dict[str, Any], device, baseline: Optional[bool] = None,
              reference: Optional[bool] = None) -> Dict[str, Any]:
    """The probe of a pre-training config (probe.images, the run's ratios, patch and normalisation).

    With probe.baseline (default), the same probe of the encoder as pre-training started from (same
    architecture, initialised with the run's seed, or model.weights when given) is reported beside
    it as "initial" (ratio and phase accuracy): the fixed input filter and a random network already
    see some of the trace, and that is the bar pre-training has to clear. With probe.reference
    (default), the hand-made statistic's scores on the same patches come as "reference": what the
    patches carry at all."""
    from .evaldata import op_normalization

    mean, std = op_normalization(cfg)
    p = cfg["probe"]
    args = (list_images(p["images"]), ratios_from_config(cfg["ratios"]), cfg["plan"]["patch"], device,
            p["patches"], p["window"], cfg["plan"]["quantize"], mean, std, p.get("seed", 0))
    folds = p.get("folds", 0)
    report = probe_encoder(encoder, *args, reference=p.get("reference", True) if reference is None else reference,
                           folds=folds)
    if p.get("baseline", True) if baseline is None else baseline:
        start = initial_encoder(cfg, device)
        base = probe_encoder(start, *args, folds=folds)
        report["initial"] = {"ratio_acc": base["ratio_acc"], "per_ratio": base["per_ratio"], "phase": base["phase"]}
        if getattr(start, "initial_note", None):
            report["initial"]["note"] = start.initial_note
    return report


def probe_table(r: Dict[str, Any]) -> List[str]:
    """Markdown: per ratio, the ratio and phase accuracy of the encoder, of the encoder before
    pre-training and of the hand-made reference statistic on the same patches, with chance."""
    init, ref = r.get("initial", {}), r.get("reference", {})
    cols = ["encoder"] + (["before pre-training"] if init else []) + (["reference statistic"] if ref else [])

    def cells(key, name, chance):
        vals = [r[key].get(name)] + ([init.get(key, {}).get(name)] if init else []) + (
            [ref.get(key, {}).get(name)] if ref else [])
        vals = [v["acc"] if isinstance(v, dict) else v for v in vals]
        return " | ".join("-" if v is None else f"{v:.2f} ({v / chance:.1f}x)" for v in vals)

    lines = ["| ratio | chance | " + " | ".join(f"ratio: {c}" for c in cols) + " | phase chance | "
             + " | ".join(f"phase: {c}" for c in cols) + " |", "|---" * (3 + 2 * len(cols)) + "|"]
    for name in r["per_ratio"]:
        chance_r = r["ratio_chance"]
        chance_p = r["phase"][name]["chance"]
        lines.append(f"| {name} | {chance_r:.2f} | {cells('per_ratio', name, chance_r)} | {chance_p:.2f} | "
                     f"{cells('phase', name, chance_p)} |")
    overall = [r["ratio_acc"]] + ([init["ratio_acc"]] if init else []) + ([ref["ratio_acc"]] if ref else [])
    lines.append(f"| all | {r['ratio_chance']:.2f} | " + " | ".join(f"{v:.2f} ({v / r['ratio_chance']:.1f}x)" for v in overall)
                 + " | | " + " | ".join("" for _ in cols) + " |")
    return lines


def format_probe(r: Dict[str, Any]) -> str:
    ratio = r["ratio_acc"] / r["ratio_chance"]
    phases = ", ".join(f"{k} {v['acc']:.2f} (chance {v['chance']:.2f})" for k, v in r["phase"].items())
    per = ", ".join(f"{k} {v:.2f}" for k, v in r.get("per_ratio", {}).items())
    return (f"probe ({r['photos']} held-out photos, {r.get('cv', 'leave-one-photo-out')}, {r['n_test']} patches): ratio "
            f"accuracy {r['ratio_acc']:.3f} vs chance {r['ratio_chance']:.3f} ({ratio:.1f}x) [per ratio: {per}]; "
            f"phase accuracy per ratio: {phases}"
            + (f"; the encoder before pre-training: ratio accuracy {r['initial']['ratio_acc']:.3f} "
               f"({r['initial']['ratio_acc'] / r['ratio_chance']:.1f}x)" if "initial" in r else "")
            + (", phase " + ", ".join(f"{k} {v['acc']:.2f}" for k, v in r["initial"]["phase"].items())
               if "phase" in r.get("initial", {}) else "")
            + (f"; the hand-made trace statistic on the same patches (reference, no learning): ratio accuracy "
               f"{r['reference']['ratio_acc']:.3f} ({r['reference']['ratio_acc'] / r['ratio_chance']:.1f}x), phase "
               + ", ".join(f"{k} {v['acc']:.2f}" for k, v in r["reference"]["phase"].items()) if "reference" in r else "")
            + (f"; no reference statistic ({r['reference_skipped']})" if "reference_skipped" in r else "")
            + (f"; skipped {r['skipped']['count']} photo(s): {', '.join(r['skipped']['examples'])}"
               if r.get("skipped", {}).get("count") else "")
            + (f"; no patch at {', '.join(r['no_patch'])} (photos smaller than its window)" if r.get("no_patch") else ""))


def main(argv=None) -> Dict[str, Any]:
    """python -m fitgap.probe --ckpt runs/<name>/checkpoint.pt [--images DIR] [--patches N]"""
    import argparse

    from .cli import run_main
    from .detector import load_encoder

    p = argparse.ArgumentParser(description="Linear probe of a pre-trained encoder (ratio and phase).")
    p.add_argument("--ckpt", required=True, help="a pre-training checkpoint (its config gives ratios and patch)")
    p.add_argument("--images", help="held-out photos (default: the checkpoint's probe.images)")
    p.add_argument("--patches", type=int, help="patches per photo and ratio")
    p.add_argument("--folds", type=int, help="0: leave-one-photo-out; k >= 2: the photos in k folds when there "
                                             "are more than k (default: the checkpoint's probe.folds)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    def go():
        device = torch.device(args.device)
        encoder, cfg = load_encoder(args.ckpt, device)
        if "ratios" not in cfg or "plan" not in cfg:
            raise InputError(f"--ckpt: {args.ckpt} is not a pre-training checkpoint (no ratios/plan in its config)")
        cfg = dict(cfg, probe=dict(cfg.get("probe", {})))
        if args.images:
            cfg["probe"]["images"] = args.images
        if args.patches is not None:
            if args.patches < 1:
                raise InputError(f"--patches: patches per photo and ratio must be >= 1, got {args.patches}")
            cfg["probe"]["patches"] = args.patches
        if args.folds is not None:
            check_folds(args.folds, "--folds")
            cfg["probe"]["folds"] = args.folds
        if not cfg["probe"].get("images"):
            raise InputError("--images: the checkpoint names no probe.images; give a folder of held-out photos")
        report = run_probe(encoder, cfg, device)
        print(format_probe(report), flush=True)
        return report

    return run_main(go)


if __name__ == "__main__":
    main()
