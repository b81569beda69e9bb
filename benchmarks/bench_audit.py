"""Speed of the dataset audit: header-only reads vs full decodes, on a synthetic tree of N files.

    python benchmarks/bench_audit.py                 # N = 100,000 small JPEG/PNG files
    python benchmarks/bench_audit.py --n 20000 --keep /tmp/audit_tree

The tree: N small files, half JPEG (qualities 70-95), half PNG (listing and header reads do not
depend on pixel count), plus 1,000 ImageNet-like JPEGs (about 500x375, quality 90). The tables
compare, in one run, the audit's header reads (1 and 2 processes) with a full decode of each file
(what a pixel-reading audit would cost), and extrapolate to N files. The whole audit (headers + the
cross-validated metadata classifier) of the N files is timed at the end.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, print_table  # noqa: E402
from fitgap.audit import audit, read_headers  # noqa: E402
from fitgap.benchmarks import load_benchmark  # noqa: E402
from fitgap.data import decode_rgb  # noqa: E402


def make_tree(root: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tiles = [rng.integers(0, 256, (s, s + 8, 3), dtype=np.uint8) for s in (32, 40, 48, 64)]
    for label in ("0_real", "1_fake"):
        os.makedirs(os.path.join(root, "gen", label), exist_ok=True)
    for i in tqdm(range(n), desc="writing files", dynamic_ncols=True):
        label = "0_real" if i % 2 == 0 else "1_fake"
        img = Image.fromarray(tiles[i % len(tiles)])
        if label == "0_real":
            img.save(os.path.join(root, "gen", label, f"{i:07d}.jpg"), quality=70 + i % 26)
        else:
            img.save(os.path.join(root, "gen", label, f"{i:07d}.png"), compress_level=1)


def make_imagenet_like(root: str, n: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "imagenet_like")
    os.makedirs(folder, exist_ok=True)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((520, 400),
                                                                                            Image.BICUBIC))
    paths = []
    for i in range(n):
        h, w = int(rng.integers(333, 400)), int(rng.integers(450, 520))
        p = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(np.roll(base, 7 * i, axis=1)[:h, :w]).save(p, quality=90)
        paths.append(p)
    return paths


def time_paths(sample, title, n_total):
    timings = {}
    for name, fn in (("full decode (decode_rgb)", lambda ps: [decode_rgb(p) for p in ps]),
                     ("headers, 1 process", lambda ps: read_headers(ps, workers=0)),
                     ("headers, 2 processes", lambda ps: read_headers(ps, workers=2, min_parallel=0))):
        t0 = time.perf_counter()
        fn(sample)
        timings[name] = time.perf_counter() - t0
    base = timings["full decode (decode_rgb)"]
    rows = [[name, f"{len(sample) / t:,.0f}", f"{n_total * t / len(sample):.1f}", f"{base / t:.2f}x"]
            for name, t in timings.items()]
    print_table(["path", "files/s", f"s for {n_total:,} files", "vs full decode"], rows, title=title)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=5000, help="files timed per path")
    ap.add_argument("--keep", default=None, help="build (or reuse) the tree here instead of a temporary folder")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; Python {platform.python_version()}; "
          f"Pillow {Image.__version__}", flush=True)
    root = args.keep or tempfile.mkdtemp(prefix="bench_audit_")
    try:
        if not os.path.isdir(os.path.join(root, "gen")):
            t0 = time.perf_counter()
            make_tree(root, args.n)
            print(f"wrote {args.n} files in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        (sub,) = load_benchmark("folder", root)
        t_list = time.perf_counter() - t0
        n = len(sub.items)
        rng = np.random.default_rng(1)
        sample = [sub.items[i][0] for i in rng.choice(n, size=min(args.sample, n), replace=False)]
        time_paths(sample, f"small files ({len(sample):,} timed per path; listing {n:,} files took {t_list:.1f} s)", n)
        big = make_imagenet_like(root, 1000)
        time_paths(big, "ImageNet-like JPEGs, about 500x375 q90 (1,000 timed per path)", n)
        t0 = time.perf_counter()
        res = audit([sub], workers=2)
        t_all = time.perf_counter() - t0
        print(f"whole audit of {n:,} files (2 processes, headers + 5-fold random forest): {t_all:.1f} s; "
              f"metadata AP {res['subsets']['gen']['metadata_ap']:.3f} (JPEG reals vs PNG fakes: flagged "
              f"{res['subsets']['gen']['shortcut']})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
