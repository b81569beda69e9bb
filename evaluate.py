"""Evaluate a detector over a benchmark: AP, ROC AUC, accuracy (real/fake/balanced), EER, TPR at low
FPR and calibration per subset and mean, with the metadata-only shortcut check beside each subset.

    python evaluate.py --ckpt runs/finetune/best.pt --bench selfsynth --root /data/selfsynth
    python evaluate.py --ckpt CKPT --bench genimage --root /data/GenImage --crop tiles --jpeg 75
    python evaluate.py --ckpt CKPT --bench wildrf --root /data/WildRF --threshold-from runs/ft/eval_val
    torchrun --nproc_per_node=8 evaluate.py --ckpt CKPT --bench forensynths --root /data/CNNDetection/test

Writes results.json, results.csv, results.md, scores.csv (one row per image) and reliability.png
(default: beside the checkpoint, eval_<bench>_<split>_<crop><size>[_sub-<subsets>][_<perturbation>][_t-<hash>]:
every option that changes the scores, and where the threshold came from, is in the name; a run never
writes over the scores.csv it reads its threshold from).
"""
import argparse

from fitgap.cli import run_main
from fitgap.benchmarks import BENCHES
from fitgap.evaldata import RESIZE_KERNELS
from fitgap.evaluate import run


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a detector checkpoint (finetune.py's best.pt or last.pt)")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--root", default=None, help="benchmark root (mini: cache folder, optional)")
    p.add_argument("--real-root", default=None, help="synthbuster: the folder of real photos (RAISE)")
    p.add_argument("--split", default=None,
                   help="genimage: train or val (default val); mini: train or test (default test); "
                        "wildrf: train, val or test (default test)")
    p.add_argument("--subsets", nargs="*", default=None, help="only these subsets")
    p.add_argument("--crop", default="center", choices=["center", "tiles"],
                   help="one centre crop, or the mean logit over tiles covering the image")
    p.add_argument("--size", type=int, default=None, help="crop size (default: the training patch)")
    p.add_argument("--jpeg", type=int, default=None, help="re-encode as JPEG with this quality")
    p.add_argument("--blur", type=float, default=None, help="Gaussian blur sigma")
    p.add_argument("--resize", type=float, default=None, help="resize factor")
    p.add_argument("--resize-kernel", default="bilinear", choices=RESIZE_KERNELS,
                   help="kernel of --resize (default bilinear)")
    p.add_argument("--antialias", default=None, choices=["on", "off"],
                   help="on: PIL's antialiased filters (default); off: OpenCV/torch convention without "
                        "antialiasing (bilinear and bicubic only)")
    p.add_argument("--webp", type=int, default=None, help="re-encode as WebP with this quality")
    p.add_argument("--reencode", default=None,
                   help="first re-encode EVERY image (both classes) as png, jpeg:Q or webp:Q")
    p.add_argument("--threshold-from", default=None,
                   help="also report accuracy at a threshold fitted on a validation evaluation "
                        "(its folder, results.json or scores.csv) or given as JSON {\"threshold\": t}")
    p.add_argument("--calibration", default=None,
                   help="a calibration.json (python -m fitgap.calibrate): report calibrated NLL, ECE, Cllr and "
                        "the real / unsure / fake verdict shares beside the raw numbers; refused when the "
                        "evaluation shares files with the set it was fitted on")
    p.add_argument("--no-audit", dest="audit", action="store_false",
                   help="skip the metadata-only shortcut check (header reads) beside each subset")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--batch", type=int, default=32, help="images per loader batch")
    p.add_argument("--max-crops", type=int, default=64,
                   help="crops (tiles) per forward pass, whatever the image size: bounds peak memory")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(args):
    return run_main(run, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
