"""Score single images or folders with a detector: P(fake) per file.

Exit code 0 when every file was scored, 1 when some could not be (each named with its reason in the
error column; JSON lines give null for a missing score), 2 for bad arguments.

    python -m fitgap.detect --ckpt runs/finetune/best.pt photo.jpg folder/ [--json] [--crop tiles]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

from . import distributed as D
from .data import list_images
from .detector import check_size, crop_size, load_detector, score_crops
from .evaldata import EvalDataset, Perturbation
from .models import min_input_side
from .errors import InputError, MissingInput


def expand(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += list_images(p)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise MissingInput(f"{p!r} does not exist")
    return out


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("paths", nargs="+", help="image files or folders (recursive)")
    p.add_argument("--crop", default="center", choices=["center", "tiles"])
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--json", action="store_true", help="JSON lines instead of CSV")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


NON_FINITE = "non-finite score"


def main(args, out=sys.stdout) -> int:
    """Scores every file; returns how many could not be scored (unreadable, or a non-finite score),
    each named in its row. The command exits 1 when that is not 0."""
    check_size(args.size)
    info = D.init(args.device)
    model, cfg = load_detector(args.ckpt, info.device)
    files = expand(args.paths)
    size = crop_size(args.size, cfg)
    ds = EvalDataset([(f, -1) for f in files], size, args.crop, Perturbation(), min_side=min_input_side(model))
    writer = None if args.json else csv.writer(out)
    if writer:
        writer.writerow(["path", "p_fake", "label", "error"])
    failed = 0
    for i in range(len(ds)):
        crops, _, _, err = ds[i]
        p = None
        if crops is not None:
            p = score_crops(model, [crops], info.device, mean=cfg["normalize"]["mean"],
                            std=cfg["normalize"]["std"])[0]
            if not math.isfinite(p):
                p, err = None, NON_FINITE
        failed += p is None
        label = "" if p is None else ("fake" if p > 0.5 else "real")
        if writer:
            writer.writerow([files[i], "" if p is None else f"{p:.6f}", label, err])
        else:
            out.write(json.dumps({"path": files[i], "p_fake": p, "label": label or None, "error": err or None},
                                 allow_nan=False) + "\n")
    out.flush()
    if failed:
        print(f"{failed} of {len(files)} file(s) not scored (see their error column)", file=sys.stderr, flush=True)
    return failed


if __name__ == "__main__":
    from .cli import run_main

    sys.exit(1 if run_main(main, get_args_parser().parse_args()) else 0)
