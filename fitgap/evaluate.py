"""Evaluation of a detector over a benchmark: per-subset and mean metrics, tables out.

Beside every subset's numbers stands the shortcut check: the AP that a classifier on file headers
alone (format, JPEG quality, size) reaches there (fitgap.audit). A subset where that is >= 0.9 is
marked, because a detector's number there may measure file history rather than generation.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch.utils.data import DataLoader
from .progress import progress

from . import distributed as D
from .benchmarks import BENCHES, Subset, add_bench_args, bench_kwargs, load_benchmark
from .files import atomic_write_text
from .detector import MAX_CROPS, check_size, crop_size, load_detector, score_crops, score_logits, sigmoid
from .models import min_input_side
from .evaldata import PROTOCOLS, RESIZE_KERNELS, TIERS, EvalDataset, Perturbation, collate_eval
from .metrics import METRIC_KEYS, calibration_bins, fit_threshold, mean_row, subset_metrics
from .errors import InputError, MissingInput

NON_FINITE = "non-finite score"


def predict(model, items, crop: int, mode: str, mean, std, perturb: Perturbation, device, batch: int,
            workers: int, info: D.DistInfo, desc: str = "", amp: str = "none", max_crops: int = MAX_CROPS,
            logits: bool = False, fake_perturb: Optional[Perturbation] = None):
    """Scores of `items` ([(path, label)]), split over ranks without padding and gathered.
    Returns (scores {index: p_fake, or the mean logit with logits=True}, skipped {index: reason}); an
    image whose score is not finite (NaN logits) is skipped with the reason NON_FINITE, so that
    everything else is still reported."""
    score = score_logits if logits else score_crops
    mine = list(range(info.rank, len(items), info.world_size))
    ds = EvalDataset([items[i] for i in mine], crop, mode, perturb, min_side=min_input_side(model),
                     fake_perturb=fake_perturb)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_eval)
    scores, skipped = {}, {}
    for group in progress(loader, desc=desc, disable=not info.is_main, leave=False, dynamic_ncols=True):
        ok = [g for g in group if g[0] is not None]
        for g in group:
            if g[0] is None:
                skipped[mine[g[2]]] = g[3]
        if ok:
            for g, s in zip(ok, score(model, [g[0] for g in ok], device, amp, max_crops, mean, std)):
                if math.isfinite(s):
                    scores[mine[g[2]]] = s
                else:
                    skipped[mine[g[2]]] = NON_FINITE
    merged_s, merged_k = {}, {}
    for s, k in D.all_gather_object((scores, skipped)):
        merged_s.update(s)
        merged_k.update(k)
    return merged_s, merged_k


def evaluate_subsets(model, subsets: List[Subset], crop: int, mode: str, mean, std, perturb: Perturbation,
                     device, batch: int = 32, workers: int = 2, info: Optional[D.DistInfo] = None,
                     amp: str = "none", threshold: Optional[float] = None, max_crops: int = MAX_CROPS,
                     calibration: Optional[Dict[str, Any]] = None, protocol: Optional[str] = None
                     ) -> Dict[str, Any]:
    """Per-subset metrics at 0.5 (and at `threshold`, a threshold fitted elsewhere, when given; with a
    `calibration` (calibration.json), the calibrated numbers and verdict shares under "calibrated").
    The per-image scores are kept under "_scores" (written as scores.csv, not into results.json)."""
    info = info or D.DistInfo(device=device)
    if protocol is not None and protocol not in PROTOCOLS:
        raise InputError(f"--protocol: one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    fake_perturb = PROTOCOLS[protocol][1] if protocol else None
    rows, notes, per_image = [], [], []
    pooled: List[Tuple[int, float]] = []
    for sub in subsets:
        if sub.status != "ok":
            rows.append({"subset": sub.name, "status": sub.status, "n": 0, "skipped": 0,
                         **{k: None for k in METRIC_KEYS},
                         "notes": f"{sub.status}: excluded from the mean"})
            notes.append(f"{sub.name}: {sub.status}, excluded from the mean")
            continue
        if sub.note:
            notes.append(f"{sub.name}: {sub.note}")
        logits, skipped = predict(model, sub.items, crop, mode, mean, std, perturb, device, batch,
                                  workers, info, desc=sub.name, amp=amp, max_crops=max_crops, logits=True,
                                  fake_perturb=fake_perturb)
        scores = {i: sigmoid(v) for i, v in logits.items()}  # what score_crops gives, from the same logits
        idx = sorted(scores)
        m = subset_metrics([sub.items[i][1] for i in idx], [scores[i] for i in idx], fitted_threshold=threshold)
        failed = [i for i, r in skipped.items() if r == NON_FINITE]
        unreadable = len(skipped) - len(failed)
        extra = ([f"{unreadable} unreadable image(s) skipped"] if unreadable else []) + \
                ([f"{len(failed)} image(s) failed: {NON_FINITE}"] if failed else [])
        m["notes"] = "; ".join(x for x in (sub.note, m["notes"], *extra) if x)
        if calibration is not None:
            m["calibrated"] = calibrated_metrics([sub.items[i][1] for i in idx], [logits[i] for i in idx],
                                                 calibration)
            pooled += [(sub.items[i][1], logits[i]) for i in idx]
        rows.append({"subset": sub.name, "status": "ok", "skipped": unreadable, "failed": len(failed),
                     "skipped_files": [sub.items[i][0] for i in sorted(skipped) if i not in failed][:10],
                     "failed_files": [sub.items[i][0] for i in sorted(failed)][:10], **m})
        per_image += [(sub.name, p, y, scores.get(i), skipped.get(i, "")) for i, (p, y) in enumerate(sub.items)]
    mean = {"subset": "mean", "status": "ok", **mean_row([r for r in rows if r["status"] == "ok"])}
    out = {"rows": rows, "mean": mean, "notes": notes, "perturbation": perturb.describe(),
           "protocol": protocol or "as distributed",
           "crop": {"size": crop, "mode": mode}, "threshold": threshold, "_scores": per_image}
    if calibration is not None and pooled:
        out["calibrated_pooled"] = calibrated_metrics([y for y, _ in pooled], [z for _, z in pooled], calibration)
    return out


def calibrated_metrics(labels: Sequence[int], logits: Sequence[float], calibration: Dict[str, Any]) -> Dict[str, Any]:
    """Beside the raw numbers: ECE and NLL before and after the calibration's temperature, balanced NLL
    and Cllr of the logits, the share of each verdict per class and the accuracy on decided images."""
    import numpy as np

    from . import calibration as K
    from .metrics import ece

    y, z = np.asarray(labels), np.asarray(logits, dtype=np.float64)
    t = float(calibration["temperature"])
    both = bool((y == 0).any() and (y == 1).any())
    return {"nll_before": K.nll(y, z), "nll_after": K.nll(y, z, t), "ece_before": ece(y, K.sigmoid(z)),
            "ece_after": ece(y, K.sigmoid(z / t)), "balanced_nll": K.balanced_nll(y, z, t) if both else None,
            "cllr_before": K.cllr(y, z) if both else None, "cllr_after": K.cllr(y, z, t) if both else None,
            **K.verdict_shares(y, K.sigmoid(z / t), calibration["thresholds"])}


def check_calibration_set(calibration: Dict[str, Any], subsets: List[Subset]) -> None:
    """Refuse an evaluation that shares files with the set its calibration was fitted on."""
    from .calibration import file_ids

    fitted = set(calibration.get("fitted_on", {}).get("file_ids") or ())
    if not fitted:
        return
    shared = fitted & set(file_ids(p for s in subsets for p, _ in s.items))
    if shared:
        where = calibration.get("fitted_on", {})
        raise InputError(f"--calibration: {len(shared)} image(s) of this evaluation are in the set the calibration "
                         f"was fitted on ({where.get('bench')} {where.get('root')}, split {where.get('split')}): "
                         "fit it on a validation set that is not judged here")


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _cols(result: Dict[str, Any]) -> List[Tuple[str, str]]:
    cols = [("ap", "AP"), ("auc", "AUC"), ("acc", "acc"), ("real_acc", "real acc"), ("fake_acc", "fake acc"),
            ("bal_acc", "bal acc"), ("eer", "EER"), ("tpr_at_fpr1", "TPR@1%FPR"), ("tpr_at_fpr5", "TPR@5%FPR"),
            ("ece", "ECE")]
    if result.get("threshold") is not None:
        cols += [("acc_t", "acc@t"), ("real_acc_t", "real@t"), ("fake_acc_t", "fake@t")]
    return cols


def format_markdown(result: Dict[str, Any], title: str = "") -> str:
    """Threshold-free numbers first (AP, AUC), then accuracy at 0.5, calibration, and the
    metadata-only AP of the shortcut check where it was computed."""
    lines = [f"### {title}", ""] if title else []
    cols = _cols(result)
    audited = any("metadata_ap" in r for r in result["rows"])
    head = [c for _, c in cols] + (["meta AP"] if audited else []) + ["real", "fake", "skipped", "notes"]
    lines.append("| subset | " + " | ".join(head) + " |")
    lines.append("|---" * (len(head) + 1) + "|")
    for r in result["rows"]:
        meta = [(_fmt(r.get("metadata_ap")) + (" **shortcut**" if r.get("shortcut") else ""))] if audited else []
        lines.append(f"| {r['subset']} | " + " | ".join([_fmt(r.get(k)) for k, _ in cols] + meta + [
            str(r.get("n_real", 0)), str(r.get("n_fake", 0)), str(r.get("skipped", 0) + r.get("failed", 0)),
            r.get("notes", "")]) + " |")
    m = result["mean"]
    lines.append("| **mean** | " + " | ".join([_fmt(m.get(k)) for k, _ in cols] + ([""] if audited else []) + [
        "", "", "", f"unweighted over {m['acc_subsets']} subsets (AP: {m['ap_subsets']})"]) + " |")
    lines.append("")
    t = result.get("threshold")
    lines.append(f"crop: {result['crop']['mode']} {result['crop']['size']} px at native resolution; "
                 f"protocol: {protocol_text(result.get('protocol'))}; "
                 f"perturbation: {result['perturbation']}; values in %; acc at P(fake) > 0.5"
                 + (f"; @t: at the fitted threshold t = {t:.4f} ({result.get('threshold_from', '')})"
                    if t is not None else ""))
    flagged = [r["subset"] for r in result["rows"] if r.get("shortcut")]
    if audited:
        lines.append("")
        lines.append("meta AP: AP of a classifier on file headers alone (format, JPEG quality, size; "
                     "`python -m fitgap.audit`). " + (
                         f"**Shortcut in {', '.join(flagged)}**: real and fake differ in file history there, "
                         "so the detector's number may measure that; check with `python -m fitgap.robustness "
                         "--reencode jpeg:95`." if flagged else "No subset is flagged (all < 90)."))
    return "\n".join(lines)


def format_calibrated(result: Dict[str, Any]) -> List[str]:
    """The calibrated table: NLL, ECE and Cllr before and after the temperature, and the verdicts."""
    cal = result.get("calibration")
    if not cal:
        return []
    th, fit = cal["thresholds"], cal.get("fitted_on", {})
    lines = ["", f"**Calibrated verdicts** ({cal['file']}: temperature {cal['temperature']:.3f}; fake at P >= "
             f"{th['fake']:.4f}, real at P <= {th['real']:.4f}, unsure between; fitted on {fit.get('bench')} "
             f"{fit.get('root')}, split {fit.get('split')}, for at most {100 * cal['targets']['fpr']:g}% of reals called "
             f"fake and {100 * cal['targets']['fnr']:g}% of fakes called real)", "",
             "| subset | NLL | ECE | Cllr | reals: real / unsure / fake | fakes: real / unsure / fake | decided | acc on decided |",
             "|---|---|---|---|---|---|---|---|"]
    rows = [(r["subset"], r.get("calibrated")) for r in result["rows"]]
    rows.append(("**pooled**", result.get("calibrated_pooled")))

    def two(c, a, b, scale=1.0, fmt="{:.3f}"):
        if c.get(a) is None or c.get(b) is None:
            return "-"
        return f"{fmt.format(scale * c[a])} -> {fmt.format(scale * c[b])}"

    for name, c in rows:
        if not c:
            continue
        shares = lambda d: " / ".join(_fmt(d.get(k)) for k in ("real", "unsure", "fake"))  # noqa: E731
        lines.append(f"| {name} | {two(c, 'nll_before', 'nll_after')} | {two(c, 'ece_before', 'ece_after', 100, '{:.1f}')} | "
                     f"{two(c, 'cllr_before', 'cllr_after')} | {shares(c['real'])} | {shares(c['fake'])} | "
                     f"{_fmt(c.get('decided'))} | {_fmt(c.get('acc_decided'))} |")
    lines += ["", "NLL in nats and Cllr in bits before -> after the temperature; ECE in %; verdict shares in % of "
              "each class."]
    return lines


def format_csv(result: Dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = [k for k, _ in _cols(result)]
    w.writerow(["subset", "status", *keys, "metadata_ap", "shortcut", "n_real", "n_fake", "skipped", "failed",
                "notes"])
    for r in result["rows"] + [result["mean"]]:
        w.writerow([r["subset"], r.get("status", ""), *(r.get(k) for k in keys), r.get("metadata_ap", ""),
                    r.get("shortcut", ""), r.get("n_real", ""), r.get("n_fake", ""), r.get("skipped", ""),
                    r.get("failed", ""), r.get("notes", "")])
    return buf.getvalue()


def format_scores(result: Dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["subset", "path", "label", "p_fake", "error"])
    for sub, path, label, score, err in result.get("_scores", []):
        w.writerow([sub, path, label, "" if score is None else f"{score:.8g}", err])
    return buf.getvalue()


def plot_reliability(result: Dict[str, Any], path: str) -> bool:
    """Reliability diagram of P(fake), pooled over subsets: fraction fake per bin vs mean P(fake)."""
    pairs = [(y, s) for _, _, y, s, _ in result.get("_scores", []) if s is not None]
    if not pairs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = calibration_bins([y for y, _ in pairs], [s for _, s in pairs])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    ax.plot([b["mean_p"] for b in bins], [b["frac_fake"] for b in bins], "o-", label="detector")
    for b in bins:
        ax.annotate(str(b["n"]), (b["mean_p"], b["frac_fake"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("mean P(fake) in bin")
    ax.set_ylabel("fraction fake in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability (ECE {_fmt(result['mean'].get('ece'))}%, subset mean)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


OUTPUT_FILES = ("results.json", "results.csv", "results.md", "scores.csv", "reliability.png")


def write_results(result: Dict[str, Any], out_dir: str, title: str = "") -> None:
    os.makedirs(out_dir, exist_ok=True)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    atomic_write_text(os.path.join(out_dir, "results.json"), json.dumps(public, indent=2))
    atomic_write_text(os.path.join(out_dir, "results.csv"), format_csv(result))
    atomic_write_text(os.path.join(out_dir, "results.md"),
                      "\n".join([format_markdown(result, title), *format_calibrated(result)]) + "\n")
    atomic_write_text(os.path.join(out_dir, "scores.csv"), format_scores(result))
    plot_reliability(result, os.path.join(out_dir, "reliability.png"))


def read_scores_csv(path: str) -> Tuple[List[int], List[float]]:
    labels, scores = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("p_fake"):
                labels.append(int(row["label"]))
                scores.append(float(row["p_fake"]))
    return labels, scores


def threshold_files(src: str) -> List[str]:
    """The files --threshold-from reads (absolute): the JSON given, and the scores.csv it is fitted on."""
    path = os.path.join(src, "scores.csv") if os.path.isdir(src) else src
    files = [os.path.abspath(path)]
    if path.endswith(".json"):
        files.append(os.path.abspath(os.path.join(os.path.dirname(path), "scores.csv")))
    return files


def _read_json_object(path: str, what: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{what}: {path} is not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what}: {path} holds a JSON {type(data).__name__}, expected an object "
                         "such as {\"threshold\": 0.42} or an evaluation's results.json")
    return data


def load_threshold(src: str) -> Tuple[float, str]:
    """A decision threshold from a validation run: a folder or results.json of `evaluate.py` (fitted
    on the scores.csv beside it: best balanced accuracy, pooled over subsets), a scores.csv, or a JSON
    file {"threshold": t}. Returns (t, where it came from)."""
    if os.path.isdir(src):
        src = os.path.join(src, "scores.csv")
    if not os.path.isfile(src):
        raise MissingInput(f"--threshold-from: {src!r} does not exist (give an evaluation folder, its "
                                "scores.csv, or a JSON file with a threshold)")
    if src.endswith(".json"):
        data = _read_json_object(src, "--threshold-from")
        t = data.get("threshold")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and "rows" not in data:
            if not math.isfinite(t):
                raise InputError(f"--threshold-from: {src}: threshold {t} is not a finite number")
            return float(t), src
        if "rows" not in data:
            raise InputError(f"--threshold-from: {src} has neither a numeric \"threshold\" nor an "
                             "evaluation's \"rows\"")
        src = os.path.join(os.path.dirname(src), "scores.csv")
        if not os.path.isfile(src):
            raise MissingInput(f"--threshold-from: no scores.csv beside that results.json ({src!r})")
    try:
        labels, scores = read_scores_csv(src)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, csv.Error) as exc:
        raise InputError(f"--threshold-from: {src} is not an evaluation's scores.csv "
                         f"({type(exc).__name__}: {exc})") from None
    try:
        return fit_threshold(labels, scores), f"fitted on {src}"
    except ValueError as exc:
        raise InputError(f"--threshold-from: {src}: {exc}") from None


def protocol_text(name: Optional[str]) -> str:
    if name in PROTOCOLS:
        return f"{name} ({PROTOCOLS[name][0]})"
    if name == "size-constrained":
        return "size-constrained (only the widths and heights both classes share; kept counts in the notes)"
    return name or "as distributed"


def perturbation_from_args(args) -> Perturbation:
    """--tier, or the single perturbation flags (not both)."""
    flags = Perturbation(args.jpeg, args.blur, args.resize, args.resize_kernel,
                         None if args.antialias is None else args.antialias == "on", args.webp, args.reencode)
    tier = getattr(args, "tier", None)
    if tier is None:
        flags.check()
        return flags
    if flags.active:
        raise InputError(f"--tier {tier}: a tier is its own perturbation ({TIERS[tier][0]}); drop "
                         f"--{', --'.join(k for k in ('jpeg', 'blur', 'resize', 'webp', 'reencode') if getattr(args, k) is not None)}")
    return TIERS[tier][1]


def default_out_dir(args, perturb: Perturbation) -> str:
    """<checkpoint folder>/eval_<...>: the name encodes everything that changes the scores (benchmark,
    split, subsets, crop mode and size, perturbation) and where a threshold came from, so two different
    evaluations never share a folder."""
    parts = [args.bench, args.split or "default", f"{args.crop}{args.size or ''}"]
    if args.subsets:
        names = "+".join(args.subsets)
        parts.append("sub-" + (names if len(names) <= 40 and re.fullmatch(r"[\w.+-]+", names)
                               else hashlib.sha1(names.encode()).hexdigest()[:8]))
    if perturb.active:
        parts.append(perturb.describe())
    if getattr(args, "protocol", None):
        parts.append(f"protocol-{args.protocol}")
    if args.threshold_from:
        parts.append("t-" + hashlib.sha1(os.path.abspath(args.threshold_from).encode()).hexdigest()[:8])
    if getattr(args, "calibration", None):
        parts.append("cal-" + hashlib.sha1(os.path.abspath(args.calibration).encode()).hexdigest()[:8])
    return os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "eval_" + "_".join(parts))


def check_out_dir(out: str, threshold_from: Optional[str]) -> None:
    """A run never writes over the file it reads its threshold from."""
    if not threshold_from:
        return
    written = {os.path.realpath(os.path.join(out, f)) for f in OUTPUT_FILES}
    clash = [f for f in threshold_files(threshold_from) if os.path.realpath(f) in written]
    if clash:
        raise InputError(f"--out: {out} would overwrite {clash[0]}, which --threshold-from reads; "
                         "write this evaluation elsewhere (another --out, or leave --out to the default)")


def run_title(bench: str, ckpt_path: str, perturb: Optional[Perturbation], protocol: Optional[str] = None,
              tier: Optional[str] = None) -> str:
    """Names the checkpoint's run folder, the protocol, the tier and the perturbation (if any is given), so two tables can be
    told apart."""
    p = os.path.abspath(ckpt_path)
    run_name = os.path.basename(os.path.dirname(p))
    return (f"{bench}: {run_name}/{os.path.basename(p)}" + (f", protocol {protocol}" if protocol else "")
            + (f", tier {tier}" if tier else "")
            + ("" if perturb is None else f", perturbation {perturb.describe()}"))


def run(args) -> Dict[str, Any]:
    perturb = perturbation_from_args(args)
    if args.max_crops < 1:
        raise InputError(f"--max-crops: must be >= 1, got {args.max_crops}")
    check_size(args.size)
    threshold, threshold_from = load_threshold(args.threshold_from) if args.threshold_from else (None, None)
    calibration = None
    if getattr(args, "calibration", None):
        from .calibration import load_calibration

        calibration = load_calibration(args.calibration)
    out = args.out or default_out_dir(args, perturb)
    check_out_dir(out, args.threshold_from)
    info = D.init(args.device)
    model, cfg = load_detector(args.ckpt, info.device)
    # rank 0 lists (and applies size-constrained, which reads every header), every rank scores its share
    # of that one listing (scores are matched by index); the metadata stays on rank 0, where the audit runs
    from .audit import protocol_listing

    kept: Dict[str, Any] = {}

    def listing():
        subs, kept["metadata"] = protocol_listing(
            load_benchmark(args.bench, args.root, args.split, args.subsets, **bench_kwargs(args)),
            args.protocol, getattr(args, "metadata", None))
        return subs

    subsets = D.decided_by_rank0(listing)
    metadata = kept.get("metadata")
    if calibration is not None:
        check_calibration_set(calibration, subsets)
    crop = crop_size(args.size, cfg)
    n = cfg["normalize"]
    result = evaluate_subsets(model, subsets, crop, args.crop, n["mean"], n["std"], perturb, info.device,
                              args.batch, args.workers, info, amp=args.amp, threshold=threshold,
                              max_crops=args.max_crops, calibration=calibration,
                              protocol=args.protocol if args.protocol in PROTOCOLS else None)
    if args.protocol == "size-constrained":
        result["protocol"] = "size-constrained"
    if args.tier:
        result["tier"] = f"{args.tier} ({TIERS[args.tier][0]})"
    result.update({"checkpoint": os.path.abspath(args.ckpt), "bench": args.bench, "root": args.root,
                   "threshold_from": threshold_from})
    if calibration is not None:
        result["calibration"] = {"file": os.path.abspath(args.calibration),
                                 **{k: calibration.get(k) for k in ("temperature", "thresholds", "targets")},
                                 "fitted_on": {k: v for k, v in calibration.get("fitted_on", {}).items()
                                               if k != "file_ids"}}
    if info.is_main:
        if args.audit:
            from .audit import audit

            checks = audit(subsets, workers=0, protocol=args.protocol, metadata=metadata)["subsets"]
            for r in result["rows"]:
                c = checks.get(r["subset"], {})
                r["metadata_ap"], r["shortcut"] = c.get("metadata_ap"), c.get("shortcut", False)
        title = run_title(args.bench, args.ckpt, perturb, args.protocol, args.tier)
        write_results(result, out, title)
        print("\n".join([format_markdown(result, title), *format_calibrated(result)]), flush=True)
        print(f"\nwritten to {out}/results.{{json,csv,md}}, scores.csv, reliability.png", flush=True)
    return result


USAGE = """Evaluate a detector over a benchmark: AP, ROC AUC, accuracy (real/fake/balanced), EER, TPR at low
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


def get_args_parser():
    p = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a detector checkpoint (finetune.py's best.pt or last.pt)")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--root", default=None, help="benchmark root (mini: cache folder, optional)")
    add_bench_args(p)
    p.add_argument("--split", default=None,
                   help="genimage: train or val (default val); mini: train or test (default test); "
                        "wildrf: train, val or test (default test); aigibench: test (default) or its perturbed "
                        "copies jpeg, noise, sample")
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
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS) + ["size-constrained"],
                   help="jpeg96: every FAKE image re-encoded as JPEG q96, the reals as they are (Dual Data "
                        "Alignment's debiased evaluation); size-constrained: only the images whose width and "
                        "height both classes' ranges share (\"Fake or JPEG?\"; sizes from --metadata or the headers); "
                        "default: the set as distributed")
    p.add_argument("--metadata", default=None,
                   help="a per-image metadata CSV (UnbiasedGenImage's: path, width, height, JPEG quality): sizes for "
                        "--protocol size-constrained and the audit's header facts, instead of reading the files")
    p.add_argument("--tier", default=None, choices=sorted(TIERS),
                   help="a robustness tier applied to both classes: web (long side <= 768 px, JPEG q60) or hard "
                        "(<= 512 px, JPEG q40); not with the single perturbation flags")
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


def main(argv=None):
    from .cli import run_main

    return run_main(run, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
