"""What of a family's fakes a detector reads: the fake itself against its real plus the fake's residual
with the structure taken out.

Every fake of the mini-benchmark (and of the other-camera set of `source_shift.py`) is paired with the
real tile it was made from, so its residual d = fake - real is known. Two controls replace each fake:

- phases: the real plus d with the phases of its 2-D spectrum drawn at random (the same draw for the
  three channels): the residual's power at every frequency kept, periodic peaks included, where it sits
  in the tile and how it lines up with the image's edges lost;
- white: the real plus white Gaussian noise with the residual's mean and energy (per channel): only
  how much the fake departs from its real kept.

A detector that scores the fakes and their white control alike reads how noisy a fake is, not how it
was made. Each detector checkpoint is scored by its head (AP, reals against fakes / phases / white).

    python benchmarks/residual_control.py runs/demo*/finetune*/best.pt [--out .cache/residual_control]

Results: benchmarks/RESULTS.md, "What the detectors read of the pixel-diffusion fakes".
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fitgap import minibench as M  # noqa: E402
from fitgap.benchmarks import load_benchmark  # noqa: E402
from fitgap.data import decode_rgb  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import source_shift as S  # noqa: E402

CONTROLS = ("fakes", "phases", "white")


def phase_randomised(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """d (H, W, C) with the phases of its 2-D spectrum replaced by those of one white-noise field (so the
    result stays real; the same phases for all channels) and its mean kept: every channel's power
    spectrum is kept, the residual's layout is not."""
    h, w, c = d.shape
    spec = np.fft.rfft2(d, axes=(0, 1))
    theta = np.repeat(np.angle(np.fft.rfft2(rng.standard_normal((h, w))))[..., None], c, axis=2)
    theta[0, 0] = np.angle(spec[0, 0])
    return np.fft.irfft2(np.abs(spec) * np.exp(1j * theta), s=(h, w), axes=(0, 1))


def white(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise with d's mean and standard deviation, channel by channel."""
    flat = d.reshape(-1, d.shape[2])
    return rng.standard_normal(d.shape) * flat.std(0) + flat.mean(0)


def controls(reals, fakes, seed: int = 0) -> dict:
    """{control: [uint8 tile]} for one family's index-paired reals and fakes."""
    rng = np.random.default_rng(seed)
    out = {"phases": [], "white": []}
    for r, f in zip(reals, fakes):
        r64 = r.astype(np.float64)
        d = f.astype(np.float64) - r64
        out["phases"].append(np.clip(np.round(r64 + phase_randomised(d, rng)), 0, 255).astype(np.uint8))
        out["white"].append(np.clip(np.round(r64 + white(d, rng)), 0, 255).astype(np.uint8))
    return out


@torch.no_grad()
def head_aps(ckpt: str, subsets) -> list:
    """The AP of a detector's head on each subset, the detector loaded once."""
    from sklearn.metrics import average_precision_score

    from fitgap.detector import load_detector

    det, cfg = load_detector(ckpt, "cpu")
    return [average_precision_score(y, det.classifier(x).squeeze(1).numpy())
            for _, x, y in S.family_features(det, cfg, subsets)]


def read_folder(folder: str) -> list:
    return [decode_rgb(p) for p in sorted(glob.glob(os.path.join(folder, "*.png")))]


def build(src: str, out: str) -> None:
    """<out>/{phases,white}/{family}/{0_real,1_fake} from <src>/{family}/{0_real,1_fake} (once per
    mini-benchmark version)."""
    M.refresh_derived(out, list(CONTROLS[1:]))
    for kind in M.FAMILIES:
        n = len(glob.glob(os.path.join(src, kind, "0_real", "*.png")))
        if n and all(len(glob.glob(os.path.join(out, c, kind, label, "*.png"))) == n
                     for c in CONTROLS[1:] for label in ("0_real", "1_fake")):
            continue  # built complete; a run killed mid-write leaves fewer files and is built again
        reals = read_folder(os.path.join(src, kind, "0_real"))
        fakes = read_folder(os.path.join(src, kind, "1_fake"))
        if len(reals) != len(fakes) or not reals:
            raise SystemExit(f"{src}/{kind}: {len(reals)} reals and {len(fakes)} fakes; they must pair one to one")
        for name, tiles in controls(reals, fakes).items():
            M._save(os.path.join(out, name, kind, "0_real"), reals)
            M._save(os.path.join(out, name, kind, "1_fake"), tiles)
        print(f"{src} {kind}: PSNR to the reals, fakes {M.psnr(reals, fakes):.1f} dB, "
              f"phases {M.psnr(reals, read_folder(os.path.join(out, 'phases', kind, '1_fake'))):.1f}, "
              f"white {M.psnr(reals, read_folder(os.path.join(out, 'white', kind, '1_fake'))):.1f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", nargs="+", help="detector checkpoints (finetune.py's best.pt)")
    ap.add_argument("--out", default=os.path.join(".cache", "residual_control"))
    ap.add_argument("--other-cameras", default=os.path.join(".cache", "source_shift"),
                    help="source_shift.py's --out (its other-camera set is built there when missing)")
    ap.add_argument("--no-other-cameras", action="store_true", help="the mini-benchmark's test split only")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    fams = list(M.FAMILIES)
    sources = {"mini-benchmark test split": os.path.join(M.ensure_minibench(), "test")}
    if not args.no_other_cameras:
        S.build(args.other_cameras)
        sources["other cameras"] = os.path.join(args.other_cameras, "plain")
    benches = {}
    for k, (name, src) in enumerate(sources.items()):
        dst = os.path.join(args.out, f"set{k}")
        build(src, dst)
        benches[(name, "fakes")] = load_benchmark("folder", src, None, fams)
        for c in CONTROLS[1:]:
            benches[(name, c)] = load_benchmark("folder", os.path.join(dst, c), None, fams)
    print("| detector | set | fakes as | " + " | ".join(fams) + " |")
    print("|---|---|---|" + "---|" * len(fams))
    for ck in args.ckpts:  # one load and one pass over every copy of every set per detector
        aps = iter(head_aps(ck, [s for subs in benches.values() for s in subs]))
        for (name, c), subs in benches.items():
            row = [next(aps) for _ in subs]
            print(f"| {ck} | {name} | {c} | " + " | ".join(f"{100 * a:.1f}" for a in row) + " |", flush=True)


if __name__ == "__main__":
    main()
