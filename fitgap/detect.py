"""Score single images or folders with a detector: P(fake) per file.

    python -m fitgap.detect --ckpt runs/finetune/best.pt photo.jpg folder/ [--json] [--crop tiles]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from . import distributed as D
from .data import list_images
from .detector import load_detector, score_crops
from .evaldata import EvalDataset, Perturbation
from .errors import MissingInput


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


def main(args, out=sys.stdout):
    info = D.init(args.device)
    model, cfg = load_detector(args.ckpt, info.device)
    files = expand(args.paths)
    size = args.size or cfg["eval"]["size"] or cfg["patch"]
    ds = EvalDataset([(f, -1) for f in files], size, args.crop, Perturbation())
    writer = None if args.json else csv.writer(out)
    if writer:
        writer.writerow(["path", "p_fake", "label", "error"])
    for i in range(len(ds)):
        crops, _, _, err = ds[i]
        p = None if crops is None else score_crops(model, [crops], info.device, mean=cfg["normalize"]["mean"],
                                                    std=cfg["normalize"]["std"])[0]
        label = "" if p is None else ("fake" if p > 0.5 else "real")
        if writer:
            writer.writerow([files[i], "" if p is None else f"{p:.6f}", label, err])
        else:
            out.write(json.dumps({"path": files[i], "p_fake": p, "label": label or None, "error": err or None}) + "\n")
    out.flush()


if __name__ == "__main__":
    from .cli import run_main

    run_main(main, get_args_parser().parse_args())
