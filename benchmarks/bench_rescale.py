"""rescale_gather vs whole-window rescaling + slicing (torch float, torch uint8, OpenCV).

Two settings on ImageNet-like windows (about 500x375) with ratios of the pre-training set:
  dense:  32 windows, 4 patches of 128 each (the patches cover most of each rescaled window)
  sparse: 32 windows, 2 patches of 64 each
Every path produces the same float32 NCHW patches on the 0..255 scale. Every timed CPU call starts
with its inputs out of the caches (a 128 MiB buffer is rewritten before it), as windows fresh from a
loader worker are, so no path inherits another's cached inputs. On a GPU the op is also
compared with the unfused torch path on the GPU, and its achieved bytes/s with the bytes it must
move, as a fraction of the card's device-to-device copy bandwidth measured in the same run.
Targets: CPU dense >= 1.0x the fastest whole-window path, sparse >= 5x; GPU within 1.25x of the
bytes floor and >= 20x faster than the unfused GPU path.

    python benchmarks/bench_rescale.py [--device cpu|cuda|all] [--repeat 5] [--threads 1 2]

The CPU table has a row per instruction-set path of the op that this CPU can run (avx512, avx2shuf, avx2,
scalar); the verdict uses the path chosen at load time. The header names the CPU, its SIMD flags,
the op's path, torch's own CPU capability and the thread counts.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_model, print_table, time_interleaved, time_it  # noqa: E402

import rescale_ext  # noqa: E402
from rescale_ext import dst_length, pack_windows, rescale_gather  # noqa: E402

FLUSH_MIB = 128  # every timed CPU call starts with its inputs out of the caches (benchmarks/common.py)
RATIOS = sorted({Fraction(p, q) for q in range(2, 9) for p in range(q + 1, 2 * q)})  # (1, 2), q <= 8


def make_setting(n_windows, patches_per_window, patch, seed=0):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    windows, ratios, corners = [], [], []
    for b in range(n_windows):
        h, w = rng.randint(333, 400), rng.randint(450, 520)
        r = rng.choice(RATIOS)
        p, q = r.numerator, r.denominator
        hd, wd = dst_length(h, p, q), dst_length(w, p, q)
        windows.append(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g))
        ratios.append((p, q))
        grid = [(0, 0), (hd - patch, wd - patch), (0, wd - patch), (hd - patch, 0)]
        for k in range(patches_per_window):
            y, x = grid[k] if patches_per_window == 4 else (rng.randint(0, hd - patch),
                                                            rng.randint(0, wd - patch))
            corners.append((b, y, x))
    pixels, offsets, sizes = pack_windows(windows)
    return dict(windows=windows, pixels=pixels, offsets=offsets, sizes=sizes,
                ratios=torch.tensor(ratios), corners=torch.tensor(corners), patch=patch)


def op_path(s, pixels):
    return rescale_gather(pixels, s["offsets"], s["sizes"], s["ratios"], s["corners"], s["patch"])


def torch_path(s, windows, as_float):
    """Whole-window F.interpolate (float or uint8 input) + slicing."""
    patch = s["patch"]
    per_window = {}
    out = []
    for b, y, x in s["corners"].tolist():
        if b not in per_window:
            p, q = s["ratios"][b].tolist()
            win = windows[b].permute(2, 0, 1).unsqueeze(0)
            if as_float:
                win = win.float()
            else:
                win = win.contiguous(memory_format=torch.channels_last)
            per_window[b] = F.interpolate(win, scale_factor=q / p, mode="bilinear",
                                          align_corners=False, recompute_scale_factor=False)[0]
        out.append(per_window[b][:, y:y + patch, x:x + patch])
    return torch.stack(out).float()


def cv2_path(s, cv2):
    patch = s["patch"]
    per_window = {}
    out = np.empty((s["corners"].shape[0], 3, patch, patch), dtype=np.float32)
    for i, (b, y, x) in enumerate(s["corners"].tolist()):
        if b not in per_window:
            p, q = s["ratios"][b].tolist()
            per_window[b] = cv2.resize(s["np_windows"][b], None, fx=q / p, fy=q / p,
                                       interpolation=cv2.INTER_LINEAR)
        out[i] = per_window[b][y:y + patch, x:x + patch].transpose(2, 0, 1)
    return torch.from_numpy(out)


def isa_op(s, name):
    def run():
        torch.ops.rescale_ext._set_cpu_isa(name)
        return op_path(s, s["pixels"])
    return run


def bench_cpu(repeat, threads):
    try:
        import cv2
    except ImportError:
        cv2 = None
    best = rescale_ext.cpu_isa()
    simd = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vbmi", "avx512vbmi", "asimd", "sve")
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if f in simd}))
    print(f"CPU: {cpu_model()} [{flags}]; op path at load: {best} (available: {', '.join(rescale_ext.cpu_isa_paths())}); "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
          f"OpenCV {cv2.__version__ if cv2 else 'absent'}; threads {threads}\n", flush=True)
    verdicts = []
    for nthreads in threads:
        torch.set_num_threads(nthreads)
        if cv2 is not None:
            cv2.setNumThreads(nthreads)
        rows = []
        for name, (nwin, per, patch), target in (("dense", (32, 4, 128), 1.0),
                                                  ("sparse", (32, 2, 64), 5.0)):
            s = make_setting(nwin, per, patch)
            s["np_windows"] = [w.numpy() for w in s["windows"]]
            n = s["corners"].shape[0]
            paths = {f"rescale_gather (op, {isa})": isa_op(s, isa) for isa in reversed(rescale_ext.cpu_isa_paths())}
            paths.update({"torch float whole-window": lambda: torch_path(s, s["windows"], True),
                          "torch uint8 whole-window": lambda: torch_path(s, s["windows"], False)})
            if cv2 is not None:
                paths["cv2 whole-window"] = lambda: cv2_path(s, cv2)
            rate = {k: n / t for k, t in time_interleaved(paths, "cpu", repeat, flush_mib=FLUSH_MIB).items()}
            torch.ops.rescale_ext._set_cpu_isa(best)
            op = rate[f"rescale_gather (op, {best})"]
            fastest = max(v for k, v in rate.items() if not k.startswith("rescale_gather"))
            for k, v in rate.items():
                rows.append((name, k, f"{v:,.0f}", f"{op / v:.2f}x"))
            verdicts.append((name, f"CPU, {nthreads} thread(s), {best}", f"{op / fastest:.2f}x fastest whole-window",
                             f">= {target}x", "met" if op / fastest >= target else "NOT met"))
        print_table(["setting", "path", "patches/s", f"{best} op speed-up"], rows,
                    f"CPU ({nthreads} thread(s)), float32 NCHW patches")
    return verdicts


def copy_bandwidth(dev, repeat, nbytes=512 * 1024 * 1024):
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    return 2 * nbytes / time_it(lambda: src.clone(), dev, repeat)


def bench_cuda(repeat):
    dev = "cuda"
    rows, verdicts = [], []
    copy_bw = copy_bandwidth(dev, repeat)
    for name, (nwin, per, patch) in (("dense", (256, 4, 128)), ("sparse", (256, 2, 64))):
        s = make_setting(nwin, per, patch)
        pixels = s["pixels"].to(dev)
        windows = [w.to(dev) for w in s["windows"]]
        n = s["corners"].shape[0]
        t_op = time_it(lambda: op_path(s, pixels), dev, max(repeat, 20), warmup=3)
        t_torch = time_it(lambda: torch_path(s, windows, True), dev, repeat)
        src_bytes = 0
        for (b, y, x) in s["corners"].tolist():
            p, q = s["ratios"][b].tolist()
            side = int(np.ceil(patch * p / q)) + 1
            src_bytes += side * side * 3
        moved = src_bytes + n * 3 * patch * patch * 4
        frac = (moved / t_op) / copy_bw
        rows.append((name, f"{n / t_op:,.0f}", f"{n / t_torch:,.0f}", f"{t_torch / t_op:.1f}x",
                     f"{moved / t_op / 1e9:,.0f} GB/s", f"{frac:.2f}"))
        verdicts.append((name, "GPU", f"{t_torch / t_op:.1f}x unfused", ">= 20x",
                         "met" if t_torch / t_op >= 20 else "NOT met"))
        verdicts.append((name, "GPU", f"{1 / frac:.2f}x of the bytes floor", "<= 1.25x",
                         "met" if 1 / frac <= 1.25 else "NOT met"))
    print_table(["setting", "op patches/s", "unfused patches/s", "op speed-up", "op bytes/s",
                 "fraction of copy bandwidth"], rows,
                f"{torch.cuda.get_device_name()} (copy bandwidth {copy_bw / 1e9:,.0f} GB/s)")
    return verdicts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="CPU thread counts to measure (default: 1 and torch's default)")
    args = ap.parse_args()
    verdicts = []
    if args.device in ("cpu", "all"):
        default = torch.get_num_threads()
        verdicts += bench_cpu(args.repeat, args.threads or sorted({1, default}))
        torch.set_num_threads(default)
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            verdicts += bench_cuda(args.repeat)
        else:
            print("no CUDA device: GPU rows skipped\n")
    print_table(["setting", "where", "measured", "target", "verdict"], verdicts, "Targets")


if __name__ == "__main__":
    main()
