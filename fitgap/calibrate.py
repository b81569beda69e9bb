"""Fit a detector's calibration on a labelled validation set: a temperature for its logits and the two
thresholds of a three-way verdict (fitgap.calibration), written as calibration.json next to the
checkpoint.

    python -m fitgap.calibrate --ckpt runs/finetune/best.pt --bench genimage --root /data/GenImage --split val
    python -m fitgap.calibrate --ckpt CKPT --bench folder --root /data/my_val_set --fpr 0.005 --fnr 0.1

Never fit it on the data you will judge: `evaluate.py --calibration FILE` refuses a set that shares
files with the calibration set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict

import numpy as np

from . import calibration as K
from . import distributed as D
from .benchmarks import BENCHES, add_bench_args, bench_kwargs, load_benchmark
from .detector import crop_size, load_detector
from .errors import InputError
from .evaldata import Perturbation
from .files import atomic_write_text

VERSION = 1


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a detector checkpoint (finetune.py's best.pt)")
    p.add_argument("--bench", required=True, choices=BENCHES, help="layout of the labelled validation set")
    p.add_argument("--root", default=None, help="its root folder (csv: the CSV file)")
    add_bench_args(p)
    p.add_argument("--split", default="val",
                   help="the benchmark's validation split (default val; mini: train, its only split besides test)")
    p.add_argument("--subsets", nargs="*", default=None, help="only these subsets")
    p.add_argument("--fpr", type=float, default=K.DEFAULT_FPR,
                   help=f"share of real images allowed to be called fake (default {K.DEFAULT_FPR})")
    p.add_argument("--fnr", type=float, default=K.DEFAULT_FNR,
                   help=f"share of fakes allowed to be called real (default {K.DEFAULT_FNR})")
    p.add_argument("--crop", default="center", choices=["center", "tiles"], help="as evaluate.py (default center)")
    p.add_argument("--size", type=int, default=None, help="crop size (default: the checkpoint's)")
    p.add_argument("--out", default=None, help="output file (default: calibration.json beside the checkpoint)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def fit(labels, logits, fpr: float, fnr: float) -> Dict[str, Any]:
    """Temperature, thresholds and what they reach on the set they were fitted on."""
    y, z = np.asarray(labels), np.asarray(logits, dtype=np.float64)
    t = K.fit_temperature(y, z)
    p = K.sigmoid(z / t)
    thresholds = K.fit_thresholds(y, p, fpr, fnr)
    shares = K.verdict_shares(y, p, thresholds)
    from .metrics import ece

    return {"temperature": t, "thresholds": thresholds, "targets": {"fpr": fpr, "fnr": fnr},
            "reached": {"fpr": shares["real"]["fake"], "fnr": shares["fake"]["real"],
                        "unsure_real": shares["real"]["unsure"], "unsure_fake": shares["fake"]["unsure"]},
            "metrics": {"nll_before": K.nll(y, z), "nll_after": K.nll(y, z, t),
                        "ece_before": ece(y, K.sigmoid(z)), "ece_after": ece(y, p),
                        "cllr_before": K.cllr(y, z), "cllr_after": K.cllr(y, z, t)},
            "counts": {"real": int((y == 0).sum()), "fake": int((y == 1).sum())}}


def run(args) -> Dict[str, Any]:
    from .evaluate import predict

    if args.bench == "mini" and args.split not in ("train", "test"):
        raise InputError("--split: the mini-benchmark has train and test splits; calibrate on train")
    if args.bench == "mini" and args.split == "test":
        raise InputError("--split test: the mini-benchmark's test split is what evaluate.py judges; calibrate on train")
    info = D.init(args.device)
    model, cfg = load_detector(args.ckpt, info.device)
    crop = crop_size(args.size, cfg)
    subsets = [s for s in D.decided_by_rank0(load_benchmark, args.bench, args.root, args.split, args.subsets,
                                             **bench_kwargs(args)) if s.status == "ok"]
    items = [it for s in subsets for it in s.items]
    if not items:
        raise InputError(f"no images in {args.bench} {args.root} (split {args.split})")
    n = cfg["normalize"]
    logits, skipped = predict(model, items, crop, args.crop, n["mean"], n["std"], Perturbation(), info.device,
                              args.batch, args.workers, info, desc="calibration", logits=True)
    idx = sorted(logits)
    labels = [items[i][1] for i in idx]
    try:
        doc = fit(labels, [logits[i] for i in idx], args.fpr, args.fnr)
    except ValueError as exc:
        raise InputError(f"calibration: {exc}") from None
    doc = {"version": VERSION, "checkpoint": os.path.abspath(args.ckpt), **doc,
           "fitted_on": {"bench": args.bench, "root": os.path.abspath(args.root) if args.root else None,
                         "split": args.split, "subsets": [s.name for s in subsets], "crop": {"size": crop,
                                                                                             "mode": args.crop},
                         "skipped": len(skipped), "file_ids": K.file_ids(p for p, _ in items)}}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "calibration.json")
    if info.is_main:
        atomic_write_text(out, json.dumps(doc, indent=1))
        r, m = doc["reached"], doc["metrics"]
        print(f"temperature {doc['temperature']:.4f}; fake at P(fake) >= {doc['thresholds']['fake']:.4f}, real at "
              f"<= {doc['thresholds']['real']:.4f}; on {doc['counts']['real']} real + {doc['counts']['fake']} fake "
              f"images: reals called fake {100 * r['fpr']:.2f}% (target {100 * args.fpr:g}%), fakes called real "
              f"{100 * r['fnr']:.2f}% (target {100 * args.fnr:g}%), unsure {100 * r['unsure_real']:.1f}% of reals and "
              f"{100 * r['unsure_fake']:.1f}% of fakes; NLL {m['nll_before']:.4f} -> {m['nll_after']:.4f}, ECE "
              f"{100 * m['ece_before']:.1f}% -> {100 * m['ece_after']:.1f}%", flush=True)
        print(f"written to {out}", flush=True)
    return doc


def main(argv=None):
    from .cli import run_main

    args = get_args_parser().parse_args(argv)
    for name in ("fpr", "fnr"):
        v = getattr(args, name)
        if not 0 <= v < 1:
            print(f"error: --{name}: a share in [0, 1), got {v}", file=sys.stderr)
            sys.exit(2)
    return run_main(run, args)


if __name__ == "__main__":
    main()
