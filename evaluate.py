"""Evaluate a detector over a benchmark: accuracy, real/fake accuracy and AP per subset and mean.

    python evaluate.py --ckpt runs/finetune/best.pt --bench selfsynth --root /data/selfsynth
    python evaluate.py --ckpt CKPT --bench genimage --root /data/GenImage --crop tiles --jpeg 75
    torchrun --nproc_per_node=8 evaluate.py --ckpt CKPT --bench forensynths --root /data/CNNDetection/test

Writes results.json, results.csv and results.md (default: beside the checkpoint, eval_<bench>[_<perturbation>]).
"""
import argparse

from fitgap.cli import run_main
from fitgap.benchmarks import BENCHES
from fitgap.evaluate import run


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a detector checkpoint (finetune.py's best.pt or last.pt)")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--root", default=None, help="benchmark root (mini: cache folder, optional)")
    p.add_argument("--split", default="val", help="genimage: train or val; mini: train or test")
    p.add_argument("--subsets", nargs="*", default=None, help="only these subsets")
    p.add_argument("--crop", default="center", choices=["center", "tiles"],
                   help="one centre crop, or the mean logit over tiles covering the image")
    p.add_argument("--size", type=int, default=None, help="crop size (default: the training patch)")
    p.add_argument("--jpeg", type=int, default=None, help="re-encode as JPEG with this quality")
    p.add_argument("--blur", type=float, default=None, help="Gaussian blur sigma")
    p.add_argument("--resize", type=float, default=None, help="bilinear resize factor")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(args):
    return run_main(run, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
