"""`fitgap detect` on a folder against the model alone: is decoding hidden, and what does the
resampling check cost?

    python benchmarks/bench_detect.py            # 1,000 JPEGs of 500x375 (q90), centre crop and tiles

The JPEGs are cut from the photos that ship in scikit-image / scikit-learn (made once per run in a
temporary folder). The detector is a randomly initialised resnet10t + Laplacian, the demo's encoder, at
the demo's 64-px crops: speed does not depend on its weights. Per crop mode (tiles on a tenth of the
images: 48 tiles each), in one run:

- model alone: score_logits on crops decoded and cut beforehand (nothing but the forward passes), for
  the image alone (1 version) and with the resampling check's versions (4);
- detect: fitgap.detect's whole path (DataLoader workers decode, resample and cut, headers are read,
  rows are written) with --no-consistency and with the check.

Targets (2 cores): detect at >= 0.8x the model-alone rate (decoding hidden), and the check costing no
more than its extra forward passes (detect with the check at >= 0.8x the 4-version model-alone rate).

Beside them, the loader's work alone (decode, header read, the check's resampling, crops; one process,
no model) and the ceiling it sets when the model and the workers share the same cores: 1 / (1/model +
1/(cores x loader)), and at most workers x loader. When one image's decode costs about what its forward pass does (a 64-px crop of
a 500x375 JPEG), no overlap can bring detect near the model-alone rate on 2 cores; the ceiling says how
near it can come, and detect's rate over the ceiling is how well the overlap works.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, print_table  # noqa: E402

from fitgap import checkpoint as ckpt  # noqa: E402
from fitgap import detect as det  # noqa: E402
from fitgap.detector import score_logits  # noqa: E402
from fitgap.models import Detector, build_encoder  # noqa: E402
from fitgap.photos import HELDOUT, TRAIN, photo_path  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def ceiling(model_rate: float, loader_rate: float, cores: int, workers: int) -> float:
    """The most images/s detect can reach when the model (model_rate with every one of `cores` busy)
    and the loader work (loader_rate on one core) share those cores perfectly: one image costs the
    model's time plus the loader's core-time spread over the cores; and never more than the workers
    can prepare (workers x loader_rate; 0 workers: the main process does both, one after the other)."""
    shared = 1 / (1 / model_rate + 1 / (cores * loader_rate))
    return min(shared, workers * loader_rate) if workers > 0 else 1 / (1 / model_rate + 1 / loader_rate)


def make_jpegs(folder: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(photo_path(p)).convert("RGB")) for p in TRAIN + HELDOUT]
    photos = [p for p in photos if p.shape[0] >= 375 and p.shape[1] >= 500]
    for i in range(n):
        a = photos[i % len(photos)]
        y, x = int(rng.integers(0, a.shape[0] - 375 + 1)), int(rng.integers(0, a.shape[1] - 500 + 1))
        Image.fromarray(a[y:y + 375, x:x + 500]).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def make_detector(path: str, size: int) -> None:
    torch.manual_seed(0)
    model = Detector(build_encoder("resnet10t", highpass=True))
    cfg = {"model": {"backbone": "resnet10t", "pretrained": False, "weights": None, "stem_stride": None,
                     "stem_pool": True, "highpass": True, "pool_grid": 1},
           "normalize": {"mean": MEAN, "std": STD}, "patch": size, "eval": {"size": size}}
    ckpt.atomic_save({"model": model.state_dict(), "config": cfg, "kind": "detector"}, path)


def model_alone(model, files, size, mode, check, batch) -> float:
    """images/s of the forward passes alone, on crops prepared beforehand."""
    prepared = [det.file_crops(f, size, mode, 1, check) for f in files]
    flat = [c for crops in prepared for c in crops.values()]
    per_image = len(flat) // len(prepared)
    t0 = time.perf_counter()
    for i in range(0, len(flat), batch * per_image):
        score_logits(model, flat[i:i + batch * per_image], "cpu", mean=MEAN, std=STD)
    return len(files) / (time.perf_counter() - t0)


def prepare_rate(files, size, mode, check) -> float:
    """images/s of what the loader workers do (decode, header read, resampling check, crops), in this
    one process, no model."""
    t0 = time.perf_counter()
    for f in files:
        det.prepare(f, f, size, mode, 1, check)
    return len(files) / (time.perf_counter() - t0)


def detect_rate(ckpt_path, folder, n, mode, check, batch, workers) -> float:
    args = det.get_args_parser().parse_args(["--ckpt", ckpt_path, folder, "--crop", mode, "--device", "cpu",
                                             "--batch", str(batch), "--workers", str(workers), "--calibration",
                                             "none"] + ([] if check else ["--no-consistency"]))
    t0 = time.perf_counter()
    failed = det.main(args, out=io.StringIO())
    if failed:
        raise RuntimeError(f"{failed} files failed")
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="JPEGs (default 1000)")
    ap.add_argument("--size", type=int, default=64, help="crop size (default 64, the demo's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved repeats of the model-alone and detect rates, medians reported (default 3)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
          f"{args.n} JPEGs 500x375 q90; crop {args.size}; batch {args.batch}; {args.workers} loader workers; "
          f"{args.threads} threads; {args.repeat} interleaved repeats\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "jpegs")
        os.makedirs(folder)
        make_jpegs(folder, args.n)
        path = os.path.join(tmp, "best.pt")
        make_detector(path, args.size)
        from fitgap.detector import load_detector

        model, _ = load_detector(path, "cpu")
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        rows, verdicts = [], []
        for mode in ("center", "tiles"):
            # tiles: 48 crops per image (500x375 at 64 px), so a tenth of the images
            n = args.n if mode == "center" else max(16, args.n // 10)
            sub = os.path.join(tmp, f"jpegs_{mode}")
            os.makedirs(sub)
            for f in files[:n]:
                os.link(f, os.path.join(sub, os.path.basename(f)))
            # interleaved repeats, medians: on a shared machine one run of a rate moves by 10-20%
            runs: dict = {"alone1": [], "d1": [], "alone4": [], "d4": []}
            for _ in range(args.repeat):
                runs["alone1"].append(model_alone(model, files[:n], args.size, mode, False, args.batch))
                runs["d1"].append(detect_rate(path, sub, n, mode, False, args.batch, args.workers))
                runs["alone4"].append(model_alone(model, files[:n], args.size, mode, True, args.batch))
                runs["d4"].append(detect_rate(path, sub, n, mode, True, args.batch, args.workers))
            alone1, d1, alone4, d4 = (float(np.median(runs[k])) for k in ("alone1", "d1", "alone4", "d4"))
            spread = {k: f"{min(v):,.0f}-{max(v):,.0f}" for k, v in runs.items()}
            prep1 = prepare_rate(files[:min(n, 200)], args.size, mode, False)
            prep4 = prepare_rate(files[:min(n, 200)], args.size, mode, True)
            cores = min(os.cpu_count() or 1, args.threads)  # the cores the model-alone rate used
            ceil1, ceil4 = ceiling(alone1, prep1, cores, args.workers), ceiling(alone4, prep4, cores, args.workers)
            mode = f"{mode} ({n} images)"
            rows += [(mode, "model alone, image only", f"{alone1:,.0f}", spread["alone1"], "1.00x"),
                     (mode, "loader work alone (1 process)", f"{prep1:,.0f}", "", f"{prep1 / alone1:.2f}x"),
                     (mode, f"ceiling on {cores} cores (model + loader work)", f"{ceil1:,.0f}", "", f"{ceil1 / alone1:.2f}x"),
                     (mode, "detect --no-consistency", f"{d1:,.0f}", spread["d1"], f"{d1 / alone1:.2f}x"),
                     (mode, "model alone, 4 versions", f"{alone4:,.0f}", spread["alone4"], "1.00x"),
                     (mode, "loader work alone, with the check", f"{prep4:,.0f}", "", f"{prep4 / alone4:.2f}x"),
                     (mode, f"ceiling on {cores} cores, with the check", f"{ceil4:,.0f}", "", f"{ceil4 / alone4:.2f}x"),
                     (mode, "detect (resampling check)", f"{d4:,.0f}", spread["d4"], f"{d4 / alone4:.2f}x")]
            verdicts += [(mode, "detect vs model alone", f"{d1 / alone1:.2f}x", ">= 0.8x",
                          "met" if d1 / alone1 >= 0.8 else "short", f"{d1 / ceil1:.2f}x"),
                         (mode, "check vs its forward passes", f"{d4 / alone4:.2f}x", ">= 0.8x",
                          "met" if d4 / alone4 >= 0.8 else "short", f"{d4 / ceil4:.2f}x")]
        print_table(["crop", "path", f"images/s (median of {args.repeat})", "range", "of model alone"], rows,
                    "detect vs the model alone")
        print()
        print_table(["crop", "what", "measured", "target", "verdict", "of the ceiling"], verdicts, "Targets")


if __name__ == "__main__":
    main()
