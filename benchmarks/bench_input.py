"""Pre-training input at ImageNet scale: listing, index memory per worker, and the feeding rate.

    python benchmarks/bench_input.py                       # N = 100,000 and 1,000,000 names, 2,000 JPEGs
    python benchmarks/bench_input.py --names 100000 --jpegs 500

Part 1, the index (old = every rank walks the tree into a list of str; new = rank 0 walks it once
into fitgap.index's flat buffers and saves index.npz, the other ranks receive it):
  a synthetic ImageNet-like tree of N empty files (1,000 class folders) is listed both ways; the new
  index is loaded from its .npz (what a restarted rank 0 does); then a forked worker touches every path
  of the parent's structure, and its private memory growth is read from /proc/self/smaps_rollup (the
  copy-on-write pages a worker stops sharing with its rank). Extrapolated to 8 ranks x 8 workers.
Part 2, the feeding rate per worker: ImageNet-like JPEGs (500x375, quality 90, cut from the photos
  that ship with scikit-image) through the real decode + window cut + pack path of the paper config
  (configs/pretrain.yaml: 128-px patches, ratios in (1, 2), 4 images per rank and step at 8 ranks),
  one thread, with Pillow and with torchvision.io.decode_jpeg (and whether their pixels agree), and
  the same files read from tar shards of 500 (fitgap.shards, one reader). The
  workers one GPU needs follow from an assumed GPU step rate (see the table's note).
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, print_table  # noqa: E402
from fitgap import config as C  # noqa: E402
from fitgap.data import Slot, WindowDataset, collate_planned, decode_rgb, step_plan  # noqa: E402
from fitgap.index import IMAGE_EXTENSIONS, build_index, load_index, save_index  # noqa: E402
from fitgap.photos import HELDOUT, TRAIN, photo_path  # noqa: E402
from fitgap.pretrain import DEFAULTS, build_spec  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANKS, WORKERS = 8, 8


# ---------------------------------------------------------------- part 1: index

def make_tree(root: str, n: int) -> None:
    classes = 1000
    for c in tqdm(range(classes), desc=f"{n:,} empty files", dynamic_ncols=True, leave=False):
        d = os.path.join(root, f"n{c:08d}")
        os.makedirs(d, exist_ok=True)
        for i in range(c * n // classes, (c + 1) * n // classes):
            open(os.path.join(d, f"n{c:08d}_{i}.JPEG"), "wb").close()


def old_listing(source: str):
    """What every rank did before: os.walk into a list of str."""
    out = []
    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def private_kib() -> int:
    """Private (not shared) memory of this process, KiB."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def worker_growth_kib(paths) -> int:
    """Fork a worker that touches every path of the parent's `paths` (as a DataLoader worker touches
    the paths it reads over an epoch); returns how much its private memory grew, KiB."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(r)
        before = private_kib()
        n = 0
        for i in range(len(paths)):
            n += len(paths[i])
        after = private_kib()
        os.write(w, str(after - before).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 64):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return int(data)


def traced_mib(fn):
    """(result, MiB that fn's result holds as traced Python/numpy allocations, seconds)."""
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, current / 2 ** 20, dt


def bench_index(n: int, workdir: str):
    tree = os.path.join(workdir, f"tree_{n}")
    if not os.path.isdir(tree):
        make_tree(tree, n)
    old_listing(tree)  # both ways then read a warm directory cache
    old, old_mib, t_old = traced_mib(lambda: old_listing(tree))
    listing, new_mib, t_new = traced_mib(lambda: build_index(tree))
    assert list(listing.index) == old, "the index must list the same files in the same order"
    npz = os.path.join(workdir, f"index_{n}.npz")
    t0 = time.perf_counter()
    save_index(npz, listing)
    t_save = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = load_index(npz)
    t_load = time.perf_counter() - t0
    grow_old = worker_growth_kib(old) / 1024
    grow_new = worker_growth_kib(loaded.index) / 1024
    return {"n": n, "t_old": t_old, "t_new": t_new, "t_save": t_save, "t_load": t_load, "npz_mib": os.path.getsize(npz) / 2 ** 20,
            "old_mib": old_mib, "new_mib": new_mib, "grow_old": grow_old, "grow_new": grow_new}


# ---------------------------------------------------------------- part 2: feeding rate

def make_jpegs(folder: str, count: int, seed: int = 0) -> list:
    """ImageNet-like JPEGs: 500x375 (or 375x500) crops of the shipped photos, quality 90, 4:2:0."""
    os.makedirs(folder, exist_ok=True)
    sources = [np.asarray(Image.open(photo_path(n)).convert("RGB")) for n in TRAIN + HELDOUT]
    rng = np.random.default_rng(seed)
    out = []
    for i in tqdm(range(count), desc=f"{count} JPEGs", dynamic_ncols=True, leave=False):
        path = os.path.join(folder, f"img_{i:05d}.jpg")
        out.append(path)
        if os.path.exists(path):
            continue
        img = sources[i % len(sources)]
        w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
        scale = max(w / img.shape[1], h / img.shape[0], 1.0)
        pil = Image.fromarray(img)
        if scale > 1.0:
            pil = pil.resize((math.ceil(img.shape[1] * scale), math.ceil(img.shape[0] * scale)), Image.BICUBIC)
        x = int(rng.integers(0, pil.width - w + 1))
        y = int(rng.integers(0, pil.height - h + 1))
        pil.crop((x, y, x + w, y + h)).save(path, quality=90)
    return out


def decode_pillow(path: str) -> np.ndarray:
    return decode_rgb(path, jpeg="pillow")


def paper_spec():
    cfg = C.load_config(os.path.join(ROOT, "configs", "pretrain.yaml"), [f"data.train={ROOT}"], DEFAULTS)
    return build_spec(cfg, RANKS)  # data.train: any existing folder, only the plan is used


def feeding(paths: list, decode, spec, steps: int) -> dict:
    """Images, windows and patches per second of one worker: decode + window cut + pack, the plan of
    the paper config, `steps` batches."""
    ds = WindowDataset(paths)
    ds.decode = decode
    n = len(paths)
    t0 = time.perf_counter()
    images = 0
    for step in range(steps):
        plan = step_plan(spec, 0, 0, step, 0)
        items = []
        for j in range(len(plan.windows)):
            window, skipped = ds[((step * spec.images + j) % n, Slot(int(plan.windows[j]), int(plan.seeds[j])))]
            items.append((window, skipped, plan if j == 0 else None))
        collate_planned(items)
        images += len(items)
    dt = time.perf_counter() - t0
    return {"images_s": images / dt, "windows_s": images / dt, "patches_s": images * spec.patches_per_image / dt}


def shard_feeding(paths: list, spec, steps: int, workdir: str) -> dict:
    """The same JPEGs read from tar shards by one reader (fitgap.shards.ShardWindows, in process)."""
    from fitgap import shards as S

    out = os.path.join(workdir, "jpeg_shards")
    if not os.path.isfile(os.path.join(out, S.MANIFEST)):
        S.write_shards(os.path.dirname(paths[0]), out, size=500, progress=False)
    ds = S.ShardWindows(S.shard_list(os.path.join(out, S.MANIFEST)), spec, 0, 1, seed=0, workers=1)
    steps = min(steps, ds.steps)
    it = iter(ds)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t0
    images = steps * spec.images
    return {"images_s": images / dt, "windows_s": images / dt, "patches_s": images * spec.patches_per_image / dt}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, nargs="+", default=[100_000, 1_000_000], help="file counts of part 1")
    ap.add_argument("--jpegs", type=int, default=2000, help="ImageNet-like JPEGs of part 2")
    ap.add_argument("--steps", type=int, default=400, help="batches per feeding measurement")
    ap.add_argument("--gpu-steps", type=float, nargs="+", default=[10.0, 25.0, 50.0],
                    help="assumed GPU step rates (steps/s) for the workers-per-GPU table")
    ap.add_argument("--keep", default=None, help="folder for the trees and JPEGs (kept; default: a temporary one)")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--skip-feed", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    workdir = args.keep or tempfile.mkdtemp(prefix="bench_input_")
    os.makedirs(workdir, exist_ok=True)
    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs; one thread per measurement; work folder {workdir}\n")
    try:
        if not args.skip_index:
            rows, extra = [], []
            for n in args.names:
                r = bench_index(n, workdir)
                rows.append([f"{n:,}", f"{r['t_old']:.2f}", f"{r['t_new']:.2f} + save {r['t_save']:.2f}",
                             f"{r['t_load']:.3f}", f"{r['old_mib']:.0f}", f"{r['new_mib']:.0f}",
                             f"{r['grow_old']:.1f}", f"{r['grow_new']:.1f}"])
                old_total = RANKS * (r["old_mib"] + WORKERS * r["grow_old"])
                new_total = RANKS * (r["new_mib"] + WORKERS * r["grow_new"])
                extra.append([f"{n:,}", f"{RANKS} x {r['t_old']:.2f}", f"1 x {r['t_new'] + r['t_save']:.2f}",
                              f"{old_total / 1024:.2f}", f"{new_total / 1024:.2f}", f"{old_total / max(new_total, 1e-9):.1f}x"])
            print_table(["files", "old: walk into list (s)", "new: rank 0 index (s)", "load index.npz (s)",
                         "old: list MiB", "new: index MiB", "old: worker growth MiB", "new: worker growth MiB"],
                        rows, "Listing, per-rank structure, and a forked worker's private memory after touching every path")
            print_table(["files", "tree walks (ranks x s)", "tree walks, new", f"old GiB ({RANKS} ranks x {WORKERS} workers)",
                         "new GiB", "old / new"], extra,
                        f"Extrapolated to {RANKS} ranks x {WORKERS} workers (walks on one file system; memory: "
                        "each rank's structure + each worker's copied pages)")
        if not args.skip_feed:
            paths = make_jpegs(os.path.join(workdir, "jpegs"), args.jpegs)
            same, worst, checked = 0, 0, min(200, len(paths))
            for p in paths[:checked]:
                a, b = decode_pillow(p), decode_rgb(p)
                d = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.shape == b.shape else 255
                same += d == 0
                worst = max(worst, d)
            spec = paper_spec()
            decoders = {"Pillow": decode_pillow, "torchvision.io.decode_jpeg (decode_rgb)": decode_rgb}
            for fn in decoders.values():  # warm the page cache and the libraries
                feeding(paths, fn, spec, 20)
            res = {}
            shard_key = "shards (tar, torchvision decode)"
            for rep in range(2):  # interleaved: a slow spell of the machine hits every path
                for k, fn in decoders.items():
                    r = feeding(paths, fn, spec, args.steps)
                    if k not in res or r["images_s"] > res[k]["images_s"]:
                        res[k] = r
                r = shard_feeding(paths, spec, args.steps, workdir)
                if shard_key not in res or r["images_s"] > res[shard_key]["images_s"]:
                    res[shard_key] = r
            base = res["Pillow"]["images_s"]
            print_table(["input", "images/s", "windows/s", "patches/s", "vs Pillow"],
                        [[k, f"{r['images_s']:.0f}", f"{r['windows_s']:.0f}", f"{r['patches_s']:.0f}",
                          f"{r['images_s'] / base:.2f}x"] for k, r in res.items()],
                        f"One worker, one thread: decode + window cut + pack, paper config ({spec.images} images = "
                        f"{spec.images * spec.patches_per_image} patches per rank and step); {len(paths)} JPEGs "
                        "500x375 q90")
            print(f"pixels: torchvision equals Pillow on {same} of {checked} JPEGs (largest difference {worst})\n")
            best = max(decoders, key=lambda k: res[k]["images_s"])
            rate = res[best]["images_s"]
            rows = []
            for batch in (128, 1024):
                per_rank = batch // RANKS // spec.patches_per_image
                for s in args.gpu_steps:
                    need = s * per_rank
                    rows.append([batch, per_rank, f"{s:g}", f"{need:.0f}", math.ceil(need / rate)])
            print_table(["global batch (patches)", "images per GPU step", "GPU steps/s (assumed)", "images/s per GPU",
                         "workers per GPU"], rows,
                        f"Workers per GPU at {RANKS} GPUs (one worker, {best}: {rate:.0f} images/s on this CPU)")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
