"""Would "unsure when far from the training reals" catch the head's misses? Decision data, per detector.

A head fine-tuned on one family calls some unseen fakes "real". The fine-tuning's real distance
(`fitgap.realdist`, the same fit as `score: distance`) measures how far an image's features are from
the training reals: logit > 0 is beyond the 95th percentile of the validation reals. This script fits
that distance to each detector checkpoint given (a head-score best.pt is left unchanged on disk) and
counts, on the mini-benchmark's test split and on other cameras' photos through the same generators
(built once by `benchmarks/source_shift.py`), what the flag would do to the head's "real" verdicts
(head logit < 0): the share of the reals it would withhold (the cost) and the share of the missed
fakes it would withhold (the gain), and the share of fakes among the "real" verdicts that remain.

    python benchmarks/unsure_far.py runs/demo*/finetune*/best.pt [--centre cameras] [--out .cache/source_shift]

With --centre cameras the flag's percentile is set on half of the other cameras' reals instead (as a
deployment would calibrate it on its own reals) and everything is counted on the other half.

Results: benchmarks/RESULTS.md, "The real distance as an unsure flag beside the head".
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fitgap import minibench as M  # noqa: E402
from fitgap.detector import load_detector  # noqa: E402
from fitgap.finetune import build_data  # noqa: E402
from fitgap.realdist import fit_detector_distance  # noqa: E402

import source_shift  # noqa: E402  (same folder)


@torch.no_grad()
def counts(det, cfg, subsets, unseen) -> dict:
    """Pooled over the reals of every family and the fakes of the `unseen` ones: reals, reals called
    real, of them far; fakes, fakes called real (missed), of them far."""
    c = dict.fromkeys(("reals", "real_ok", "real_far", "fakes", "missed", "missed_far"), 0)
    for name, x, y in source_shift.family_features(det, cfg, subsets):
        head = det.classifier(x).squeeze(1).numpy() < 0      # the head says "real"
        far = det.distance(x).numpy() > 0                    # beyond the 95th percentile of the reals centred on
        r = y == 0
        c["reals"] += int(r.sum())
        c["real_ok"] += int((r & head).sum())
        c["real_far"] += int((r & head & far).sum())
        if name in unseen:
            fk = y == 1
            c["fakes"] += int(fk.sum())
            c["missed"] += int((fk & head).sum())
            c["missed_far"] += int((fk & head & far).sum())
    return c


def row(c: dict) -> list:
    """Percentages: reals called real, of them far; unseen fakes called real, of them far; fakes among the
    "real" verdicts without and with the flag (classes weighted to equal totals, as the sets are balanced
    per family: the reals of every family against the unseen families' fakes)."""
    rw = c["fakes"] / max(c["reals"], 1)
    before = c["missed"] / max(c["missed"] + rw * c["real_ok"], 1e-9)
    after = (c["missed"] - c["missed_far"]) / max(c["missed"] - c["missed_far"] + rw * (c["real_ok"] - c["real_far"]),
                                                 1e-9)
    return [100 * c["real_ok"] / max(c["reals"], 1), 100 * c["real_far"] / max(c["real_ok"], 1),
            100 * c["missed"] / max(c["fakes"], 1), 100 * c["missed_far"] / max(c["missed"], 1),
            100 * before, 100 * after]


def fmt(cells) -> str:
    return (" | ".join(f"{v:.1f} %" for v in cells[:4]) + f" | {cells[4]:.1f} % / {cells[5]:.1f} %")


def split_cameras(subsets):
    """(the first half of the other cameras' real tiles, for centring; the subsets cut to the second half).
    The tiles are numbered photo by photo, so the halves hold (nearly) different photos; a fake keeps
    its real tile's name."""
    reals = sorted(it for it in subsets[0].items if it[1] == 0)
    second = {os.path.basename(p) for p, _ in reals[len(reals) // 2:]}
    cut = [type(s)(s.name, [it for it in s.items if os.path.basename(it[0]) in second], s.status) for s in subsets]
    return reals[:len(reals) // 2], cut


def main(argv=None) -> None:
    args = source_shift.parse_args(argv, __doc__, lambda ap: ap.add_argument(
        "--centre", choices=["validation", "cameras"], default="validation",
        help="where the flag's 95th percentile is set: the validation reals (finetune.py's fit; default), or "
             "half of the other cameras' reals, counted on the other half (a flag calibrated on the deployment's reals)"))
    fams = list(M.FAMILIES)
    benches = source_shift.sets(args.out)
    if args.centre == "cameras":
        del benches["mini-benchmark test split"]
        centre, benches["other cameras"] = split_cameras(benches["other cameras"])
        benches["other cameras, fakes JPEG q90"] = split_cameras(benches["other cameras, fakes JPEG q90"])[1]
    print(f"centred on: {'the validation reals' if args.centre == 'validation' else 'half of the other cameras reals'}")
    print("| detector | set | reals called real | of them far (withheld) | unseen fakes called real | "
          "of them far (withheld) | fakes among the real verdicts: head / head + flag |")
    print("|---|---|---|---|---|---|---|")
    means = {}
    for ck in args.ckpts:
        det, cfg = load_detector(ck, "cpu")
        cfg = dict(cfg, score="head")  # the split and the fit of finetune.py, whatever the checkpoint's score
        train, val = build_data(cfg)
        held = [it for s in val for it in s.items] if args.centre == "validation" else centre
        fit_detector_distance(det, train, held, cfg["eval"]["size"] or cfg["patch"],
                              cfg["normalize"]["mean"], cfg["normalize"]["std"], "cpu", seed=cfg["seed"])
        trained = set(cfg["data"]["subsets"])
        for name, subs in benches.items():
            r = row(counts(det, cfg, subs, [f for f in fams if f not in trained]))
            means.setdefault(("scratch" if cfg["init"] is None else "pre-trained", name), []).append(r)
            print(f"| {ck} | {name} | {fmt(r)} |", flush=True)
    print("\n| detectors | set | reals called real | of them far (withheld) | unseen fakes called real | "
          "of them far (withheld) | fakes among the real verdicts: head / head + flag |")
    print("|---|---|---|---|---|---|---|")
    for (kind, name), rows in means.items():
        print(f"| {kind} (mean of {len(rows)}) | {name} | {fmt(list(np.mean(rows, axis=0)))} |")


if __name__ == "__main__":
    main()
