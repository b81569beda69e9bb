"""How noisy the pixel-diffusion fakes are, against how well their U-Net is trained; the detectors on each.

The mini-benchmark's pixdiff fakes come from a small denoising U-Net trained for 900 steps on the part of
the noise schedule SDEdit samples (t <= 35 of 100) and run SDEdit-style from strength 0.35
(`fitgap.minibench`). A diffusion model trained to convergence returns images with the reals' statistics;
an under-trained one leaves part of the noise it was given. This rebuilds the test split's pixdiff fakes
with the denoiser trained three ways, the same seeds as the build otherwise:

- built: `minibench.train_pixdiff`, 900 steps on t <= 35 (the build's own fakes, checked byte for byte
  against the mini-benchmark's cache when it is there);
- version 4: 600 steps, t uniform over the whole schedule (the mini-benchmark's build before version 5);
- longer: 1800 steps, the whole schedule.

For each: PSNR to the reals, the fakes' Laplacian residual energy relative to their reals' (median over
the tiles whose real has any), and the AP of every detector checkpoint given (its head, reals against
fakes).

    python benchmarks/pixdiff_denoiser.py runs/demo*/finetune*/best.pt [--out .cache/pixdiff_denoiser]

Results: benchmarks/RESULTS.md, "What the detectors read of the pixel-diffusion fakes".
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fitgap import minibench as M  # noqa: E402
from fitgap.benchmarks import load_benchmark  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import residual_control as RC  # noqa: E402

SEED = M.FAMILIES.index("pixdiff")  # the build's seed for the denoiser (seed 0 + family index)
TEST_NOISE_SEED = 200  # the build's SDEdit noise seed for the test split
VARIANTS = {"built": dict(steps=M.PIXDIFF_STEP_FACTOR * M.BUILD_STEPS, t_max=M.PIXDIFF_T_MAX),
            "version 4": dict(steps=2 * M.BUILD_STEPS, t_max=M.DIFFUSION_STEPS),
            "longer": dict(steps=1800, t_max=M.DIFFUSION_STEPS)}


def build(out: str) -> dict:
    """<out>/<variant>/pixdiff/{0_real,1_fake} (built once); returns {variant: (PSNR, residual energy ratio,
    seconds)}."""
    train, test = M.photo_tiles(M.TRAIN), M.photo_tiles(M.HELDOUT)
    shipped = os.path.join(M.DEFAULT_CACHE, "test", "pixdiff", "1_fake")
    M.refresh_derived(out, [name.replace(" ", "_") for name in VARIANTS])
    stats = {}
    for name, kw in VARIANTS.items():
        t0 = time.time()
        folder = os.path.join(out, name.replace(" ", "_"), "pixdiff")
        fakes = RC.read_folder(os.path.join(folder, "1_fake"))
        if len(fakes) != len(test) or len(RC.read_folder(os.path.join(folder, "0_real"))) != len(test):
            fakes = M.sdedit(M.train_denoiser(train, kw["steps"], SEED, kw["t_max"]), test, TEST_NOISE_SEED)
            M._save(os.path.join(folder, "0_real"), test)
            M._save(os.path.join(folder, "1_fake"), fakes)
        if name == "built" and os.path.isdir(shipped):
            cached = RC.read_folder(shipped)
            same = len(cached) == len(fakes) and all(np.array_equal(a, b) for a, b in zip(cached, fakes))
            print(f"built variant identical to the mini-benchmark's pixdiff test fakes: {same}", flush=True)
        stats[name] = (M.psnr(test, fakes), M.residual_energy_ratio(test, fakes), time.time() - t0)
        print(f"{name}: PSNR {stats[name][0]:.1f} dB, residual energy {stats[name][1]:.1f}x the reals' "
              f"({stats[name][2]:.0f} s)", flush=True)
    return stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", nargs="*", help="detector checkpoints (finetune.py's best.pt)")
    ap.add_argument("--out", default=os.path.join(".cache", "pixdiff_denoiser"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    stats = build(args.out)
    print("| detector | " + " | ".join(f"{n} ({s[1]:.1f}x, {s[0]:.1f} dB)" for n, s in stats.items()) + " |")
    print("|---|" + "---|" * len(stats))
    subsets = [load_benchmark("folder", os.path.join(args.out, n.replace(" ", "_")), None, ["pixdiff"])[0]
               for n in stats]
    for ck in args.ckpts:
        print(f"| {ck} | " + " | ".join(f"{100 * a:.1f}" for a in RC.head_aps(ck, subsets)) + " |", flush=True)

if __name__ == "__main__":
    main()
