"""Score single images or folders with a detector: P(fake), a verdict, and the reasons behind it.

    python -m fitgap.detect --ckpt runs/finetune/best.pt photo.jpg folder/ [--json] [--crop tiles]

Per file: the raw P(fake); with a calibration (calibration.json beside the checkpoint, or
--calibration FILE; fit one with python -m fitgap.calibrate) the calibrated P(fake) and a verdict,
real / unsure / fake, between the two fitted thresholds; without one, the verdict is P(fake) > 0.5 and
the output says it is uncalibrated. Reasons: the resampling check (the image is also scored after
bilinear x0.9 and x1.1, antialiased, and a JPEG q95 re-encode, the operations this detector reads; when
any of them lands on another verdict, the verdict is `unsure`, naming it) and the file facts the audit
reads (format, size, JPEG quality, EXIF), so a reader sees when a file is of a kind the detector was
not calibrated on.

Exit code 0 when every file was scored, 1 when some could not be (each named with its reason in the
error column; JSON lines give null for a missing value), 2 for bad arguments. A closed pipe
(`... | head`) ends the command quietly.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

from torch.utils.data import DataLoader, Dataset

from . import calibration as K
from .calibration import find_calibration
from . import distributed as D
from .data import ImageError, decode_rgb, list_images
from .detector import check_size, crop_size, load_detector, score_logits
from .errors import InputError, MissingInput
from .evaldata import Perturbation, center_crop, center_crop_of, resized_shape, stack_uint8, tiles
from .models import min_input_side, min_side_for_config
from .progress import progress

NON_FINITE = "non-finite score"
# the resampling check: mild versions of what the detector reads, each scored beside the image itself
CONSISTENCY = {"bilinear x0.9": Perturbation(resize=0.9), "bilinear x1.1": Perturbation(resize=1.1),
               "jpeg q95": Perturbation(jpeg=95)}
COLUMNS = ["path", "p_fake", "p_calibrated", "verdict", "label", "reasons", "format", "width", "height",
           "jpeg_quality", "exif", "error"]


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
    p.add_argument("--ckpt", default=None, help="a detector checkpoint (finetune.py's best.pt)")
    p.add_argument("--onnx", default=None,
                   help="score with onnxruntime from a file of python -m fitgap.export instead of a checkpoint "
                        "(its crop size and calibration come from the file's metadata)")
    p.add_argument("paths", nargs="*", help="image files or folders (folders are searched recursively)")
    p.add_argument("--check", default=None, metavar="DIR",
                   help="recompute the logits of DIR/reference_scores.json (written by make demo) with the "
                        "checkpoint it names and report the largest difference: an install check")
    p.add_argument("--calibration", default=None,
                   help="calibration.json to read (default: the one beside the checkpoint, if any; "
                        "'none' for raw scores only)")
    p.add_argument("--crop", default="center", choices=["center", "tiles"],
                   help="one centre crop at native resolution, or the mean logit over tiles (default center)")
    p.add_argument("--size", type=int, default=None, help="crop size in px (default: the checkpoint's)")
    p.add_argument("--heatmap", default=None, metavar="DIR",
                   help="with --crop tiles: per-tile P(fake) in the output and a PNG per image in DIR, the image "
                        "with its tile scores over it (default: none)")
    p.add_argument("--no-consistency", dest="consistency", action="store_false",
                   help="skip the resampling check (3 extra forward passes per file; default: on)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of CSV (default CSV)")
    p.add_argument("--batch", type=int, default=16, help="files per model call (default 16)")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader workers that decode and crop while the model scores (default 2; 0: none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    return p


def file_facts(src: Union[str, bytes]) -> Dict[str, Any]:
    """What the audit reads of a file (a path, or its bytes), without decoding pixels."""
    from .audit import read_header

    h = read_header(src)
    return {"format": h.get("format"), "width": h.get("width"), "height": h.get("height"),
            "jpeg_quality": h.get("jpeg_quality"), "exif": h.get("exif")}


def judge(logits: Dict[str, float], calibration: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Verdict and reasons from the logits of the image ("image") and of its resampled versions."""
    t = float(calibration["temperature"]) if calibration else 1.0
    th = calibration["thresholds"] if calibration else None
    probs = {k: float(K.sigmoid(v / t)) for k, v in logits.items()}

    def decide(p):
        return K.verdict(p, th) if th else ("fake" if p > 0.5 else "real")

    base = decide(probs["image"])
    reasons = [] if calibration else ["uncalibrated: P(fake) > 0.5 is not a fitted threshold"]
    moved = [f"{k} -> {decide(p)} (P {p:.3f})" for k, p in probs.items() if k != "image" and decide(p) != base]
    if moved:
        reasons.append(f"resampling check: {base} as it is, but " + "; ".join(moved))
    return {"p_calibrated": probs["image"] if calibration else None,
            "verdict": "unsure" if moved else base, "reasons": reasons,
            "consistency": {k: p for k, p in probs.items() if k != "image"} or None}


def file_crops(src: Union[str, bytes], size: int, mode: str, min_side: int, check: bool,
               shape: Optional[List[int]] = None) -> Dict[str, Any]:
    """The uint8 crop stacks of the image (a path, or the file's bytes) and (check) of its resampled
    versions, as {version: crops}; `shape`, when given, receives the decoded image's height and width."""
    a = decode_rgb(src)
    if shape is not None:
        shape[:] = a.shape[:2]
    versions: Dict[str, Optional[Perturbation]] = {"image": None}
    if check:
        versions.update(CONSISTENCY)
    crops = {}
    for k, p in versions.items():
        h, w = a.shape[:2] if p is None or p.resize is None else resized_shape(a.shape[0], a.shape[1], p.resize)
        if min(h, w) < min_side:
            raise ImageError(f"too small for the encoder ({k}): {w}x{h} < {min_side} px")
        if mode == "center":  # a resampled version only where the crop needs it
            crops[k] = stack_uint8([center_crop(a, size) if p is None else center_crop_of(p, a, size)])
        else:
            crops[k] = stack_uint8(tiles(a if p is None else p(a), size))
    return crops


class DetectFiles(Dataset):
    """path -> prepare(path): the decoding, resampling, cropping and header reading that DataLoader
    workers do while the model scores the previous batch."""

    def __init__(self, files: List[str], size: int, mode: str, min_side: int, check: bool):
        self.files, self.size, self.mode, self.min_side, self.check = files, size, mode, min_side, check

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        item = prepare(self.files[i], self.files[i], self.size, self.mode, self.min_side, self.check)
        # numpy arrays go back to the main process pickled through the pipe: for small crops that is
        # cheaper than a shared-memory segment per tensor (bench_detect: about 10% more images/s)
        return (item[0], None if item[1] is None else {k: v.numpy() for k, v in item[1].items()}, *item[2:])


def _as_tensors(item):
    """A DetectFiles item with its numpy crops back as uint8 tensors (no copy)."""
    import torch

    return (item[0], None if item[1] is None else {k: torch.from_numpy(v) for k, v in item[1].items()}, *item[2:])


def prepare(name: str, src: Union[str, bytes], size: int, mode: str, min_side: int, check: bool):
    """(name, {version: uint8 crops} or None, error or None, file facts, decoded (height, width) or
    None) of one file, a path or its bytes: what `fitgap detect` and `fitgap serve` both score, the
    same way."""
    shape: List[int] = []
    try:
        return name, file_crops(src, size, mode, min_side, check, shape), None, file_facts(src), tuple(shape)
    except ImageError as exc:
        return name, None, str(exc), file_facts(src), None


def score_batch(logits_fn, batch, per_tile: bool = False):
    """One model call for every crop of every file of a loader batch. Per file {version: mean logit}
    (None for a file that could not be read) and, with per_tile, the logit of each of the image's own
    crops (its tiles) as a list."""
    flat, where = [], []
    for k, item in enumerate(batch):
        for name, c in (item[1] or {}).items():
            if per_tile and name == "image":  # each tile on its own; the image's logit is their mean
                for t in range(c.shape[0]):
                    flat.append(c[t:t + 1])
                    where.append((k, t))
            else:
                flat.append(c)
                where.append((k, name))
    logits = logits_fn(flat) if flat else []
    out: List[Optional[Dict[str, float]]] = [None if b[1] is None else {} for b in batch]
    tile_logits: List[List[float]] = [[] for _ in batch]
    for (k, name), v in zip(where, logits):
        if isinstance(name, int):
            tile_logits[k].append(v)
        else:
            out[k][name] = v
    for k, t in enumerate(tile_logits):
        if t:
            out[k]["image"] = sum(t) / len(t)
    return out, tile_logits


def write_heatmap(path: str, png: str, size: int, probs: List[float], rec: Dict[str, Any]) -> None:
    """The image with each tile's P(fake) over it (a colour bar; the verdict in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .evaldata import tile_boxes
    from .files import atomic_write

    a = decode_rgb(path)
    fig, ax = plt.subplots(figsize=(6, 6 * a.shape[0] / max(a.shape[1], 1) + 0.6))
    ax.imshow(a)
    cmap = plt.get_cmap("coolwarm")
    for (y, x, h, w), p in zip(tile_boxes(a.shape[0], a.shape[1], size), probs):
        ax.add_patch(Rectangle((x, y), w, h, facecolor=cmap(p), alpha=0.45, edgecolor="black", lw=0.5))
        ax.text(x + w / 2, y + h / 2, f"{p:.2f}", ha="center", va="center", fontsize=6)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, fraction=0.04, label="P(fake)" + (" (calibrated)" if rec["calibrated"] else ""))
    ax.set_title(f"{os.path.basename(path)}: {rec['verdict']} (P(fake) "
                 f"{rec['p_calibrated'] if rec['calibrated'] else rec['p_fake']:.2f})", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(png, lambda f: f.write(buf.getvalue()))


REFERENCE = "reference_scores.json"
REFERENCE_TOLERANCE = 1e-3  # logits; inference alone differs between CPU kinds by far less


def reference_logits(ckpt_path: str, files: List[str], size: Optional[int] = None) -> List[float]:
    """The mean logit of each file's centre crop, as detect computes it (no resampling check)."""
    model, cfg = load_detector(ckpt_path, "cpu")
    size = crop_size(size, cfg)
    n = cfg["normalize"]
    crops = [file_crops(f, size, "center", min_input_side(model), False)["image"] for f in files]
    return score_logits(model, crops, "cpu", mean=n["mean"], std=n["std"])


def write_reference(ckpt_path: str, files: List[str], out_dir: str) -> str:
    """Copy `files` into out_dir/images and write out_dir/reference_scores.json: their logits under
    `ckpt_path` (named relative to out_dir), so that `detect --check out_dir` on another machine or
    install recomputes and compares them."""
    import shutil

    from .files import atomic_write_text

    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    names = []
    for i, f in enumerate(files):
        name = f"{i:03d}_{os.path.basename(f)}"
        shutil.copyfile(f, os.path.join(img_dir, name))
        names.append(name)
    logits = reference_logits(ckpt_path, [os.path.join(img_dir, n) for n in names])
    doc = {"version": 1, "checkpoint": os.path.relpath(os.path.abspath(ckpt_path), os.path.abspath(out_dir)),
           "crop": "center", "tolerance": REFERENCE_TOLERANCE,
           "logits": {f"images/{n}": v for n, v in zip(names, logits)}}
    path = os.path.join(out_dir, REFERENCE)
    atomic_write_text(path, json.dumps(doc, indent=1))
    return path


def check_reference(ref_dir: str, out=sys.stdout) -> int:
    """Recompute a reference_scores.json; returns 0 when every logit is within its tolerance, else 1."""
    path = os.path.join(ref_dir, REFERENCE)
    if not os.path.isfile(path):
        raise MissingInput(f"--check: no {REFERENCE} in {ref_dir!r} (make demo writes runs/demo/reference)")
    try:
        with open(path) as f:
            doc = json.load(f)
        want = {k: float(v) for k, v in doc["logits"].items()}
        ckpt_path = os.path.normpath(os.path.join(ref_dir, doc["checkpoint"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--check: {path} is not a reference file ({type(exc).__name__}: {exc})") from None
    got = reference_logits(ckpt_path, [os.path.join(ref_dir, k) for k in want])
    diffs = {k: abs(g - w) for (k, w), g in zip(want.items(), got)}
    worst = max(diffs, key=diffs.get)
    tol = float(doc.get("tolerance", REFERENCE_TOLERANCE))
    ok = diffs[worst] <= tol
    out.write(f"{'ok' if ok else 'MISMATCH'}: {len(diffs)} reference images recomputed with {ckpt_path}; largest "
              f"logit difference {diffs[worst]:.3g} ({worst}; tolerance {tol:g})\n")
    return 0 if ok else 1


@dataclass
class Scoring:
    """A detector ready to score crops, as detect and serve use it: logits_fn(list of uint8 crop
    stacks) -> one mean logit per stack, the crop size, the smallest side the encoder takes, the
    calibration (None: uncalibrated) and a description of where each comes from."""
    logits_fn: Callable[[List[Any]], List[float]]
    size: int
    min_side: int
    calibration: Optional[Dict[str, Any]]
    about: Dict[str, Any]


def load_scoring(ckpt_path: Optional[str], onnx_path: Optional[str], calibration: Optional[str],
                 size: Optional[int], device: str = "auto") -> Scoring:
    """The detector of a checkpoint (on `device`) or of an ONNX export (onnxruntime, CPU), exactly one
    of them; `calibration`: a file, 'none', or None for the one found beside the detector."""
    if (ckpt_path is None) == (onnx_path is None):
        raise InputError("give --ckpt (a checkpoint) or --onnx (an exported detector), one of them")
    if onnx_path:
        from .export import OnnxDetector

        onnx = OnnxDetector(onnx_path)
        if size not in (None, onnx.size):
            raise InputError(f"--size {size}: {onnx_path} was exported for {onnx.size}-px crops")
        cal = onnx.calibration if calibration is None else find_calibration(calibration, onnx_path)
        return Scoring(onnx, onnx.size, min_side_for_config(onnx.encoder), cal,
                       {"detector": os.path.abspath(onnx_path), "runtime": "onnxruntime", "encoder": onnx.encoder,
                        "score": onnx.score})
    info = D.init(device)
    model, cfg = load_detector(ckpt_path, info.device)
    n = cfg["normalize"]
    logits_fn = lambda crops: score_logits(model, crops, info.device, mean=n["mean"], std=n["std"])  # noqa: E731
    return Scoring(logits_fn, crop_size(size, cfg), min_input_side(model), find_calibration(calibration, ckpt_path),
                   {"detector": os.path.abspath(ckpt_path), "runtime": f"torch ({info.device.type})",
                    "encoder": {k: cfg["model"].get(k) for k in ("backbone", "highpass", "trace_features")
                                if k in cfg["model"]},
                    "score": cfg.get("score", "head")})


def main(args, out=sys.stdout) -> int:
    """Scores every file; returns how many could not be scored (unreadable, or a non-finite score),
    each named in its row. The command exits 1 when that is not 0."""
    if args.check is not None:
        return check_reference(args.check, out)
    if not args.paths:
        raise InputError("give image files or folders to score (or --check DIR)")
    check_size(args.size)
    if args.heatmap is not None and args.crop != "tiles":
        raise InputError("--heatmap: per-tile scores need --crop tiles")
    if args.batch < 1 or args.workers < 0:
        raise InputError(f"--batch must be >= 1 and --workers >= 0, got {args.batch} and {args.workers}")
    scoring = load_scoring(args.ckpt, args.onnx, args.calibration, args.size, args.device)
    logits_fn, size, min_side, calibration = scoring.logits_fn, scoring.size, scoring.min_side, scoring.calibration
    files = expand(args.paths)
    writer = None if args.json else csv.writer(out)
    if writer:
        writer.writerow(COLUMNS)
    failed = 0
    ds = DetectFiles(files, size, args.crop, min_side, args.consistency)
    loader = DataLoader(ds, batch_size=args.batch, num_workers=args.workers if len(files) > 1 else 0,
                        collate_fn=lambda b: b)
    bar = progress(total=len(files), desc="detect", unit="img", disable=len(files) < 2, leave=False)
    heatmaps = args.heatmap is not None
    if heatmaps:
        os.makedirs(args.heatmap, exist_ok=True)
    done = 0
    for batch in loader:  # in input order: one record per file
        batch = [_as_tensors(b) for b in batch]
        scored, tile_logits = score_batch(logits_fn, batch, per_tile=heatmaps)
        for item, logits, per_tile in zip(batch, scored, tile_logits):
            rec = make_record(item, logits, per_tile if heatmaps else None, calibration, size)
            path = rec["path"]
            if heatmaps and rec["error"] is None:
                rec["heatmap"] = os.path.join(args.heatmap,
                                              f"{done:05d}_{os.path.splitext(os.path.basename(path))[0]}.png")
                write_heatmap(path, rec["heatmap"], size, rec["tiles"], rec)
            failed += rec["error"] is not None
            done += 1
            write_record(rec, writer, out)
        bar.update(len(batch))
    bar.close()
    out.flush()
    if failed:
        print(f"{failed} of {len(files)} file(s) not scored (see their error column)", file=sys.stderr, flush=True)
    return failed


def make_record(item, logits: Optional[Dict[str, float]], per_tile: Optional[List[float]],
                calibration: Optional[Dict[str, Any]], size: int) -> Dict[str, Any]:
    """The answer for one prepared file (see prepare) and its logits: raw and calibrated P(fake), the
    verdict with its reasons, the file facts, and with per_tile each tile's calibrated P(fake) and box
    [y, x, h, w] in the image's pixels."""
    path, _, err, facts, shape = item
    rec: Dict[str, Any] = {"path": path, "p_fake": None, "p_calibrated": None, "verdict": None,
                           "label": None, "reasons": [], "calibrated": calibration is not None,
                           "file": facts, "consistency": None, "error": err}
    if logits is not None and not all(math.isfinite(v) for v in logits.values()):
        rec["error"], logits = NON_FINITE, None
    if logits is None:
        return rec
    rec["p_fake"] = float(K.sigmoid(logits["image"]))
    rec["label"] = "fake" if rec["p_fake"] > 0.5 else "real"
    rec.update(judge(logits, calibration))
    if per_tile is not None:
        from .evaldata import tile_boxes

        t = float(calibration["temperature"]) if calibration else 1.0
        rec["tiles"] = [float(K.sigmoid(v / t)) for v in per_tile]
        rec["tile_boxes"] = [list(b) for b in tile_boxes(shape[0], shape[1], size)]
    return rec


def write_record(rec: Dict[str, Any], writer, out) -> None:
    if writer is None:
        out.write(json.dumps(rec, allow_nan=False) + "\n")
        return
    f = rec["file"]
    row = [rec["path"], _num(rec["p_fake"]), _num(rec["p_calibrated"]), rec["verdict"] or "", rec["label"] or "",
           " | ".join(rec["reasons"]), f.get("format") or "", f.get("width") or "", f.get("height") or "",
           "" if f.get("jpeg_quality") is None else f["jpeg_quality"], "" if f.get("exif") is None else int(f["exif"]),
           rec["error"] or ""]
    writer.writerow(row)


def _num(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.6f}"


def cli(argv: Optional[List[str]] = None) -> None:
    from .cli import run_main

    try:
        failed = run_main(main, get_args_parser().parse_args(argv))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head` closed the pipe: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    cli()
