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
from fitgap.cli import run_main
from fitgap.evaluate import get_args_parser, run  # noqa: F401 - the parser lives with the code it drives


def main(args):
    return run_main(run, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
