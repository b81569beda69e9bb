"""Evaluation of a detector over a benchmark: per-subset and mean metrics, tables out."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Dict, List, Optional

from torch.utils.data import DataLoader
from tqdm import tqdm

from . import distributed as D
from .benchmarks import Subset, load_benchmark
from .checkpoint import atomic_write_text
from .detector import load_detector, score_crops
from .evaldata import EvalDataset, Perturbation, collate_eval
from .metrics import mean_row, subset_metrics

COLUMNS = ("acc", "real_acc", "fake_acc", "ap")


def predict(model, items, crop: int, mode: str, mean, std, perturb: Perturbation, device, batch: int,
            workers: int, info: D.DistInfo, desc: str = "", amp: str = "none"):
    """Scores of `items` ([(path, label)]), split over ranks without padding and gathered.
    Returns (scores {index: p_fake}, skipped {index: reason})."""
    mine = list(range(info.rank, len(items), info.world_size))
    ds = EvalDataset([items[i] for i in mine], crop, mode, mean, std, perturb)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_eval)
    scores, skipped = {}, {}
    for group in tqdm(loader, desc=desc, disable=not info.is_main, leave=False, dynamic_ncols=True):
        ok = [g for g in group if g[0] is not None]
        for g in group:
            if g[0] is None:
                skipped[mine[g[2]]] = g[3]
        if ok:
            for g, s in zip(ok, score_crops(model, [g[0] for g in ok], device, amp)):
                scores[mine[g[2]]] = s
    merged_s, merged_k = {}, {}
    for s, k in D.all_gather_object((scores, skipped)):
        merged_s.update(s)
        merged_k.update(k)
    return merged_s, merged_k


def evaluate_subsets(model, subsets: List[Subset], crop: int, mode: str, mean, std, perturb: Perturbation,
                     device, batch: int = 32, workers: int = 2, info: Optional[D.DistInfo] = None,
                     amp: str = "none") -> Dict[str, Any]:
    info = info or D.DistInfo(device=device)
    rows, notes = [], []
    for sub in subsets:
        if sub.status != "ok":
            rows.append({"subset": sub.name, "status": sub.status, "n": 0, "skipped": 0,
                         **{k: None for k in COLUMNS},
                         "notes": f"{sub.status}: excluded from the mean"})
            notes.append(f"{sub.name}: {sub.status}, excluded from the mean")
            continue
        scores, skipped = predict(model, sub.items, crop, mode, mean, std, perturb, device, batch,
                                  workers, info, desc=sub.name, amp=amp)
        idx = sorted(scores)
        m = subset_metrics([sub.items[i][1] for i in idx], [scores[i] for i in idx])
        if skipped:
            m["notes"] = "; ".join(x for x in (m["notes"], f"{len(skipped)} unreadable image(s) skipped") if x)
        rows.append({"subset": sub.name, "status": "ok", "skipped": len(skipped),
                     "skipped_files": [sub.items[i][0] for i in sorted(skipped)][:10], **m})
    mean = {"subset": "mean", "status": "ok", **mean_row([r for r in rows if r["status"] == "ok"])}
    return {"rows": rows, "mean": mean, "notes": notes, "perturbation": perturb.describe(),
            "crop": {"size": crop, "mode": mode}}


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_markdown(result: Dict[str, Any], title: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| subset | acc | real acc | fake acc | AP | real | fake | skipped | notes |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        lines.append(f"| {r['subset']} | {_fmt(r['acc'])} | {_fmt(r['real_acc'])} | {_fmt(r['fake_acc'])} | "
                     f"{_fmt(r['ap'])} | {r.get('n_real', 0)} | {r.get('n_fake', 0)} | {r.get('skipped', 0)} | "
                     f"{r.get('notes', '')} |")
    m = result["mean"]
    lines.append(f"| **mean** | {_fmt(m['acc'])} | {_fmt(m['real_acc'])} | {_fmt(m['fake_acc'])} | "
                 f"{_fmt(m['ap'])} | | | | unweighted over {m['acc_subsets']} subsets (AP: {m['ap_subsets']}) |")
    lines.append("")
    lines.append(f"crop: {result['crop']['mode']} {result['crop']['size']} px at native resolution; "
                 f"perturbation: {result['perturbation']}; values in %")
    return "\n".join(lines)


def format_csv(result: Dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["subset", "status", "acc", "real_acc", "fake_acc", "ap", "n_real", "n_fake", "skipped", "notes"])
    for r in result["rows"] + [result["mean"]]:
        w.writerow([r["subset"], r.get("status", ""), *(r.get(k) for k in COLUMNS), r.get("n_real", ""),
                    r.get("n_fake", ""), r.get("skipped", ""), r.get("notes", "")])
    return buf.getvalue()


def write_results(result: Dict[str, Any], out_dir: str, title: str = "") -> None:
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "results.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(out_dir, "results.csv"), format_csv(result))
    atomic_write_text(os.path.join(out_dir, "results.md"), format_markdown(result, title) + "\n")


def run(args) -> Dict[str, Any]:
    perturb = Perturbation(args.jpeg, args.blur, args.resize)
    perturb.check()
    info = D.init(args.device)
    model, cfg = load_detector(args.ckpt, info.device)
    subsets = load_benchmark(args.bench, args.root, args.split, args.subsets)
    crop = args.size or cfg["eval"]["size"] or cfg["patch"]
    n = cfg["normalize"]
    result = evaluate_subsets(model, subsets, crop, args.crop, n["mean"], n["std"], perturb, info.device,
                              args.batch, args.workers, info, amp=args.amp)
    result.update({"checkpoint": os.path.abspath(args.ckpt), "bench": args.bench, "root": args.root})
    if info.is_main:
        tag = args.bench + ("" if not perturb.active else "_" + perturb.describe())
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f"eval_{tag}")
        title = f"{args.bench}: {os.path.basename(args.ckpt)}"
        write_results(result, out, title)
        print(format_markdown(result, title), flush=True)
        print(f"\nwritten to {out}/results.{{json,csv,md}}", flush=True)
    return result
