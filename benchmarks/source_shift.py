"""The demo detectors when the reals come from other cameras: head vs distance score, side by side.

The mini-benchmark's reals and fakes are tiles of the photos that ship in scikit-image / scikit-learn.
This check keeps its generators (trained as `fitgap.minibench` trains them, on the same training tiles,
the same seeds) and applies them to 128-px tiles of other cameras' photos that Debian ships
(`apt-get install opencv-doc palapeli-data`; DFSG-free, Debian main): reals and fakes from a source
no detector was fine-tuned on. Those photos are JPEGs and the generators' outputs are not, so a
second copy re-encodes every fake as JPEG q90 (`<out>/jpeg_fakes`): there compression traces cannot
tell the classes apart. Every detector checkpoint given is scored with its head and, where it holds a
fitted distance (fine-tuning's `score: distance`), with the distance too, on both copies and on the
mini-benchmark's test split.

    python benchmarks/source_shift.py runs/demo*/finetune*/best.pt [--out .cache/source_shift]

Results: benchmarks/RESULTS.md, "A detector that reads its distance from the reals".
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fitgap import minibench as M  # noqa: E402
from fitgap.evaldata import image_features  # noqa: E402
from fitgap.benchmarks import load_benchmark  # noqa: E402
from fitgap.data import decode_rgb  # noqa: E402
from fitgap.detector import load_detector  # noqa: E402
from fitgap.errors import MissingInput  # noqa: E402
from fitgap.photos import DEBIAN_PACKAGES, OPENCV, PALAPELI, debian_photos  # noqa: E402

PER_PHOTO = 12


def other_camera_tiles() -> list:
    paths = debian_photos()
    if not paths:
        raise MissingInput(f"no other-camera photos under {OPENCV} or {PALAPELI}: "
                           f"apt-get install {DEBIAN_PACKAGES}")
    tiles = []
    for p in paths:  # non-overlapping 128-px tiles in a checkerboard, at most PER_PHOTO a photo
        a = decode_rgb(p)
        h, w = a.shape[:2]
        k = 0
        for y in range(0, h - M.TILE + 1, M.TILE):
            for x in range(0, w - M.TILE + 1, M.TILE):
                if k < PER_PHOTO and (y // M.TILE + x // M.TILE) % 2 == 0:
                    tiles.append(np.ascontiguousarray(a[y:y + M.TILE, x:x + M.TILE]))
                    k += 1
    return tiles


def jpeg(a: np.ndarray, quality: int = 90) -> np.ndarray:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=quality)
    b.seek(0)
    return np.asarray(Image.open(b).convert("RGB"))


def build(out: str) -> None:
    """<out>/plain and <out>/jpeg_fakes, each {family}/{0_real,1_fake}/*.png (a family skipped when built
    whole for the current mini-benchmark version; the four folders are written in order, the JPEG fakes last)."""
    M.refresh_derived(out, ["plain", "jpeg_fakes"])

    def built(kind):
        n = len(glob.glob(os.path.join(out, "plain", kind, "0_real", "*.png")))
        return n > 0 and len(glob.glob(os.path.join(out, "jpeg_fakes", kind, "1_fake", "*.png"))) == n

    if all(built(kind) for kind in M.FAMILIES):
        return
    tiles = other_camera_tiles()
    train = M.photo_tiles(M.TRAIN)
    for f, kind in enumerate(M.FAMILIES):  # the build's generators: its step counts and seeds (seed 0 + index)
        if built(kind):
            continue
        fakes = M.generate(kind, M.train_generator(kind, train, M.BUILD_STEPS, f), tiles, 300)
        for copy, fk in (("plain", fakes), ("jpeg_fakes", [jpeg(a) for a in fakes])):
            M._save(os.path.join(out, copy, kind, "0_real"), tiles)
            M._save(os.path.join(out, copy, kind, "1_fake"), fk)
        print(f"{kind}: {len(tiles)} other-camera tiles, PSNR of the fakes {M.psnr(tiles, fakes):.1f} dB", flush=True)


def sets(out: str) -> dict:
    """{name: subsets} of the three sets every detector is scored on (the other-camera ones built once)."""
    build(out)
    fams = list(M.FAMILIES)
    return {"mini-benchmark test split": load_benchmark("mini", None, "test", fams),
            "other cameras": load_benchmark("folder", os.path.join(out, "plain"), None, fams),
            "other cameras, fakes JPEG q90": load_benchmark("folder", os.path.join(out, "jpeg_fakes"), None, fams)}


@torch.no_grad()
def family_features(det, cfg, subsets):
    """[(family, features as a tensor, labels)] of a detector's encoder on every subset's readable images
    (the checkpoint's evaluation crop)."""
    n = cfg["normalize"]
    out = []
    for s in subsets:
        f = image_features(det.encoder, s.items, cfg["eval"]["size"] or cfg["patch"], n["mean"], n["std"], "cpu")
        keep = [k for k, v in enumerate(f) if v is not None]
        out.append((s.name, torch.from_numpy(np.stack([f[k] for k in keep])), np.array([s.items[k][1] for k in keep])))
    return out


@torch.no_grad()
def scores(ckpt: str, subsets) -> dict:
    """{score: [AP per family]} of one detector: its head, and its distance where fitted."""
    from sklearn.metrics import average_precision_score

    det, cfg = load_detector(ckpt, "cpu")
    out = {"head": []}
    if det.distance is not None:
        out["distance"] = []
    for _, x, y in family_features(det, cfg, [subsets[fam] for fam in M.FAMILIES]):
        out["head"].append(average_precision_score(y, det.classifier(x).squeeze(1).numpy()))
        if det.distance is not None:
            out["distance"].append(average_precision_score(y, det.distance(x).numpy()))
    return out


def parse_args(argv, doc: str, extra=None):
    """The command line of the source-shift scripts: detector checkpoints, --out and what `extra(parser)`
    adds (2 threads set)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", nargs="+", help="detector checkpoints (finetune.py's best.pt)")
    ap.add_argument("--out", default=os.path.join(".cache", "source_shift"))
    if extra:
        extra(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    return args


def main(argv=None) -> None:
    args = parse_args(argv, __doc__)
    benches = sets(args.out)
    print("| detector | set | score | " + " | ".join(M.FAMILIES) + " | unseen mean |")
    print("|---|---|---|" + "---|" * (len(M.FAMILIES) + 1))
    for ck in args.ckpts:
        for name, subs in benches.items():
            for score, aps in scores(ck, {s.name: s for s in subs}).items():
                print(f"| {ck} | {name} | {score} | " + " | ".join(f"{100 * a:.1f}" for a in aps)
                      + f" | {100 * np.mean(aps[1:]):.1f} |", flush=True)


if __name__ == "__main__":
    main()
