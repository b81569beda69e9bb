"""The paper's Tables 1-3 from one command, resumable, with the paper's numbers beside the measured ones.

    python -m fitgap.reproduce --data /data --gpus 8            # or: scripts/reproduce_paper.sh --data /data --gpus 8
    python -m fitgap.reproduce --data /data --dry-run           # build every config, list every subset, print the plan
    python -m fitgap.reproduce --make-placeholders /tmp/tree    # the expected tree as empty folders

Stages, in order (each under torchrun with --gpus > 1):
  pretrain         configs/pretrain.yaml on <data>/imagenet/train (real images only)
  table1           fine-tune on ForenSynths ProGAN car, cat, chair, horse (<data>/CNNDetection/train/progan);
                   evaluate on Self-Synthesis (<data>/selfsynth)
  table2           fine-tune on GenImage SDv1.4 (<data>/GenImage, train split); evaluate on its 8 subsets
                   (val split), as distributed, under --protocol jpeg96 (fakes re-encoded at q96) and, with
                   --metadata, under --protocol size-constrained
  table3 scratch   the same fine-tuning of the same Xception without pre-training
  table3 fc        the linear layer alone on the frozen pre-trained encoder
  table3 4-/8-shot 4 / 8 images per class of every GenImage generator (train split) on the pre-trained encoder

A re-run continues: the training scripts resume from their last checkpoint (or return at once when done)
and an evaluation whose results.json exists is not repeated. At the end paper_tables.md is written under
the output folder: every table with the paper's number, the measured one and the difference.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .errors import InputError, MissingInput

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_TABLES = os.path.join(HERE, "configs", "paper", "paper_tables.csv")
GENIMAGE_PAPER = {"ADM": "ADM", "BigGAN": "BigGAN", "glide": "GLIDE", "Midjourney": "Midjourney",
                  "stable_diffusion_v_1_4": "SDv1.4", "stable_diffusion_v_1_5": "SDv1.5", "VQDM": "VQDM",
                  "wukong": "Wukong"}
PROGAN_CLASSES = ["car", "cat", "chair", "horse"]


@dataclass
class Stage:
    name: str
    kind: str  # pretrain | finetune | evaluate
    script: str
    args: List[str]
    done: Optional[str] = None  # an evaluation's results.json: present means done
    table: Optional[str] = None  # paper_tables key this evaluation feeds
    method: Optional[str] = None  # the paper's row it is compared with
    bench: Optional[Dict[str, str]] = None  # what the stage reads: bench, root, split, subsets
    notes: List[str] = field(default_factory=list)


def data_paths(data: str) -> Dict[str, str]:
    return {"imagenet": os.path.join(data, "imagenet", "train"),
            "progan": os.path.join(data, "CNNDetection", "train", "progan"),
            "selfsynth": os.path.join(data, "selfsynth"), "genimage": os.path.join(data, "GenImage")}


def plan(data: str, out: str = os.path.join("runs", "paper"), metadata: Optional[str] = None) -> List[Stage]:
    from .benchmarks import GENIMAGE, SELFSYNTH
    from .demo import scratch_overrides

    d = data_paths(data)
    pre = os.path.join(out, "pretrain", "checkpoint.pt")
    runs_dir = os.path.dirname(out) or "."
    prefix = os.path.basename(out)
    stages = [Stage("pretrain", "pretrain", "train_contrastive.py",
                    ["--config", "configs/pretrain.yaml", f"name={prefix}/pretrain", f"out_dir={runs_dir}",
                     f"data.train={d['imagenet']}"], bench={"bench": "images", "root": d["imagenet"]})]

    def finetune(name, config, bench, *extra):
        return Stage(name, "finetune", "finetune.py",
                     ["--config", config, f"name={prefix}/{name}", f"out_dir={runs_dir}", *extra], bench=bench)

    def evaluate(name, run, bench, table, method, *extra):
        tag = "_".join(x.lstrip("-") for x in extra if x != metadata) or "as_distributed"
        res = os.path.join(out, run, f"eval_{bench['bench']}_{tag}")
        args = ["--ckpt", os.path.join(out, run, "best.pt"), "--bench", bench["bench"], "--root", bench["root"],
                "--out", res, *(["--split", bench["split"]] if bench.get("split") else []), *extra]
        return Stage(name, "evaluate", "evaluate.py", args, done=os.path.join(res, "results.json"), table=table,
                     method=method, bench=bench)

    progan = {"bench": "folder", "root": d["progan"], "subsets": PROGAN_CLASSES}
    selfsynth = {"bench": "selfsynth", "root": d["selfsynth"], "expected": SELFSYNTH}
    gen_train = {"bench": "genimage", "root": d["genimage"], "split": "train", "subsets": ["stable_diffusion_v_1_4"]}
    gen_all_train = {"bench": "genimage", "root": d["genimage"], "split": "train", "subsets": GENIMAGE}
    gen_val = {"bench": "genimage", "root": d["genimage"], "split": "val", "expected": GENIMAGE}
    t1, t2 = "configs/paper/table1.yaml", "configs/paper/table2.yaml"
    stages += [
        finetune("table1", t1, progan, f"init={pre}", f"data.root={d['progan']}"),
        evaluate("table1_eval", "table1", selfsynth, "table1_selfsynth", "Ours"),
        finetune("table2", t2, gen_train, f"init={pre}", f"data.root={d['genimage']}"),
        evaluate("table2_eval", "table2", gen_val, "table2_genimage", "Ours"),
        evaluate("table2_eval_jpeg96", "table2", gen_val, "table2_genimage", "Ours", "--protocol", "jpeg96"),
        *([evaluate("table2_eval_size_constrained", "table2", gen_val, "table2_genimage", "Ours", "--protocol",
                    "size-constrained", "--metadata", metadata)] if metadata else []),
        finetune("table3_scratch", t2, gen_train, "init=null", f"data.root={d['genimage']}",
                 *scratch_overrides("configs/pretrain.yaml")),
        evaluate("table3_scratch_eval", "table3_scratch", gen_val, "table3_ablation_study", "Xception"),
        finetune("table3_fc", t2, gen_train, f"init={pre}", f"data.root={d['genimage']}", "mode=linear"),
        evaluate("table3_fc_eval", "table3_fc", gen_val, "table3_linear_layer_fine-tuning", "Ours(fc)"),
    ]
    for k in (4, 8):
        stages += [finetune(f"table3_{k}shot", t2, gen_all_train, f"init={pre}", f"data.root={d['genimage']}",
                            "mode=fewshot", f"fewshot.k={k}", f"data.subsets={json.dumps(GENIMAGE)}"),
                   evaluate(f"table3_{k}shot_eval", f"table3_{k}shot", gen_val, "table3_few-shot_fine-tuning",
                            f"Ours+{k}-shot")]
    return stages


def command(stage: Stage, gpus: int, python: str = sys.executable) -> List[str]:
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", stage.script, *stage.args]
    return [python, stage.script, *stage.args]


def check_configs(stages: List[Stage], gpus: int = 1) -> List[str]:
    """Every training config loaded and checked as its run would (files that earlier stages write are
    not asked for); returns one line per stage, raises ConfigError on the first bad one."""
    from . import config as C
    from . import finetune as FT
    from . import pretrain as PT

    lines = []
    for s in stages:
        if s.kind == "evaluate":
            continue
        cfg_file = s.args[s.args.index("--config") + 1]
        over = s.args[s.args.index("--config") + 2:]
        if s.kind == "pretrain":
            PT.build_spec(C.load_config(cfg_file, over, PT.DEFAULTS), gpus)
        else:
            cfg = C.load_config(cfg_file, [o for o in over if not o.startswith("init=")] + ["init=null"], FT.DEFAULTS)
            if cfg["mode"] == "linear":
                cfg["mode"] = "full"  # linear needs the pre-training checkpoint that stage 1 writes
            FT.check(cfg, gpus)
        lines.append(f"{s.name}: {cfg_file} ok")
    return lines


def list_subsets(stage: Stage) -> List[str]:
    """What the stage would read, one line per subset with its status and counts."""
    from .benchmarks import load_benchmark

    b = stage.bench or {}
    if b.get("bench") == "images":
        return [f"    {b['root']}: " + ("present" if os.path.isdir(b["root"]) else "MISSING")]
    if not os.path.isdir(b["root"]):
        return [f"    {b['root']}: MISSING (benchmark {b['bench']})"]
    subs = load_benchmark(b["bench"], b["root"], b.get("split"), b.get("subsets") or b.get("expected"))
    return [f"    {s.name}: {s.status} ({s.counts['real']} real, {s.counts['fake']} fake)" for s in subs]


def make_placeholders(root: str) -> List[str]:
    """The tree the stages read, as empty folders (for --dry-run where the data is elsewhere)."""
    from .benchmarks import GENIMAGE, SELFSYNTH

    d = data_paths(root)
    made = [d["imagenet"]]
    made += [os.path.join(d["progan"], c, lab) for c in PROGAN_CLASSES for lab in ("0_real", "1_fake")]
    made += [os.path.join(d["selfsynth"], g, lab) for g in SELFSYNTH for lab in ("0_real", "1_fake")]
    made += [os.path.join(d["genimage"], g, split, lab) for g in GENIMAGE for split in ("train", "val")
             for lab in ("ai", "nature")]
    for m in made:
        os.makedirs(m, exist_ok=True)
    return made


def paper_numbers(path: str = PAPER_TABLES) -> Dict[tuple, float]:
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            out[(row["table"], row["method"], row["subset"], row["metric"])] = float(row["value"])
    return out


def paper_name(table: str, subset: str) -> str:
    if subset == "mean":
        return "Mean" if table.startswith("table1") else "mAcc"
    return GENIMAGE_PAPER.get(subset, subset)


def report(stages: List[Stage], out: str, paper: Dict[tuple, float]) -> str:
    """paper_tables.md: per evaluation, each subset's paper and measured accuracy (and AP where the paper
    gives it) and the difference; evaluations not run yet are listed as such."""
    lines = ["# The paper's tables, reproduced", "",
             "Paper: the number the paper reports (configs/paper/paper_tables.csv); measured: this run; diff: "
             "measured - paper. Accuracy at P(fake) > 0.5 and AP, in %.", ""]
    for s in stages:
        if s.kind != "evaluate":
            continue
        proto = (" (protocol jpeg96: fakes re-encoded as JPEG q96; the paper's number is for the set as distributed)"
                 if "jpeg96" in s.args else " (protocol size-constrained: only the sizes both classes share; the "
                 "paper's number is for the set as distributed)" if "size-constrained" in s.args else "")
        lines += [f"## {s.name}: {s.table}, {s.method}{proto}", ""]
        if not os.path.isfile(s.done):
            lines += [f"not run yet ({s.done} is missing)", ""]
            continue
        with open(s.done) as f:
            res = json.load(f)
        metrics = [m for m in ("acc", "ap") if any(k[0] == s.table and k[1] == s.method and k[3] == m for k in paper)]
        head = " | ".join(f"{m} paper | {m} measured | {m} diff" for m in metrics)
        lines += [f"| subset | {head} |", "|---" * (1 + 3 * len(metrics)) + "|"]
        for r in res["rows"] + [dict(res["mean"], subset="mean")]:
            name = paper_name(s.table, r["subset"])
            cells = []
            for m in metrics:
                p = paper.get((s.table, s.method, name, m))
                v = r.get(m)
                v = None if v is None else 100 * v
                cells += ["-" if p is None else f"{p:.1f}", "-" if v is None else f"{v:.1f}",
                          "-" if p is None or v is None else f"{v - p:+.1f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    from .files import atomic_write_text

    text = "\n".join(lines)
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "paper_tables.md"), text + "\n")
    return text


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="the folder holding imagenet/, CNNDetection/, selfsynth/, GenImage/")
    p.add_argument("--gpus", type=int, default=1, help="processes per stage under torchrun (default 1: no torchrun)")
    p.add_argument("--out", default=os.path.join("runs", "paper"), help="run folder of every stage (default runs/paper)")
    p.add_argument("--dry-run", action="store_true",
                   help="build every config, list every subset each stage reads, print the plan; train nothing")
    p.add_argument("--metadata", default=None,
                   help="GenImage's per-image metadata CSV (UnbiasedGenImage's): adds Table 2 under "
                        "--protocol size-constrained")
    p.add_argument("--only", nargs="*", default=None, help="run only the stages with these names (default all)")
    p.add_argument("--make-placeholders", default=None, metavar="DIR",
                   help="create the tree the stages read as empty folders under DIR and exit")
    p.add_argument("--report-only", action="store_true", help="write paper_tables.md from what has run, nothing else")
    return p


def main(argv=None) -> int:
    from .cli import run_main

    return run_main(run, get_args_parser().parse_args(argv))


def run(args) -> int:
    if args.make_placeholders:
        made = make_placeholders(args.make_placeholders)
        print(f"{len(made)} placeholder folders under {args.make_placeholders}")
        return 0
    if not args.data:
        raise InputError("--data: the folder holding imagenet/, CNNDetection/, selfsynth/ and GenImage/")
    if args.gpus < 1:
        raise InputError(f"--gpus: must be >= 1, got {args.gpus}")
    stages = plan(args.data, args.out, args.metadata)
    if args.only:
        unknown = [n for n in args.only if n not in {s.name for s in stages}]
        if unknown:
            raise InputError(f"--only: no stage {', '.join(unknown)} (stages: {', '.join(s.name for s in stages)})")
        stages = [s for s in stages if s.name in args.only]
    paper = paper_numbers()
    if args.report_only:
        print(report(plan(args.data, args.out, args.metadata), args.out, paper))
        return 0
    if args.dry_run:
        for line in check_configs(stages, args.gpus):
            print(line)
        missing = 0
        print("\nplan:")
        for i, s in enumerate(stages, 1):
            state = "done" if s.done and os.path.isfile(s.done) else "to run"
            print(f"{i:2d}. {s.name} [{s.kind}, {state}]: {shlex.join(command(s, args.gpus))}")
            rows = list_subsets(s)
            missing += sum("MISSING" in r or ": missing" in r for r in rows)
            print("\n".join(rows))
        print(f"\n{len(stages)} stages; {missing} input(s) missing")
        return 1 if missing else 0
    for s in stages:
        if s.done and os.path.isfile(s.done):
            print(f"== {s.name}: done ({s.done})", flush=True)
            continue
        print(f"== {s.name}: {shlex.join(command(s, args.gpus))}", flush=True)
        r = subprocess.run(command(s, args.gpus), cwd=HERE)
        if r.returncode:
            raise MissingInput(f"stage {s.name} failed (exit {r.returncode}); fix it and re-run: finished stages are kept")
    print(report(plan(args.data, args.out, args.metadata), args.out, paper), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
