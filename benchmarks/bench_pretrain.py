"""Pre-training step rate: the real pipeline vs synthetic tensors, where a step's time goes, and
fp32 vs bf16 + channels_last (on a GPU: legacy_xception, and + torch.compile; on the CPU: the demo
encoder at 32 and 64 px, timed interleaved, with the CPU model and torch's CPU code path named).

    python benchmarks/bench_pretrain.py --device cpu            # demo config, on the shipped photos
    python benchmarks/bench_pretrain.py --device cuda           # legacy_xception, 128 px, batch 256

Targets on a GPU: real-data step rate >= 0.95 of the synthetic one; bf16 + channels_last >= 2x fp32 eager.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import cpu_model, print_table, sync, time_interleaved  # noqa: E402

from fitgap import config as C  # noqa: E402
from fitgap.data import (PlanBatchSampler, PlannedWindows, WindowDataset, collate_planned,  # noqa: E402
                         list_images)
from fitgap.distributed import DistInfo  # noqa: E402
from fitgap.photos import export_photos  # noqa: E402


def bench_images() -> str:
    """The shipped photos when scikit-image / scikit-learn are installed, else 48 photo-like
    synthetic images (a GPU machine may lack both): decoding and packing cost the same."""
    try:
        return export_photos(os.path.join(".cache", "photos"))["train"]
    except (FileNotFoundError, ImportError):
        from PIL import Image

        folder = os.path.join(".cache", "bench_images")
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(48):
            path = os.path.join(folder, f"{i:03d}.png")
            if not os.path.exists(path):
                small = rng.normal(size=(48, 64, 3))
                img = np.kron(small, np.ones((8, 8, 1))) + rng.normal(size=(384, 512, 3)) * 0.3
                img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
                Image.fromarray(img).save(path)
        return folder
from fitgap.plan import make_plan  # noqa: E402
from fitgap.pretrain import (DEFAULTS, amp_context, augment_patches, build_model, build_patches,  # noqa: E402
                             build_spec, contrastive_loss)


def setup(cfg, device):
    spec = build_spec(cfg, 1)
    model = build_model(cfg).to(device)
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    return spec, model, opt


def step(model, opt, x, labels, cfg, device):
    with amp_context(cfg["train"]["amp"], device):
        out = model(x)
    loss = contrastive_loss(out, labels, cfg, DistInfo())  # with the backbone's own loss where the config has one
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def steps_per_second(fn, steps, device, warmup=3):
    for _ in range(warmup):
        fn()
    sync(str(device))
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(str(device))
    return steps / (time.perf_counter() - t0)


def breakdown(cfg, device, steps):
    """Sequential timing of each stage in this process (no DataLoader workers)."""
    spec, model, opt = setup(cfg, device)
    paths = list_images(cfg["data"]["train"])
    ds = PlannedWindows(WindowDataset(paths, cache_images=cfg["data"]["cache_images"]))
    sampler = PlanBatchSampler(len(paths), spec, 0, 1, 0, steps_per_epoch=steps + 2)
    sampler.set_epoch(0)
    t = {k: 0.0 for k in ("plan", "load + pack", "copy", "rescale_gather", "augment.sharpen", "forward + backward",
                          "optimiser")}
    rng = np.random.default_rng(0)
    for i, b in enumerate(sampler):
        if i >= steps + 2:
            break
        t0 = time.perf_counter()
        make_plan(spec, rng)
        t1 = time.perf_counter()
        batch = collate_planned([ds[j] for j in b])
        t2 = time.perf_counter()
        pixels = batch["pixels"].to(device)
        sync(str(device))
        t3 = time.perf_counter()
        x = build_patches({**batch, "pixels": pixels}, cfg, device)
        sync(str(device))
        t4 = time.perf_counter()
        x = augment_patches(x, cfg, 0, i)  # what contrastive_step does (nothing when augment.sharpen is off)
        sync(str(device))
        t4b = time.perf_counter()
        with amp_context(cfg["train"]["amp"], device):
            out = model(x)
        loss = contrastive_loss(out, batch["labels"].to(device), cfg, DistInfo())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(str(device))
        t5 = time.perf_counter()
        opt.step()
        sync(str(device))
        t6 = time.perf_counter()
        if i >= 2:  # warm-up
            for k, (a, bb) in zip(t, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t4b), (t4b, t5), (t5, t6))):
                t[k] += bb - a
    total = sum(t.values())
    rows = [(k, f"{1e3 * v / steps:.1f}", f"{100 * v / total:.0f}%") for k, v in t.items()]
    print_table(["stage", "ms / step", "share"], rows, f"Where a step's time goes ({device}, sequential)")


def rates(cfg, device, steps, workers):
    """Steps/s of the real pipeline (DataLoader workers, prefetch) vs synthetic tensors of the same shape."""
    spec, model, opt = setup(cfg, device)
    n = spec.images * spec.patches_per_image
    p = cfg["plan"]["patch"]
    paths = list_images(cfg["data"]["train"])
    sampler = PlanBatchSampler(len(paths), spec, 0, 1, 0, steps_per_epoch=steps + 3)
    sampler.set_epoch(0)
    dataset = PlannedWindows(WindowDataset(paths, cache_images=cfg["data"]["cache_images"]))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_planned, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    it = iter(loader)
    for _ in range(3):
        b = next(it)
        step(model, opt, build_patches(b, cfg, device), b["labels"].to(device), cfg, device)
    sync(str(device))
    t0 = time.perf_counter()
    for b in it:
        step(model, opt, build_patches(b, cfg, device), b["labels"].to(device, non_blocking=True), cfg, device)
    sync(str(device))
    real = steps / (time.perf_counter() - t0)
    fmt = torch.channels_last if cfg["train"]["channels_last"] else torch.contiguous_format
    dtype = torch.bfloat16 if (cfg["train"]["amp"] == "bf16" and device.type == "cuda") else torch.float32
    x = torch.randn(n, 3, p, p, device=device, dtype=dtype).contiguous(memory_format=fmt)
    labels = torch.arange(n, device=device) // 2
    synth = steps_per_second(lambda: step(model, opt, x, labels, cfg, device), steps, device)
    print_table(["input", "steps/s", "patches/s", "vs synthetic"],
                [("real pipeline", f"{real:.2f}", f"{real * n:,.0f}", f"{real / synth:.2f}"),
                 ("synthetic tensors", f"{synth:.2f}", f"{synth * n:,.0f}", "1.00")],
                f"Real pipeline vs synthetic ({device}, {cfg['model']['backbone']}, {p} px, batch {n}, "
                f"{workers} workers)")
    return real / synth


def mode_step(cfg, device, batch, patch, dtype=torch.float32, compile_model=False):
    """One SupCon step of cfg's model (its amp and channels_last) on synthetic `dtype` inputs, as a
    callable; the model, optimiser and inputs live as long as the callable."""
    model = build_model(cfg).to(device)
    x = torch.randn(batch, 3, patch, patch, device=device, dtype=dtype)
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    fwd = torch.compile(model) if compile_model else model
    labels = torch.arange(batch, device=device) // 2
    return lambda: step(fwd, opt, x, labels, cfg, device)


def precision_modes(device, steps, batch=256, patch=128):
    """legacy_xception at 128 px: fp32 eager vs bf16 + channels_last vs + torch.compile."""

    def measure(amp, cl, comp):  # one mode; its model is freed on return
        cfg = C.load_config(None, [f"train.amp={amp}", f"train.channels_last={str(cl).lower()}",
                                   "ratios.list=[3/2]", "data.train=.", f"train.batch={batch}"], DEFAULTS)
        fn = mode_step(cfg, device, batch, patch, torch.bfloat16 if amp == "bf16" else torch.float32, comp)
        return steps_per_second(fn, steps, device)

    rows, base = [], None
    for name, amp, cl, comp in (("fp32 eager", "none", False, False), ("bf16 + channels_last", "bf16", True, False),
                                ("bf16 + channels_last + compile", "bf16", True, True)):
        r = measure(amp, cl, comp)
        base = base or r
        rows.append((name, f"{r:.2f}", f"{r * batch:,.0f}", f"{r / base:.2f}x"))
    print_table(["mode", "steps/s", "patches/s", "vs fp32 eager"], rows,
                f"legacy_xception, {patch} px, batch {batch} ({torch.cuda.get_device_name()})")
    return float(rows[1][3][:-1])


def cpu_precision_modes(steps, batch=128):
    """The demo encoder (configs/demo_pretrain.yaml) at 32 and 64 px on the CPU: fp32, + channels_last,
    bf16 autocast + channels_last; the modes timed round-robin. bf16 can pay only on CPUs with bf16
    instructions (AVX-512 BF16, AMX): run it on each CPU kind before relying on the ratio."""
    rows = []
    for patch in (32, 64):
        fns = {}
        for name, amp, cl in (("fp32", "none", False), ("fp32 + channels_last", "none", True),
                              ("bf16 + channels_last", "bf16", True)):
            cfg = C.load_config("configs/demo_pretrain.yaml", [f"train.amp={amp}", f"train.channels_last={str(cl).lower()}",
                                                               "data.train=.", f"plan.patch={patch}"], DEFAULTS)
            fns[name] = mode_step(cfg, torch.device("cpu"), batch, patch)
        t = time_interleaved(fns, "cpu", repeat=steps, warmup=2)
        rows += [(f"{patch} px", k, f"{batch / v:,.0f}", f"{t['fp32'] / v:.2f}x") for k, v in t.items()]
    print_table(["patch", "mode", "patches/s", "vs fp32"], rows,
                f"{cfg['model']['backbone']}, batch {batch}, {torch.get_num_threads()} threads ({cpu_model()}; torch CPU "
                f"code path {torch.backends.cpu.get_cpu_capability()})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    images = bench_images()
    device = torch.device(args.device)
    if args.device == "cuda":
        cfg = C.load_config("configs/pretrain.yaml", [f"data.train={images}", "train.batch=256",
                                                      "data.cache_images=64", "probe.images=null"], DEFAULTS)
        steps, workers = args.steps or 20, args.workers if args.workers is not None else 8
    else:
        cfg = C.load_config("configs/demo_pretrain.yaml", [f"data.train={images}"], DEFAULTS)
        steps, workers = args.steps or 10, args.workers if args.workers is not None else 1
    breakdown(cfg, device, steps)
    ratio = rates(cfg, device, steps, workers)
    verdicts = [("real / synthetic step rate", f"{ratio:.2f}", ">= 0.95 (GPU)",
                 "met" if ratio >= 0.95 else "NOT met")]
    if args.device == "cpu":
        cpu_precision_modes(max(5, steps))
    if args.device == "cuda":
        speed = precision_modes(device, max(5, steps // 2))
        verdicts.append(("bf16 + channels_last vs fp32", f"{speed:.2f}x", ">= 2x", "met" if speed >= 2 else "NOT met"))
    print_table(["measure", "value", "target", "verdict"], verdicts, "Targets")


if __name__ == "__main__":
    main()
