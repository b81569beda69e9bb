"""`make demo`: the whole method in miniature on the embedded data, on CPU.

1. export the real photos shipped in scikit-image / scikit-learn, build the mini-benchmark (once);
2. pre-train with configs/demo_pretrain.yaml on the training photos (real images only), probe
   the encoder on held-out photos, and score what its frozen features carry across the generator
   families (a logistic regression fitted on tconv, beside the encoder before pre-training);
3. fine-tune on ONE generator family (tconv) from the pre-trained encoder, and from scratch, each
   REPEATS times with other fine-tuning seeds (one fine-tuning moves the unseen AP by several points:
   the comparison is made on the mean; the detector kept is the first one);
4. evaluate all of them on all five families, GAN-like and diffusion-like (held-out photos);
5. the shortcut checks: an audit of the mini-benchmark's files (can format or size alone separate
   real from fake?) and the resampling sensitivity of the fine-tuned detector (decisions and AP
   under resizing with several kernels, JPEG and blur);
6. draw the patch-similarity map of the pre-trained encoder and a t-SNE of the detector's features,
   and write runs/demo/report.md;
7. keep a few test images with their logits in runs/demo/reference (`fitgap detect --check` recomputes them).
Every step resumes or is skipped when its output already exists.

`--seed S` runs it with another seed (runs/demo_seed<S>); `--run NAME` with `--pretrain KEY=VALUE` and
`--finetune KEY=VALUE` runs a changed demo in runs/NAME, every override checked before any work.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import runpy
import sys
import time
from typing import Dict, List, Optional, Sequence

from .files import atomic_write_text
from .evaluate import _fmt as _pct
from .evaluate import format_markdown

RUN = os.path.join("runs", "demo")
PRETRAIN_CONFIG = os.path.join("configs", "demo_pretrain.yaml")
FINETUNE_CONFIG = os.path.join("configs", "demo_finetune.yaml")
ROBUSTNESS_PER_CLASS = 24
REPEATS = 3          # fine-tunings per initialisation (seeds: the demo's, then 1000 * k + the demo's)
TRAIN_FAMILY = "tconv"
DIFFUSION_LIKE = ("pixdiff", "ldm")


def scratch_overrides(pretrain_config: str = PRETRAIN_CONFIG, overrides: Sequence[str] = ()) -> List[str]:
    """Overrides that give the from-scratch ablation the SAME encoder (and input normalisation) as
    the pre-trained run (its config with `overrides`): without them it would train the fine-tuning
    default architecture."""
    from . import config as C
    from .pretrain import DEFAULTS

    cfg = C.load_config(pretrain_config, overrides, DEFAULTS)
    return [f"{section}.{k}={json.dumps(v)}" for section in ("model", "normalize")
            for k, v in cfg[section].items()]


def eval_crop(finetune_config: str = FINETUNE_CONFIG, overrides: Sequence[str] = ()) -> int:
    """The demo detector's evaluation crop (eval.size of the fine-tuning config, else its patch)."""
    from . import config as C
    from .finetune import DEFAULTS

    cfg = C.load_config(finetune_config, overrides, DEFAULTS)
    return int(cfg["eval"]["size"] or cfg["patch"])


def pretrain_patch(pretrain_config: str = PRETRAIN_CONFIG, overrides: Sequence[str] = ()) -> int:
    """The patch side the demo encoder is pre-trained (and probed) at: plan.patch of the pre-training config."""
    from . import config as C
    from .pretrain import DEFAULTS

    return int(C.load_config(pretrain_config, overrides, DEFAULTS)["plan"]["patch"])


def score_text(finetune_config: str = FINETUNE_CONFIG, overrides: Sequence[str] = ()) -> str:
    """What the demo detectors' logit is, in words (the fine-tuning config's `score`)."""
    from . import config as C
    from .finetune import DEFAULTS

    if C.load_config(finetune_config, overrides, DEFAULTS)["score"] == "distance":
        return (f"the features' distance from {TRAIN_FAMILY}'s training reals (`score: distance`, fitted when "
                "fine-tuning ends; the head is what fine-tuning trains)")
    return "the head trained on real vs fake (`score: head`)"


class _FreshState:
    """What a step would find in a process of its own: torch's thread count, generator state and
    deterministic-algorithms flag as they were when the demo started (the training steps set their
    own; evaluation steps use these)."""

    def __init__(self) -> None:
        import torch

        self.threads = torch.get_num_threads()
        self.rng = torch.get_rng_state()
        self.deterministic = torch.are_deterministic_algorithms_enabled()

    def restore(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        torch.set_rng_state(self.rng)
        torch.use_deterministic_algorithms(self.deterministic)


_START: Optional[_FreshState] = None  # captured when main() starts (or at the first step run outside it)


def sh(*args: str) -> None:
    """Run one step, a repository script (`train_contrastive.py ...`) or a module (`-m fitgap.audit ...`)
    with these arguments, as `python <args>` would, but in this process: the demo's 18 steps would
    otherwise each spend seconds importing torch, torchvision and timm again. Each step starts from the
    torch state the demo started with; a step that fails stops the demo with its exit status."""
    global _START
    print("+ " + " ".join(args), flush=True)
    if _START is None:
        _START = _FreshState()
    _START.restore()
    saved = sys.argv[:]
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            importlib.import_module(args[1]).main(list(args[2:]))
        else:
            sys.argv = list(args)
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    finally:
        sys.argv = saved


def repeat_summary(runs: Dict[str, List[dict]], train_family: str = TRAIN_FAMILY,
                   diffusion: Sequence[str] = DIFFUSION_LIKE) -> Dict[str, dict]:
    """Per initialisation, from the evaluate.py results of its repeated fine-tunings: every family's
    AP (mean, min, max, in %), the mean over the unseen families (all but train_family) and over the
    diffusion-like ones, each as a list over the repeats and their mean."""
    out = {}
    for label, results in runs.items():
        per = [{r["subset"]: 100 * r["ap"] for r in res["rows"] if r.get("ap") is not None} for res in results]
        families = [f for f in per[0] if all(f in p for p in per)]
        unseen = [f for f in families if f != train_family]
        diff = [f for f in families if f in diffusion]
        lists = {"unseen": [sum(p[f] for f in unseen) / len(unseen) for p in per] if unseen else [],
                 "diffusion": [sum(p[f] for f in diff) / len(diff) for p in per] if diff else []}
        out[label] = {"n": len(per),
                      "families": {f: {"mean": sum(p[f] for p in per) / len(per), "min": min(p[f] for p in per),
                                       "max": max(p[f] for p in per)} for f in families},
                      **{k: {"runs": v, "mean": sum(v) / len(v) if v else None} for k, v in lists.items()}}
    return out


def format_repeats(summary: Dict[str, dict], first: str = "pretrained", second: str = "scratch") -> List[str]:
    """Markdown: the repeated fine-tunings side by side, and which initialisation is ahead on average."""
    a, b = summary[first], summary[second]
    lines = [f"| family | {first} (mean, min-max over {a['n']}) | {second} (mean, min-max over {b['n']}) |",
             "|---|---|---|"]
    for f in a["families"]:
        if f in b["families"]:
            x, y = a["families"][f], b["families"][f]
            lines.append(f"| {f} | {x['mean']:.1f} ({x['min']:.1f}-{x['max']:.1f}) | "
                         f"{y['mean']:.1f} ({y['min']:.1f}-{y['max']:.1f}) |")
    for key, name in (("unseen", "unseen mean"), ("diffusion", "diffusion-like mean")):
        if a[key]["runs"] and b[key]["runs"]:
            lines.append(f"| {name} | {a[key]['mean']:.1f} ({min(a[key]['runs']):.1f}-{max(a[key]['runs']):.1f}) | "
                         f"{b[key]['mean']:.1f} ({min(b[key]['runs']):.1f}-{max(b[key]['runs']):.1f}) |")
    verdict = []
    for key, name in (("unseen", "the unseen families"), ("diffusion", "the diffusion-like families")):
        if a[key]["mean"] is not None and b[key]["mean"] is not None:
            d = a[key]["mean"] - b[key]["mean"]
            verdict.append(f"on {name} the {first} detector is {'ahead of' if d > 0 else 'behind' if d < 0 else 'level with'} "
                           f"{second} by {abs(d):.1f} AP on average")
    spread = max((max(v["unseen"]["runs"]) - min(v["unseen"]["runs"]) for v in (a, b) if v["unseen"]["runs"]),
                 default=0.0)
    text = "; ".join(verdict)
    return lines + ["", text[:1].upper() + text[1:] + f" (one fine-tuning's unseen mean moves by up to "
                    f"{spread:.1f} AP between fine-tuning seeds here: a smaller difference is within that noise)."]


def plot_ablation(summary: Dict[str, dict], path: str) -> None:
    """Bars: every family's mean AP over the repeated fine-tunings, whiskers from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    names = list(summary[labels[0]]["families"]) + ["unseen mean"]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    width = 0.38
    for k, label in enumerate(labels):
        s = summary[label]
        runs = [[s["families"][f]["mean"], s["families"][f]["min"], s["families"][f]["max"]] for f in names[:-1]]
        u = s["unseen"]["runs"] or [0.0]
        runs.append([sum(u) / len(u), min(u), max(u)])
        mean = [r[0] for r in runs]
        err = [[r[0] - r[1] for r in runs], [r[2] - r[0] for r in runs]]
        ax.bar([i + (k - 0.5) * width for i in range(len(names))], mean, width, yerr=err, capsize=2,
               label=f"{label} ({s['n']} fine-tunings)")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_title(f"Mini-benchmark: fine-tuned on {TRAIN_FAMILY}, tested on all families")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SHIPPED_RUN = re.compile(r"demo(_seed\d+)?")  # what shipped_run() names, for any seed
SET_BY_DEMO = ("name", "seed", "init")  # keys the demo sets itself for every step


def shipped_run(seed: int) -> str:
    """The shipped demo's run folder under runs/ for a seed."""
    return "demo" if seed == 0 else f"demo_seed{seed}"


def check_variant(pretrain: Sequence[str], finetune: Sequence[str]) -> None:
    """Refuse, before any work, overrides of the demo's configs that the steps would refuse later: every key
    and type (config.load_config), the pre-training plan and encoder (pretrain.build_spec), the fine-tuning
    (finetune.check, before its init exists), and the keys the demo sets itself."""
    from . import config as C
    from .finetune import DEFAULTS as FT_DEFAULTS
    from .finetune import check as check_finetune
    from .pretrain import DEFAULTS as PT_DEFAULTS
    from .pretrain import build_spec

    for flag, overrides in (("--pretrain", pretrain), ("--finetune", finetune)):
        given = C.parse_overrides(overrides)
        for key in SET_BY_DEMO:
            if key in given:
                raise C.ConfigError(f"{flag} {key}=...: the demo sets {key} itself for every step")
    build_spec(C.load_config(PRETRAIN_CONFIG, pretrain, PT_DEFAULTS), 1)
    check_finetune(C.load_config(FINETUNE_CONFIG, [*finetune, "init=null"], FT_DEFAULTS), 1)


def main(argv=None) -> None:
    import argparse

    global RUN, _START
    ap = argparse.ArgumentParser(description="The whole method in miniature on the embedded data (CPU).")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of pre-training and fine-tuning; runs/demo for 0, runs/demo_seed<S> otherwise")
    ap.add_argument("--run", default=None, metavar="NAME",
                    help="the run folder, runs/NAME (default: demo for seed 0, demo_seed<S> otherwise); required "
                         "with --pretrain or --finetune, so that a changed demo never resumes or overwrites the "
                         "shipped one")
    ap.add_argument("--pretrain", action="append", default=[], metavar="KEY=VALUE",
                    help=f"an override of {PRETRAIN_CONFIG} (repeatable), e.g. model.trace_features=0; the "
                         "scratch ablation trains the same architecture")
    ap.add_argument("--finetune", action="append", default=[], metavar="KEY=VALUE",
                    help=f"an override of {FINETUNE_CONFIG} for both fine-tunings (repeatable), "
                         "e.g. augment.sharpen=null")
    args = ap.parse_args(argv)
    if (args.pretrain or args.finetune) and args.run is None:
        ap.error("--pretrain and --finetune need --run NAME: a changed demo gets a run folder of its own")
    if args.run is not None and not RUN_NAME.fullmatch(args.run):
        ap.error(f"--run {args.run!r}: a folder name under runs/ (letters, digits, '_', '.', '-')")
    if (args.pretrain or args.finetune) and SHIPPED_RUN.fullmatch(args.run):
        ap.error(f"--run {args.run}: the shipped demo's folder; a changed demo needs another name")
    tag = args.run or shipped_run(args.seed)
    RUN = os.path.join("runs", tag)
    seed = [f"seed={args.seed}"]
    _START = _FreshState()  # before the mini-benchmark's build moves torch's generator
    t0 = time.time()
    from .cli import run_main
    from .minibench import ensure_minibench
    from .photos import DEBIAN_PACKAGES, export_photos, export_probe_photos, missing_debian_photos

    export_photos(os.path.join(".cache", "photos"))
    _, other_cameras = export_probe_photos(os.path.join(".cache", "photos"))
    missing = missing_debian_photos()
    probe_note = "" if not missing else (
        f"Debian's {DEBIAN_PACKAGES} are not installed (`make demo` installs them): the probe read the 4 "
        "held-out photos alone, so its numbers are not comparable with the README's, read with them."
        if not other_cameras else
        f"of Debian's {DEBIAN_PACKAGES}, {len(missing)} photo(s) are missing ({', '.join(missing[:5])}): the "
        f"probe read the 4 held-out photos and {other_cameras} of them, so its numbers are not comparable "
        "with the README's.")
    if probe_note:
        print(f"warning: {probe_note}", file=sys.stderr, flush=True)
    run_main(check_variant, args.pretrain, args.finetune)  # before the mini-benchmark's build and any run
    ensure_minibench()
    timings = {"data": time.time() - t0}

    t = time.time()
    sh("train_contrastive.py", "--config", PRETRAIN_CONFIG, *args.pretrain, f"name={tag}/pretrain", *seed)
    timings["pretrain"] = time.time() - t
    pre = os.path.join(RUN, "pretrain", "checkpoint.pt")
    t = time.time()
    crop = eval_crop(FINETUNE_CONFIG, args.finetune)
    sh("-m", "fitgap.analysis", "transfer", "--ckpt", pre, "--bench", "mini", "--train-subset", TRAIN_FAMILY,
       "--split", "test", "--crop", str(crop), "--out", os.path.join(RUN, "transfer"), "--device", "cpu")
    timings["frozen transfer"] = time.time() - t

    results, repeats = {}, {"pretrained": [], "scratch": []}
    for k in range(REPEATS):
        ft_seed = args.seed if k == 0 else 1000 * k + args.seed
        for label, name, init in (("pretrained", "finetune", pre), ("scratch", "finetune_scratch", "null")):
            name = name if k == 0 else f"{name}_r{k}"
            t = time.time()
            extra = scratch_overrides(PRETRAIN_CONFIG, args.pretrain) if init == "null" else []
            sh("finetune.py", "--config", FINETUNE_CONFIG, *args.finetune, f"name={tag}/{name}", f"init={init}",
               f"seed={ft_seed}", *extra)
            out = os.path.join(RUN, name, "eval_mini")
            sh("evaluate.py", "--ckpt", os.path.join(RUN, name, "best.pt"), "--bench", "mini", "--split", "test",
               "--out", out, "--device", "cpu")
            with open(os.path.join(out, "results.json")) as f:
                repeats[label].append(json.load(f))
            key = name if k == 0 else f"{label} repeats"
            timings[key] = timings.get(key, 0.0) + time.time() - t
        if k == 0:
            results = {label: runs[0] for label, runs in repeats.items()}
    summary = repeat_summary(repeats)

    reference = write_demo_reference()

    t = time.time()
    sh("-m", "fitgap.audit", "--bench", "mini", "--split", "test", "--out", os.path.join(RUN, "audit"),
       "--workers", "0")
    sh("-m", "fitgap.robustness", "--ckpt", os.path.join(RUN, "finetune", "best.pt"), "--bench", "mini",
       "--split", "test", "--out", os.path.join(RUN, "robustness"), "--device", "cpu", "--workers", "1",
       "--max-per-class", str(ROBUSTNESS_PER_CLASS), "--factors", "0.5", "0.75", "1.5",
       "--kernels", "bilinear", "bilinear-noaa", "bicubic", "area", "--jpeg", "75", "--webp", "--blur", "1")
    timings["shortcut checks"] = time.time() - t

    t = time.time()
    patch = pretrain_patch(PRETRAIN_CONFIG, args.pretrain)  # the pre-training size, at every diagonal offset 0-63
    sh("-m", "fitgap.analysis", "similarity", "--ckpt", pre, "--images", os.path.join(".cache", "photos", "heldout"),
       "--crop", str(patch + 64), "--patch", str(patch), "--count", "64", "--out", RUN, "--device", "cpu")
    sh("-m", "fitgap.analysis", "tsne", "--ckpt", os.path.join(RUN, "finetune", "best.pt"), "--bench", "mini",
       "--split", "test", "--patch", str(crop), "--n", "40", "--rescale", "48", "--out", RUN, "--device", "cpu")
    timings["analysis"] = time.time() - t

    probe = [r for r in _read_jsonl(os.path.join(RUN, "pretrain", "log.jsonl")) if "probe" in r]
    fig = os.path.join(RUN, "ablation_ap.png")
    plot_ablation(summary, fig)
    atomic_write_text(os.path.join(RUN, "repeats.json"), json.dumps(summary, indent=1))
    lines = ["# fitgap demo report", "",
             "Pre-trained on real photos only (configs/demo_pretrain.yaml), fine-tuned on ONE generator "
             "family of the mini-benchmark (tconv), evaluated on all five (three GAN-like decoders, pixel "
             "diffusion, a latent-diffusion decoder) with held-out photos. "
             "The scratch row is the same fine-tuning without pre-training (the paper's Table 3 in "
             "miniature).", ""]
    if args.pretrain or args.finetune:
        lines += ["Changed from the shipped demo: " + "; ".join(
            f"{path} with {', '.join(f'`{o}`' for o in overrides)}"
            for path, overrides in ((PRETRAIN_CONFIG, args.pretrain), (FINETUNE_CONFIG, args.finetune)) if overrides)
            + " (the scratch ablation trains the same architecture).", ""]
    if probe:
        from .probe import format_probe, probe_table

        r = probe[-1]["probe"]
        lines += ["## Probe of the pre-trained encoder", ""] + ([probe_note, ""] if probe_note else []) + [
                  format_probe(r), "",
                  "Accuracy (multiple of chance) per ratio; phase is (y0 mod q, x0 mod q). The reference is a "
                  "hand-made statistic of the same patches (no learning): where it is at chance too, these "
                  "patches do not carry what is asked, whatever the encoder.", ""] + probe_table(r) + [""]
    from .analysis import format_transfer

    with open(os.path.join(RUN, "transfer", "transfer.json")) as f:
        transfer = json.load(f)
    lines += ["## What the frozen features carry across generators (no fine-tuning)", "",
              f"A logistic regression on the frozen encoder's features of {TRAIN_FAMILY}'s train split "
              f"({transfer['crop']}-px centre crops), AP (%) on every family's test split, beside the same for "
              "the encoder before pre-training (same architecture and seed). Deterministic: no fine-tuning seed "
              "moves it. Below 50 the features rank that family's fakes below the reals: the direction "
              f"that separates {TRAIN_FAMILY} points the other way for it. The distance columns read the same "
              f"features as a distance from {TRAIN_FAMILY}'s training reals (fitgap.realdist; no fake is seen): "
              "what the encoder learned of real images alone.", ""] + format_transfer(transfer) + [""]
    lines += ["## Cross-family evaluation", "",
              f"The detectors' logit: {score_text(FINETUNE_CONFIG, args.finetune)}. "
              f"AP (%) over {REPEATS} fine-tunings of each initialisation (fine-tuning seeds {args.seed}, "
              + ", ".join(str(1000 * k + args.seed) for k in range(1, REPEATS)) + "; the pre-training is the same "
              "for all):", ""] + format_repeats(summary) + ["", "![AP per family](ablation_ap.png)", "",
              "The detector kept (runs/" + tag + "/finetune, the first fine-tuning) in full, and its scratch twin:", "",
              format_markdown(results["pretrained"], "fine-tuned from the pre-trained encoder"), "",
              format_markdown(results["scratch"], "fine-tuned from scratch (ablation)"), ""]
    lines += shortcut_section()
    lines += ["## Time (s)", "",
              "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [f"| total | {time.time() - t0:.0f} |", ""]
    with open(os.path.join(RUN, "similarity.json")) as f:
        bands = json.load(f)["per_q"]
    lines += ["## What the encoders see", "",
              f"Cosine similarity of {patch}-px patches along the diagonal of held-out photos rescaled by each "
              "ratio, and as they are (pre-trained encoder; bands parallel to the diagonal at multiples of "
              "q mean phase sensitivity). Band number per q, mean over the ratios with that q; its excess "
              "over the photos as they are (no trace) is the part that reads the rescaling:", "",
              "| q | band | excess over the photos as they are | the same before pre-training |", "|---|---|---|---|"]
    lines += [f"| {q} | {v['band']:+.3f} | {v['excess']:+.3f} | {v['excess_before']:+.3f} |"
              for q, v in bands.items()]
    lines += ["", "![similarity](similarity.png)", "",
              "t-SNE of the fine-tuned detector's features on the test families, with copies "
              "rescaled to 48 px before extraction:", "", "![t-SNE](tsne.png)", ""]
    report = "\n".join(lines)
    atomic_write_text(os.path.join(RUN, "report.md"), report)
    print("\n" + report, flush=True)
    print(f"\nreport: {os.path.join(RUN, 'report.md')}", flush=True)
    print(f"install check: python -m fitgap.detect --check {os.path.dirname(reference)}", flush=True)


def write_demo_reference(per_class: int = 2) -> str:
    """runs/demo/reference: a few test images of every family and their logits under the fine-tuned
    detector, so that `python -m fitgap.detect --check runs/demo/reference` checks an install or a copy."""
    from .detect import write_reference
    from .minibench import DEFAULT_CACHE, FAMILIES

    files = []
    for fam in FAMILIES:
        for label in ("0_real", "1_fake"):
            folder = os.path.join(DEFAULT_CACHE, "test", fam, label)
            files += [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:per_class]]
    return write_reference(os.path.join(RUN, "finetune", "best.pt"), files, os.path.join(RUN, "reference"))


def shortcut_section() -> List[str]:
    """The audit's verdict and the resampling table, beside the numbers above."""
    with open(os.path.join(RUN, "audit", "audit.json")) as f:
        audit = json.load(f)
    with open(os.path.join(RUN, "robustness", "robustness.json")) as f:
        rob = json.load(f)
    lines = ["## Is it detecting generators or resizing?", "",
             "Metadata-only AP per family (a classifier on file format, JPEG quality and size alone; "
             ">= 90 would flag a shortcut): " + ", ".join(
                 f"{k} {_pct(v['metadata_ap'])}" for k, v in audit["subsets"].items()) + (
                 f". Flagged: {', '.join(audit['flagged'])}." if audit["flagged"] else
                 ". None flagged: every file is a PNG of one size, so the detector cannot use file history here."),
             "", f"Fine-tuned detector (from the pre-trained encoder), {ROBUSTNESS_PER_CLASS} real + "
             f"{ROBUSTNESS_PER_CLASS} fake test images per family, "
             "every condition applied to both classes (full tables: robustness/robustness.md):", "",
             "| condition | mean AP | real flip | real to fake | fake flip |", "|---|---|---|---|---|"]
    for name, r in rob["mean"].items():
        lines.append(f"| {name} | {_pct(r['ap'])} | {_pct(r['real_flip'])} | {_pct(r['real_to_fake'])} | "
                     f"{_pct(r['fake_flip'])} |")
    lines += ["", "![resampling sensitivity](robustness/resize_ap.png)", ""]
    return lines


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


if __name__ == "__main__":
    main()
