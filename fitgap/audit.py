"""Dataset audit: can file format, JPEG history or image size alone tell real from fake?

    python -m fitgap.audit --bench genimage --root /data/GenImage --out runs/audit_genimage
    python -m fitgap.audit --bench mini --out runs/demo/audit

For every subset, real vs fake side by side: file formats, JPEG quality (estimated from the
quantization tables, as forensic tools do), chroma subsampling, EXIF, the most common sizes, the
smallest and largest side, the share of sides that are multiples of 8 / 64 / 256, colour mode, bits
per sample, ICC profiles and text-chunk keys (generation parameters that image tools write). Then a
metadata-only baseline: a random forest (scikit-learn) on these header features alone, scored by
cross-validated AP, files with identical header features kept in one fold. A subset where metadata alone reaches AP >= 0.9 is flagged "a shortcut exists":
a detector's number there may measure file history, not generation.

Only headers are read (PIL parses the markers and chunks before the pixel data and decodes nothing).
Writes audit.json and audit.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, JpegImagePlugin
from .progress import progress

from .benchmarks import BENCHES, Subset, add_bench_args, bench_kwargs, load_benchmark
from .data import PARQUET_SEP
from .errors import InputError, MissingInput
from .files import atomic_write_text

SHORTCUT_AP = 0.9

# The IJG (libjpeg) example tables of Annex K, natural (row-major) order: what libjpeg, PIL, OpenCV
# and most cameras scale by the quality factor.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=np.int64)
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
FORMATS = ("JPEG", "PNG", "WEBP")


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's jpeg_quality_scaling + table scaling (baseline: clamped to 1..255)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


_QUALITIES = np.arange(1, 101)
_LUMA_TABLES = np.stack([ijg_table(IJG_LUMA, int(q)) for q in _QUALITIES])  # [100, 64]
_CHROMA_TABLES = np.stack([ijg_table(IJG_CHROMA, int(q)) for q in _QUALITIES])
_QUALITY_CACHE: Dict[bytes, Dict[str, Any]] = {}  # most files of a dataset share a few table sets


def jpeg_quality(tables: Dict[int, Sequence[int]]) -> Dict[str, Any]:
    """Estimate the IJG quality from a JPEG's quantization tables (natural order, as PIL gives them):
    the quality whose scaled standard tables are nearest (sum of absolute differences; ties go to the
    higher quality). `exact` says whether they match exactly (an IJG-style encoder at that quality)."""
    if not tables:
        return {"quality": None, "exact": False}
    keys = sorted(tables)
    luma = np.asarray(tables[keys[0]], dtype=np.int64)
    chroma = np.asarray(tables[keys[1]], dtype=np.int64) if len(keys) > 1 else None
    key = luma.tobytes() + (b"" if chroma is None else chroma.tobytes())
    hit = _QUALITY_CACHE.get(key)
    if hit is not None:
        return dict(hit)
    err = np.abs(_LUMA_TABLES - luma).sum(axis=1)
    if chroma is not None:
        err = err + np.abs(_CHROMA_TABLES - chroma).sum(axis=1)
    best = int(np.flatnonzero(err == err.min())[-1])
    out = {"quality": int(_QUALITIES[best]), "exact": bool(err[best] == 0)}
    if len(_QUALITY_CACHE) < 4096:
        _QUALITY_CACHE[key] = out
    return dict(out)


MODES = ("RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1")
MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}
# text-chunk keys that image tools and generators write (generation parameters, workflow, software)
TEXT_KEYS = ("parameters", "prompt", "workflow", "Software", "Description", "Comment")


def _bit_depth(src: Union[str, bytes], im: Image.Image) -> int:
    """Bits per sample: a PNG's from its IHDR chunk (palette PNGs have 1, 2, 4 or 8), else from the mode."""
    if im.format == "PNG":
        if isinstance(src, bytes):
            head = src[:26]
        else:
            with open(src, "rb") as f:
                head = f.read(26)
        if len(head) == 26 and head[12:16] == b"IHDR":
            return int(head[24])
    return int(getattr(im, "bits", None) or MODE_BITS.get(im.mode, 8))


def read_header(path: Union[str, bytes], name: Optional[str] = None) -> Dict[str, Any]:
    """Header facts of one image file (a path, or the file's bytes with `name` for its path field);
    pixels are not decoded. `error` is set for unreadable files."""
    data = path if isinstance(path, bytes) else None
    rec: Dict[str, Any] = {"path": name if data is not None else path}
    if data is None and PARQUET_SEP in path:  # an image stored in a parquet file
        from .parquet import read_ref

        try:
            data = read_ref(path)
        except Exception as exc:  # noqa: BLE001 - counted as unreadable, as a broken file is
            rec["error"] = f"{type(exc).__name__}: {exc}"
            return rec
    try:
        rec["bytes"] = len(data) if data is not None else os.path.getsize(path)
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            rec["format"] = im.format or "?"
            rec["width"], rec["height"] = im.size
            rec["mode"] = im.mode
            rec["bits"] = _bit_depth(data if data is not None else path, im)
            rec["icc"] = bool(im.info.get("icc_profile"))
            rec["text_keys"] = sorted(k for k, v in im.info.items() if isinstance(k, str) and isinstance(v, str))[:32]
            rec["exif"] = bool(im.info.get("exif")) or (im.format == "TIFF" and 34665 in getattr(im, "tag_v2", {}))
            if im.format == "JPEG":
                rec.update({f"jpeg_{k}": v for k, v in jpeg_quality(getattr(im, "quantization", {}) or {}).items()})
                rec["subsampling"] = SUBSAMPLING.get(JpegImagePlugin.get_sampling(im), "other")
    except Exception as exc:  # noqa: BLE001 - any file that PIL cannot parse is counted, not fatal
        rec["error"] = f"{type(exc).__name__}: {exc}"
    return rec


def read_headers(paths: Sequence[str], workers: int = 0, desc: str = "", min_parallel: int = 2000
                 ) -> List[Dict[str, Any]]:
    """read_header of every path; `workers` processes when there are more than `min_parallel` paths."""
    if workers > 0 and len(paths) > min_parallel:
        with ProcessPoolExecutor(workers) as ex:
            return list(progress(ex.map(read_header, paths, chunksize=256), total=len(paths), desc=desc,
                             leave=False, dynamic_ncols=True))
    return [read_header(p) for p in progress(paths, desc=desc, leave=False, dynamic_ncols=True)]


def features(rec: Dict[str, Any]) -> List[float]:
    """The metadata baseline's inputs: format, colour mode, bit depth, ICC profile, text-chunk keys,
    JPEG quality and subsampling, EXIF, size and its divisibility. Nothing computed from pixels."""
    fmt = rec.get("format")
    w, h = rec.get("width", 0), rec.get("height", 0)
    q = rec.get("jpeg_quality")
    sub = rec.get("subsampling")
    mode = rec.get("mode")
    keys = set(rec.get("text_keys") or ())
    return [*(float(fmt == f) for f in FORMATS), float(fmt not in FORMATS),
            *(float(mode == m) for m in MODES), float(mode not in MODES), float(rec.get("bits") or 8),
            float(bool(rec.get("icc"))), float(len(keys)), *(float(k in keys) for k in TEXT_KEYS),
            float(q) if q is not None else -1.0, float(bool(rec.get("jpeg_exact"))),
            float(sub == "4:2:0"), float(sub == "4:2:2"), float(bool(rec.get("exif"))),
            float(w), float(h), w / max(h, 1), float(w * h),
            *(float(v % m == 0) for m in (8, 64, 256) for v in (w, h))]


def metadata_ap(records: Sequence[Dict[str, Any]], labels: Sequence[int], seed: int = 0) -> Optional[float]:
    """Cross-validated AP (fake positive) of a random forest on header features alone; None when a
    class has fewer than 2 readable files.

    Files whose header features are identical while both classes have them form one group and stay in
    one fold (StratifiedGroupKFold): otherwise a real file's identical twin labelled fake sits in the
    training folds and the forest learns the opposite label, which drives AP below chance. (Identical
    headers that only one class has stay apart: that is the shortcut the audit looks for.) With grouping, headers that carry no
    information give AP near the share of fakes (0.5 for balanced classes), and a value below that is
    noise, not a signal."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels, dtype=np.int64)
    if min((y == 0).sum(), (y == 1).sum()) < 2:
        return None
    x = np.asarray([features(r) for r in records], dtype=np.float64)
    _, vec = np.unique(x, axis=0, return_inverse=True)
    vec = vec.reshape(-1)
    mixed = np.bincount(vec, weights=y, minlength=vec.max() + 1)
    mixed = (mixed > 0) & (mixed < np.bincount(vec))  # header vectors that both classes have
    groups = np.where(mixed[vec], vec, vec.max() + 1 + np.arange(len(y)))
    k = int(min(5, len(np.unique(groups))))
    if k < 2:  # every file has the same header features: they cannot tell the classes apart
        return float(average_precision_score(y, np.full(len(y), 0.5)))
    p = np.empty(len(y))
    for train, test in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            p[test] = y[train].mean()
            continue
        clf = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=seed, n_jobs=1)
        p[test] = clf.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return float(average_precision_score(y, p))


def describe(records: Sequence[Dict[str, Any]], top: int = 3) -> Dict[str, Any]:
    """Summary of one class of one subset."""
    ok = [r for r in records if "error" not in r]
    out: Dict[str, Any] = {"n": len(records), "unreadable": len(records) - len(ok)}
    if not ok:
        return out
    sides = np.asarray([v for r in ok for v in (r["width"], r["height"])], dtype=np.int64)
    jpeg = [r for r in ok if r["format"] == "JPEG"]
    qs = Counter(r.get("jpeg_quality") for r in jpeg if r.get("jpeg_quality") is not None)
    out.update({
        "formats": dict(Counter(r["format"] for r in ok).most_common()),
        "jpeg_quality": {"mean": float(np.mean([r["jpeg_quality"] for r in jpeg if r.get("jpeg_quality")]))
                         if qs else None, "top": [[q, c] for q, c in qs.most_common(top)],
                         "standard_tables": sum(bool(r.get("jpeg_exact")) for r in jpeg)},
        "subsampling": dict(Counter(r.get("subsampling") for r in jpeg).most_common()),
        "exif": sum(bool(r.get("exif")) for r in ok) / len(ok),
        "modes": dict(Counter(r.get("mode") for r in ok).most_common()),
        "bits": dict(Counter(str(r.get("bits")) for r in ok).most_common()),
        "icc": sum(bool(r.get("icc")) for r in ok) / len(ok),
        "text_keys": dict(Counter(k for r in ok for k in r.get("text_keys") or ()).most_common(top + 2)),
        "sizes": [[f"{w}x{h}", c] for (w, h), c in Counter((r["width"], r["height"]) for r in ok).most_common(top)],
        "distinct_sizes": len({(r["width"], r["height"]) for r in ok}),
        "min_side": int(sides.min()), "max_side": int(sides.max()),
        "multiple_of": {str(m): float((sides % m == 0).mean()) for m in (8, 64, 256)},
    })
    return out


def as_protocol(rec: Dict[str, Any], protocol: Optional[str]) -> Dict[str, Any]:
    """The header a fake has once an evaluation protocol has re-encoded it (jpeg96: a baseline JPEG at
    quality 96, 4:2:0, 8-bit RGB, no EXIF, ICC or text chunks, the same size); other records as read."""
    if protocol in (None, "size-constrained") or "error" in rec:  # size-constrained: the subsets are filtered
        return rec
    if protocol != "jpeg96":
        raise InputError(f"--protocol: unknown protocol {protocol!r}")
    keep = {k: rec[k] for k in ("path", "width", "height") if k in rec}
    return {**keep, "format": "JPEG", "mode": "RGB", "bits": 8, "icc": False, "text_keys": [], "exif": False,
            "jpeg_quality": 96, "jpeg_exact": True, "subsampling": "4:2:0"}


def audit_subset(sub: Subset, workers: int = 0, protocol: Optional[str] = None,
                 metadata: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    recs = read_headers([p for p, _ in sub.items], workers, desc=sub.name)
    if metadata:  # a per-image metadata CSV: its width, height and JPEG quality over what the headers say
        for r, (p, _) in zip(recs, sub.items):
            m = metadata.get(os.path.abspath(p))
            if m and "error" not in r:
                r.update({k: v for k, v in m.items() if v is not None})
    labels = [y for _, y in sub.items]
    recs = [as_protocol(r, protocol) if y == 1 else r for r, y in zip(recs, labels)]
    real = [r for r, y in zip(recs, labels) if y == 0]
    fake = [r for r, y in zip(recs, labels) if y == 1]
    ok = [(r, y) for r, y in zip(recs, labels) if "error" not in r]
    ap = metadata_ap([r for r, _ in ok], [y for _, y in ok]) if ok else None
    return {"status": sub.status, "real": describe(real), "fake": describe(fake), "metadata_ap": ap,
            "shortcut": bool(ap is not None and ap >= SHORTCUT_AP)}


def audit(subsets: Sequence[Subset], workers: int = 0, protocol: Optional[str] = None,
          metadata: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Per subset: header statistics of each class, the metadata-only AP and the shortcut flag; with a
    protocol (jpeg96), the fakes as the protocol re-encodes them (what the detector is then shown)."""
    out: Dict[str, Any] = {"subsets": {}, "shortcut_ap": SHORTCUT_AP, "protocol": protocol}
    for sub in subsets:
        if sub.status != "ok":
            out["subsets"][sub.name] = {"status": sub.status, "metadata_ap": None, "shortcut": False}
            continue
        out["subsets"][sub.name] = audit_subset(sub, workers, protocol, metadata)
    out["flagged"] = [k for k, v in out["subsets"].items() if v["shortcut"]]
    return out


def _fmt_counts(d: Optional[Dict[str, int]]) -> str:
    return ", ".join(f"{k} {v}" for k, v in (d or {}).items()) or "-"


def _row(name: str, real: Dict[str, Any], fake: Dict[str, Any], fn) -> str:
    return f"| {name} | {fn(real) if real.get('formats') else '-'} | {fn(fake) if fake.get('formats') else '-'} |"


def format_audit(result: Dict[str, Any], title: str = "") -> str:
    lines = [f"# Dataset audit{': ' + title if title else ''}", ""]
    if result.get("protocol"):
        lines += [f"Protocol {result['protocol']}: the fakes' headers as the protocol re-encodes them.", ""]
    flagged = result["flagged"]
    lines.append(f"**Shortcut flags** (metadata-only AP >= {result['shortcut_ap']}): "
                 + (", ".join(flagged) if flagged else "none") + ".")
    lines += ["", "A flagged subset's real and fake files can be told apart by format, JPEG history or size "
              "alone: check a detector there with `python -m fitgap.robustness --reencode jpeg:95` (both classes "
              "re-encoded alike) and the resampling sweep before trusting its number.", ""]
    for name, s in result["subsets"].items():
        lines.append(f"## {name}")
        lines.append("")
        if s["status"] != "ok":
            lines += [f"{s['status']}: not audited", ""]
            continue
        r, f = s["real"], s["fake"]
        ap = "-" if s["metadata_ap"] is None else f"{100 * s['metadata_ap']:.1f}"
        lines.append(f"metadata-only AP: **{ap}**" + (" -> **a shortcut exists**" if s["shortcut"] else ""))
        lines += ["", "| | real | fake |", "|---|---|---|",
                  f"| files (unreadable) | {r['n']} ({r['unreadable']}) | {f['n']} ({f['unreadable']}) |",
                  _row("formats", r, f, lambda d: _fmt_counts(d["formats"])),
                  _row("JPEG quality (mean; top)", r, f, lambda d: "-" if d["jpeg_quality"]["mean"] is None else
                       f"{d['jpeg_quality']['mean']:.0f}; " + ", ".join(f"q{q}: {c}" for q, c in d["jpeg_quality"]["top"])),
                  _row("chroma subsampling", r, f, lambda d: _fmt_counts(d["subsampling"])),
                  _row("colour modes", r, f, lambda d: _fmt_counts(d.get("modes"))),
                  _row("bits per sample", r, f, lambda d: _fmt_counts(d.get("bits"))),
                  _row("ICC profile", r, f, lambda d: f"{100 * d.get('icc', 0):.0f}%"),
                  _row("text-chunk keys (files)", r, f, lambda d: _fmt_counts(d.get("text_keys"))),
                  _row("EXIF", r, f, lambda d: f"{100 * d['exif']:.0f}%"),
                  _row("top sizes", r, f, lambda d: ", ".join(f"{s} ({c})" for s, c in d["sizes"])),
                  _row("distinct sizes", r, f, lambda d: str(d["distinct_sizes"])),
                  _row("min / max side", r, f, lambda d: f"{d['min_side']} / {d['max_side']}"),
                  _row("sides % 8 / 64 / 256 == 0", r, f, lambda d: " / ".join(
                      f"{100 * d['multiple_of'][m]:.0f}%" for m in ("8", "64", "256"))), ""]
    return "\n".join(lines)



# The size-constrained protocol ("Fake or JPEG?", UnbiasedGenImage): score only the images whose size both
# classes share, so that image size cannot separate real from fake. Per subset, the range of widths and
# of heights of the real images and of the fake images are taken; an image is kept when its width lies in
# both classes' width ranges and its height in both height ranges (a subset whose classes share no size
# keeps nothing and says so). Sizes come from the per-image metadata CSV when one is given
# (UnbiasedGenImage's: a path, width and height per image, and a JPEG quality the audit reads too), else
# from each file's header.
PATH_COLUMNS = ("path", "file_path", "filepath", "file", "filename", "image", "image_path")
QUALITY_COLUMNS = ("jpeg_quality", "quality", "jpeg_q", "q")


def _column(header: List[str], names, what: str, path: str, required: bool = True) -> Optional[str]:
    low = {h.strip().lower(): h for h in header}
    for n in names:
        if n in low:
            return low[n]
    if required:
        raise InputError(f"{path}: no {what} column (looked for {', '.join(names)}; its header: {', '.join(header)})")
    return None


def read_metadata(path: str, root: Optional[str] = None) -> Dict[str, Dict[str, Optional[int]]]:
    """{absolute image path: {"width", "height", "jpeg_quality"}} from a per-image metadata CSV; relative
    paths join `root` (default: the CSV's folder). A row with a non-integer size names its line."""
    if not os.path.isfile(path):
        raise MissingInput(f"--metadata: {path!r} is not a file")
    base = root or os.path.dirname(os.path.abspath(path))
    out: Dict[str, Dict[str, Optional[int]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        pc = _column(header, PATH_COLUMNS, "path", path)
        wc = _column(header, ("width", "w"), "width", path)
        hc = _column(header, ("height", "h"), "height", path)
        qc = _column(header, QUALITY_COLUMNS, "JPEG quality", path, required=False)
        for n, row in enumerate(reader, 2):
            p = (row.get(pc) or "").strip()
            try:
                w, h = int(float(row[wc])), int(float(row[hc]))
                q = row.get(qc) if qc else None
                q = int(float(q)) if q not in (None, "", "None", "nan") else None
            except (TypeError, ValueError):
                raise InputError(f"{path}:{n}: width {row.get(wc)!r}, height {row.get(hc)!r} or quality is not a "
                                 "number") from None
            out[os.path.abspath(p if os.path.isabs(p) else os.path.join(base, p))] = {
                "width": w, "height": h, "jpeg_quality": q}
    return out


def sizes_of(items, metadata: Optional[Dict[str, Dict]] = None) -> List[Optional[Tuple[int, int]]]:
    """(width, height) of each (path, label) item: from the metadata when it lists the file, else from
    the header; None for a file whose size cannot be read."""
    out = []
    for p, _ in items:
        m = (metadata or {}).get(os.path.abspath(p))
        if m is None:
            h = read_header(p)
            out.append((h["width"], h["height"]) if "width" in h else None)
        else:
            out.append((m["width"], m["height"]))
    return out


def size_constrain(subsets, metadata: Optional[Dict[str, Dict]] = None):
    """Each subset reduced to the images whose width and height lie in the ranges both classes share;
    the subset's note says how many were kept and the shared ranges."""
    out = []
    for s in subsets:
        if s.status != "ok":
            out.append(s)
            continue
        sz = sizes_of(s.items, metadata)
        by = {y: [v for v, (_, yy) in zip(sz, s.items) if yy == y and v is not None] for y in (0, 1)}
        if not by[0] or not by[1]:
            out.append(Subset(s.name, s.items, s.status, (s.note + "; " if s.note else "") +
                              "size-constrained: one class has no readable size, nothing removed"))
            continue
        lo_w = max(min(w for w, _ in by[0]), min(w for w, _ in by[1]))
        hi_w = min(max(w for w, _ in by[0]), max(w for w, _ in by[1]))
        lo_h = max(min(h for _, h in by[0]), min(h for _, h in by[1]))
        hi_h = min(max(h for _, h in by[0]), max(h for _, h in by[1]))
        # a file whose size cannot be read stays in, so that scoring counts it as unreadable
        keep = [it for it, v in zip(s.items, sz) if v is None or (lo_w <= v[0] <= hi_w and lo_h <= v[1] <= hi_h)]
        unread = sum(v is None for v in sz)
        shared = lo_w <= hi_w and lo_h <= hi_h
        note = (f"size-constrained: kept {len(keep)} of {len(s.items)} (width {lo_w}-{hi_w}, height {lo_h}-{hi_h})"
                if shared else "size-constrained: the classes share no size, nothing kept")
        if unread:
            note += f"; {unread} without a readable size kept (they are counted as unreadable)"
        out.append(Subset(s.name, keep, "ok" if keep else "empty", (s.note + "; " if s.note else "") + note))
    return out


def protocol_listing(subsets, protocol: Optional[str] = None, metadata_path: Optional[str] = None):
    """(the subsets an evaluation protocol scores, the metadata CSV read for them or None): with
    size-constrained, each subset reduced to the sizes both classes share. The audit and evaluate.py
    both start from it."""
    metadata = read_metadata(metadata_path) if metadata_path else None
    if protocol == "size-constrained":
        subsets = size_constrain(subsets, metadata)
    return subsets, metadata


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--root", default=None)
    add_bench_args(p)
    p.add_argument("--split", default=None,
                   help="the benchmark's split (default: the one evaluate.py scores, e.g. test for wildrf and mini)")
    p.add_argument("--subsets", nargs="*", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=2, help="header-reading processes (0: in this process)")
    p.add_argument("--protocol", default=None, choices=["jpeg96", "size-constrained"],
                   help="audit the set as evaluate.py --protocol shows it (jpeg96: the fakes re-encoded as JPEG "
                        "q96; size-constrained: only the sizes both classes share)")
    p.add_argument("--metadata", default=None,
                   help="a per-image metadata CSV (path, width, height, JPEG quality; UnbiasedGenImage's): its "
                        "values over the headers'")
    return p


def run(args) -> Dict[str, Any]:
    subsets, metadata = protocol_listing(load_benchmark(args.bench, args.root, args.split, args.subsets,
                                                        **bench_kwargs(args)),
                                         getattr(args, "protocol", None), getattr(args, "metadata", None))
    result = audit(subsets, args.workers, getattr(args, "protocol", None), metadata)
    result.update({"bench": args.bench, "root": args.root, "split": args.split})
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "audit.json"), json.dumps(result, indent=2))
    text = format_audit(result, args.bench)
    atomic_write_text(os.path.join(args.out, "audit.md"), text + "\n")
    print(text, flush=True)
    print(f"\nwritten to {args.out}/audit.{{json,md}}", flush=True)
    return result


def main(argv=None):
    from .cli import run_main

    return run_main(run, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
