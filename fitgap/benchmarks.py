"""Evaluation benchmarks: subset discovery and labels (real = 0, fake = 1).

    forensynths  <gen>/[<class>/]{0_real,1_fake}        class folders pooled per generator
    selfsynth    {AttGAN,...,STGAN}/{0_real,1_fake}
    genimage     <gen>/[<inner>/]{train,val}/{ai,nature}  ai = fake; also {0_real,1_fake} in place of ai/nature
    folder       any tree of 0_real/1_fake pairs; the subset is the pair's parent folder
    mini         the embedded mini-benchmark (fitgap.minibench), the `folder` layout
    wildrf       {train,val}/{0_real,1_fake}; test/{reddit,twitter,facebook}/{0_real,1_fake}
    ufd          UniversalFakeDetect's diffusion set: <name>/{0_real,1_fake} for guided, ldm_*, glide_*,
                 dalle; a <name> with 1_fake alone takes its reals from imagenet/ (guided) or laion/
    synthbuster  <generator>/*.png fakes; the real photos (RAISE) in a separate folder, --real-root
    chameleon    [test/]{0_real,1_fake}
    aigibench    AIGIBench: <split>/<generator>/{0_real,1_fake} for its 25 generators; --split test (default)
                 or one of its perturbed copies, jpeg, noise, sample (the same generators below each)
    holmes       AIGI-Holmes' test set: [TestSet/]<generator>/{0_real,1_fake} for its 10 generators
    ditfake      SAFE's DiTFake: <generator>/ for FLUX.1-schnell, PixArt-Sigma-XL-2-1024-MS and
                 stable-diffusion-3-medium-diffusers (the folders its generation script writes), each
                 {0_real,1_fake} or fakes alone; fakes alone take the MSCOCO reals under --real-root
                 (default <root>/real), shared by every generator
    cospy        Co-Spy-Bench: [synthetic/]<caption set>/<org@model>/ fakes; the caption set's own real
                 images under --real-root/<caption set>/ (default <root>/real)
    parquet      --root FILE.parquet | FOLDER | 'GLOB': image bytes in a column, read one row group at a time
                 (fitgap.parquet); --image-column, --label-column, --subset-column
    openfake     OpenFake's parquet files: image, label real/fake, subsets by model
    commfor      Community Forensics-Eval's parquet files: image_data, label 1 fake / 0 real, subsets by
                 model_name (--subset-column architecture or subset for the others)
    csv          a CSV file `path,label[,subset]` (label 0/1 or real/fake; relative paths against the
                 CSV's folder; a header line is optional); with --columns path=COL,label=COL[,subset=COL]
                 its header names the columns to read (B-Free's list: path=filename,label=label; ImagiNet's
                 annotations: path=path,label=origin,subset=model), --image-root the folder the paths
                 are under, --real-values / --fake-values the label words beyond 0/1/real/fake

A subset the benchmark expects but the root lacks, or that holds no image, is reported as missing or
empty, never silently dropped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .index import walk_images as _images
from .errors import InputError, MissingInput

SELFSYNTH = ["AttGAN", "BEGAN", "CramerGAN", "InfoMaxGAN", "MMDGAN", "RelGAN", "S3GAN", "SNGAN", "STGAN"]
FORENSYNTHS = ["progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan", "deepfake"]
GENIMAGE = ["ADM", "BigGAN", "glide", "Midjourney", "stable_diffusion_v_1_4", "stable_diffusion_v_1_5",
            "VQDM", "wukong"]
UFD = ["guided", "ldm_200", "ldm_200_cfg", "ldm_100", "glide_100_27", "glide_50_27", "glide_100_10", "dalle"]
SYNTHBUSTER = ["dalle2", "dalle3", "firefly", "glide", "midjourney-v5", "stable-diffusion-1-3",
               "stable-diffusion-1-4", "stable-diffusion-2", "stable-diffusion-xl"]
WILDRF = ["reddit", "twitter", "facebook"]
# AIGIBench's test generators as its test/ folder names them, in the order of its five groups: GAN
# noise-to-image, GAN deepfakes (faces), diffusion text-to-image, diffusion personalised generation,
# images from open platforms.
AIGIBENCH = ["ProGAN", "R3GAN", "StyleGAN3", "StyleGAN-XL", "StyleSwim", "WFIR",
             "BlendFace", "E4S", "FaceSwap", "InSwap", "SimSwap",
             "DALLE-3", "FLUX1-dev", "GLIDE", "Imagen3", "Midjourney", "SD3", "SDXL",
             "BLIP", "Infinite-ID", "InstantID", "IP-Adapter", "PhotoMaker",
             "CommunityAI", "SocialRF"]
AIGIBENCH_SPLITS = ("test", "jpeg", "noise", "sample")
HOLMES = ["FLUX", "Infinity", "Janus", "Janus-Pro-1B", "Janus-Pro-7B", "LlamaGen", "PixArt-XL", "SD35-L",
          "Show-o", "VAR"]
DITFAKE = ["FLUX.1-schnell", "PixArt-Sigma-XL-2-1024-MS", "stable-diffusion-3-medium-diffusers"]
BENCHES = ("forensynths", "selfsynth", "genimage", "folder", "mini", "wildrf", "ufd", "synthbuster", "chameleon",
           "csv", "parquet", "openfake", "commfor", "cospy", "aigibench", "holmes", "ditfake")
PARQUET_BENCHES = ("parquet", "openfake", "commfor")


@dataclass
class Subset:
    name: str
    items: List[Tuple[str, int]] = field(default_factory=list)  # (path, label)
    status: str = "ok"  # ok | missing | empty
    note: str = ""  # what the layout could not find for this subset (shown beside its numbers)

    @property
    def counts(self) -> Dict[str, int]:
        fake = sum(label for _, label in self.items)
        return {"real": len(self.items) - fake, "fake": fake}


def _pair(folder: str, real: str = "0_real", fake: str = "1_fake") -> List[Tuple[str, int]]:
    return ([(p, 0) for p in _images(os.path.join(folder, real))] +
            [(p, 1) for p in _images(os.path.join(folder, fake))])


def _has_pair(folder: str, real: str = "0_real", fake: str = "1_fake") -> bool:
    return os.path.isdir(os.path.join(folder, real)) or os.path.isdir(os.path.join(folder, fake))


def _finish(name: str, items, found: bool) -> Subset:
    if not found:
        return Subset(name, [], "missing")
    return Subset(name, items, "ok" if items else "empty")


def _ordered_names(root: str, expected: List[str]) -> List[str]:
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    lower = {d.lower(): d for d in present}
    names = [lower.get(e.lower(), e) for e in expected]
    return names + [d for d in present if d not in names]


def forensynths(root: str, expected: Optional[List[str]] = None) -> List[Subset]:
    out = []
    for gen in _ordered_names(root, expected if expected is not None else FORENSYNTHS):
        folder = os.path.join(root, gen)
        if not os.path.isdir(folder):
            out.append(Subset(gen, [], "missing"))
            continue
        if _has_pair(folder):
            out.append(_finish(gen, _pair(folder), True))
            continue
        items = []
        classes = sorted(c for c in os.listdir(folder) if _has_pair(os.path.join(folder, c)))
        for c in classes:
            items += _pair(os.path.join(folder, c))
        out.append(_finish(gen, items, bool(classes)))
    return out


def _named_pairs(root: str, expected: List[str]) -> List[Subset]:
    """One subset per expected <name>/{0_real,1_fake} folder (missing or empty ones reported), then any
    other folder of root, so a misspelt name shows as missing beside the folder that holds its images."""
    out = []
    for gen in _ordered_names(root, expected):
        folder_ = os.path.join(root, gen)
        out.append(_finish(gen, _pair(folder_), os.path.isdir(folder_) and _has_pair(folder_)))
    return out


def selfsynth(root: str) -> List[Subset]:
    return _named_pairs(root, SELFSYNTH)


def aigibench(root: str, split: str = "test") -> List[Subset]:
    """AIGIBench: --root is the folder that holds test/ (and jpeg/, noise/, sample/, its perturbed
    copies of the same generators), or test/ itself."""
    if split not in AIGIBENCH_SPLITS:
        raise InputError(f"--split: aigibench has {', '.join(AIGIBENCH_SPLITS)}, not {split!r}")
    base = os.path.join(root, split)
    if not os.path.isdir(base):
        if split != "test" or not any(os.path.isdir(os.path.join(root, g)) for g in AIGIBENCH):
            raise MissingInput(f"--root: no {split}/ folder under {root!r} (bench aigibench, --split {split})")
        base = root
    return _named_pairs(base, AIGIBENCH)


def holmes(root: str) -> List[Subset]:
    """AIGI-Holmes' test set: --root is TestSet/ or the folder that holds it."""
    base = os.path.join(root, "TestSet")
    return _named_pairs(base if os.path.isdir(base) else root, HOLMES)


def ditfake(root: str, real_root: Optional[str]) -> List[Subset]:
    """SAFE's DiTFake: a generator folder with 0_real/1_fake is read as it is; one holding only images is
    all fakes, paired with the real photos of --real-root (MSCOCO; default <root>/real), shared by every
    such generator. Without reals its note says so and its AP is undefined."""
    if real_root is None and os.path.isdir(os.path.join(root, "real")):
        real_root = os.path.join(root, "real")
    if real_root is not None and not os.path.isdir(real_root):
        raise MissingInput(f"--real-root: {real_root!r} is not a folder (bench ditfake)")
    real_abs = os.path.abspath(real_root) if real_root else None
    reals = [(p, 0) for p in _images(real_root)] if real_root else []
    out = []
    for name in _ordered_names(root, DITFAKE):
        folder_ = os.path.join(root, name)
        if real_abs and os.path.abspath(folder_) == real_abs:
            continue
        if not os.path.isdir(folder_):
            out.append(Subset(name, [], "missing"))
        elif _has_pair(folder_):
            out.append(_finish(name, _pair(folder_), True))
        else:
            fakes = [(p, 1) for p in _images(folder_)]
            sub = _finish(name, reals + fakes if fakes else [], True)
            if fakes and not reals:
                sub.note = ("no real images: the folder holds fakes alone and no --real-root (MSCOCO) was "
                            "given" if not real_root else f"no real images under --real-root {real_root!r}")
            out.append(sub)
    return out


def _genimage_split(folder: str, split: str) -> Optional[str]:
    """The <split> folder of one GenImage generator, directly below or one level deeper."""
    direct = os.path.join(folder, split)
    if os.path.isdir(direct):
        return direct
    for inner in sorted(os.listdir(folder)):
        cand = os.path.join(folder, inner, split)
        if os.path.isdir(cand):
            return cand
    return None


def genimage(root: str, split: str = "val") -> List[Subset]:
    out = []
    for gen in _ordered_names(root, GENIMAGE):
        folder = os.path.join(root, gen)
        if not os.path.isdir(folder):
            out.append(Subset(gen, [], "missing"))
            continue
        sp = _genimage_split(folder, split)
        if sp is None and _has_pair(folder):  # renamed form without split folders
            sp = folder
        if sp is None:
            out.append(Subset(gen, [], "missing"))
        elif _has_pair(sp, "nature", "ai"):
            out.append(_finish(gen, _pair(sp, "nature", "ai"), True))
        else:
            out.append(_finish(gen, _pair(sp), _has_pair(sp)))
    return out


def folder(root: str) -> List[Subset]:
    out = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        dirnames.sort()
        if "0_real" in dirnames or "1_fake" in dirnames:
            name = os.path.relpath(dirpath, root)
            out.append(_finish("." if name == "." else name, _pair(dirpath), True))
            dirnames[:] = [d for d in dirnames if d not in ("0_real", "1_fake")]
    if not out:
        raise MissingInput(f"no 0_real/1_fake folders under {root!r}")
    return out


def wildrf(root: str, split: str = "test") -> List[Subset]:
    if split == "test":
        base = os.path.join(root, "test")
        return [_finish(n, _pair(os.path.join(base, n)), _has_pair(os.path.join(base, n)))
                for n in _ordered_names(base, WILDRF)] if os.path.isdir(base) else \
            [Subset(n, [], "missing") for n in WILDRF]
    folder_ = os.path.join(root, split)
    return [_finish(split, _pair(folder_), _has_pair(folder_))]


def ufd(root: str) -> List[Subset]:
    """UniversalFakeDetect's diffusion_datasets: each generator's fakes, with its own 0_real if it has
    one, else the reals the original evaluation pairs it with (imagenet/ for guided, laion/ otherwise)."""
    out = []
    for name in _ordered_names(root, UFD):
        if name in ("imagenet", "laion"):
            continue
        folder_ = os.path.join(root, name)
        if not _has_pair(folder_):
            out.append(Subset(name, [], "missing"))
            continue
        items = _pair(folder_)
        note = ""
        if not os.path.isdir(os.path.join(folder_, "0_real")):
            real_from = os.path.join(root, "imagenet" if name.startswith("guided") else "laion", "0_real")
            borrowed = [(p, 0) for p in _images(real_from)]
            if not borrowed:
                note = (f"no real images: {name} has no 0_real and borrows its reals from "
                        f"{os.path.relpath(real_from, root)}, which is {'empty' if os.path.isdir(real_from) else 'missing'}")
            items = borrowed + items
        sub = _finish(name, items, True)
        sub.note = note
        out.append(sub)
    return out


def synthbuster(root: str, real_root: Optional[str]) -> List[Subset]:
    """Synthbuster: every generator folder's images are fakes; the same real photos (RAISE-1k, given
    by --real-root) are the reals of every subset."""
    if not real_root or not os.path.isdir(real_root):
        raise MissingInput(f"--real-root: {real_root!r} is not a folder (synthbuster keeps its real "
                                "photos, RAISE-1k, apart from the generators)")
    reals = [(p, 0) for p in _images(real_root)]
    if not reals:
        raise MissingInput(f"--real-root: no images under {real_root!r}")
    real_abs = os.path.abspath(real_root)
    out = []
    for name in _ordered_names(root, SYNTHBUSTER):
        folder_ = os.path.join(root, name)
        if not os.path.isdir(folder_):
            out.append(Subset(name, [], "missing"))
            continue
        here = os.path.abspath(folder_)
        holds_reals = real_abs == here or real_abs.startswith(here + os.sep)
        fakes = [(p, 1) for p in _images(folder_) if not _inside(os.path.abspath(p), real_abs)]
        if holds_reals and not fakes and name not in SYNTHBUSTER:
            continue  # the folder that holds --real-root (sb/RAISE/PNG below sb/): not a generator
        out.append(_finish(name, reals + fakes if fakes else [], True))
    return out


def cospy(root: str, real_root: Optional[str]) -> List[Subset]:
    """Co-Spy-Bench: fakes under [synthetic/]<caption set>/<org@model>/, one subset per caption set and
    model (`<caption set>/<org@model>`); the reals of a caption set are its own images, under
    <real root>/<caption set>/ (--real-root; default <root>/real when it exists). A caption set without
    reals is named in its subsets' notes and they report AP as undefined."""
    syn = os.path.join(root, "synthetic") if os.path.isdir(os.path.join(root, "synthetic")) else root
    if real_root is None and os.path.isdir(os.path.join(root, "real")):
        real_root = os.path.join(root, "real")
    out = []
    for cap in sorted(d for d in os.listdir(syn) if os.path.isdir(os.path.join(syn, d)) and
                      os.path.join(syn, d) != real_root):
        cap_dir = os.path.join(syn, cap)
        reals = _images(os.path.join(real_root, cap)) if real_root and os.path.isdir(os.path.join(real_root, cap)) else []
        for model in sorted(d for d in os.listdir(cap_dir) if os.path.isdir(os.path.join(cap_dir, d))):
            fakes = _images(os.path.join(cap_dir, model))
            note = "" if reals else f"no reals for caption set {cap!r} (expected under --real-root/{cap})"
            out.append(Subset(f"{cap}/{model}", [(p, 0) for p in reals] + [(p, 1) for p in fakes],
                              "ok" if fakes else "empty", note))
    if not out:
        raise MissingInput(f"--root: no <caption set>/<org@model>/ folders under {syn!r} (bench cospy)")
    return out


def _inside(path: str, folder_: str) -> bool:
    return path == folder_ or path.startswith(folder_ + os.sep)


def check_labels(subsets: List[Subset]) -> None:
    """Refuse an image that a layout would label both real and fake (a real folder nested inside a
    generator's, a CSV listing one file twice): its subsets' numbers would be meaningless."""
    seen: Dict[str, Tuple[int, str]] = {}
    folders: Dict[str, str] = {}  # realpath of each folder once (linked folders), not of every file
    for sub in subsets:
        for path, label in sub.items:
            d, base = os.path.split(os.path.abspath(path))
            if d not in folders:
                folders[d] = os.path.realpath(d)
            key = os.path.join(folders[d], base)
            old = seen.setdefault(key, (label, sub.name))
            if old[0] != label:
                raise InputError(f"{path} would be labelled both real and fake (subsets {old[1]!r} and "
                                 f"{sub.name!r}): the benchmark's real and fake folders overlap")


def chameleon(root: str) -> List[Subset]:
    folder_ = os.path.join(root, "test") if os.path.isdir(os.path.join(root, "test")) else root
    return [_finish("chameleon", _pair(folder_), _has_pair(folder_))]


CSV_LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1}


def csv_list(path: str) -> List[Subset]:
    """`path,label[,subset]` rows; relative paths against the CSV's folder. Every row is checked
    before anything is scored: a bad label or a missing column names the line."""
    import csv

    if not os.path.isfile(path):
        raise MissingInput(f"--root: {path!r} is not a CSV file (bench csv)")
    base = os.path.dirname(os.path.abspath(path))
    groups: Dict[str, List[Tuple[str, int]]] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if n == 1 and row[0].lower() in ("path", "file", "filename", "image"):
                continue  # header
            if len(row) < 2 or row[1].lower() not in CSV_LABELS:
                raise InputError(f"{path}:{n}: expected path,label[,subset] with label 0/1 or real/fake, got {row}")
            p = row[0] if os.path.isabs(row[0]) else os.path.join(base, row[0])
            groups.setdefault(row[2] if len(row) > 2 and row[2] else "all", []).append((p, CSV_LABELS[row[1].lower()]))
    if not groups:
        raise InputError(f"{path}: no rows")
    return [Subset(name, sorted(items, key=lambda t: t[1])) for name, items in groups.items()]


CSV_FIELDS = ("path", "label", "subset")


def parse_columns(spec: str) -> Dict[str, str]:
    """'path=filename,label=label,subset=source_id' -> {field: column}; path and label are required."""
    out: Dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        field_, eq, col = part.partition("=")
        if not eq or field_.strip() not in CSV_FIELDS or not col.strip():
            raise InputError(f"--columns: expected FIELD=COLUMN with FIELD in {', '.join(CSV_FIELDS)}, got {part!r}")
        out[field_.strip()] = col.strip()
    missing = [f for f in ("path", "label") if f not in out]
    if missing:
        raise InputError(f"--columns: {' and '.join(missing)} must be named (e.g. path=filename,label=label)")
    return out


def csv_columns(path: str, columns: Dict[str, str], image_root: Optional[str] = None,
                real_values: Sequence[str] = (), fake_values: Sequence[str] = ()) -> List[Subset]:
    """A CSV whose header names its columns: `columns` maps path / label / subset to column names (other
    columns are ignored). Labels: 0/1 and real/fake in any case, plus the given words; any other value,
    a missing column or an empty path stops the listing naming the line, before anything is scored."""
    import csv

    if not os.path.isfile(path):
        raise MissingInput(f"--root: {path!r} is not a CSV file (bench csv)")
    words = label_words(real_values, fake_values)
    base = image_root or os.path.dirname(os.path.abspath(path))
    if image_root and not os.path.isdir(image_root):
        raise MissingInput(f"--image-root: {image_root!r} is not a folder")
    rows: List[Tuple[str, int, str]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        absent = [c for c in columns.values() if c not in header]
        if absent:
            raise InputError(f"{path}: no column {', '.join(map(repr, absent))} (its header: {', '.join(header)})")
        for n, row in enumerate(reader, 2):
            rel = (row.get(columns["path"]) or "").strip()
            value = (row.get(columns["label"]) or "").strip()
            if not rel:
                raise InputError(f"{path}:{n}: empty {columns['path']!r}")
            if value.lower() not in words:
                raise InputError(f"{path}:{n}: label {value!r} in column {columns['label']!r} is neither real nor "
                                 "fake (0/1, real/fake; map other words with --real-values / --fake-values)")
            sub = (row.get(columns["subset"]) or "").strip() if "subset" in columns else ""
            p = rel if os.path.isabs(rel) else os.path.join(base, rel)
            rows.append((p, words[value.lower()], sub))
    if not rows:
        raise InputError(f"{path}: no rows")
    return group_labelled_rows(rows, columns.get("subset", "subset"))


def label_words(real_values: Sequence[str] = (), fake_values: Sequence[str] = ()) -> Dict[str, int]:
    """Label word (lower case) -> 0 real / 1 fake: 0/1 and real/fake, plus the given words; a word given
    as both is refused."""
    real = {v.strip().lower() for v in real_values}
    fake = {v.strip().lower() for v in fake_values}
    if real & fake:
        raise InputError(f"--real-values / --fake-values: {', '.join(sorted(real & fake))} given as both")
    return {**CSV_LABELS, **{v: 0 for v in real}, **{v: 1 for v in fake}}


def group_labelled_rows(rows: Sequence[Tuple[str, int, str]], subset_column: str) -> List[Subset]:
    """Subsets from (path, label, subset value) rows, in the order values first appear. Sets that name
    the generator of each fake leave the reals without one (ImagiNet) or under a value of their own
    (OpenFake's reals): when some subsets hold fakes only, the reals of the rows without a value and of
    the subsets holding reals only are pooled and join every fakes-only subset, as synthbuster's shared
    reals do (each such subset's note says so); fakes without a value form the subset "all"."""
    groups: Dict[str, List[Tuple[str, int]]] = {}
    for p, y, sub in rows:
        groups.setdefault(sub, []).append((p, y))
    blank = groups.pop("", [])
    if not groups:
        return [Subset("all", sorted(blank, key=lambda t: t[1]))]
    fakes_only = [k for k, v in groups.items() if all(y == 1 for _, y in v)]
    reals_only = [k for k, v in groups.items() if all(y == 0 for _, y in v)] if fakes_only else []
    reals = [it for it in blank if it[1] == 0] + [it for k in reals_only for it in groups.pop(k)]
    where = " and ".join(([f"the rows without a {subset_column!r} value"] if any(y == 0 for _, y in blank) else [])
                         + [f"{subset_column} {k!r}" for k in reals_only])
    out = []
    for name, items in groups.items():
        note = ""
        if reals and name in fakes_only:
            items = items + reals
            note = f"reals: the {len(reals)} of {where}"
        out.append(Subset(name, sorted(items, key=lambda t: t[1]), note=note))
    loose = [it for it in blank if it[1] == 1]
    if loose:
        out.append(Subset("all", loose, note=f"fakes without a {subset_column!r} value"))
    return out


def parquet_benchmark(root: str, preset: str = "parquet", image_column: Optional[str] = None,
                      label_column: Optional[str] = None, subset_column: Optional[str] = None,
                      real_values: Sequence[str] = (), fake_values: Sequence[str] = ()):
    """Subsets of a parquet set: rows grouped by the subset column (or one subset), labels 0/1 or
    real/fake in any case plus the given words; reals of rows without a subset value are every
    subset's reals when it has none of its own."""
    from .parquet import PRESETS, list_rows, parse_ref

    cols = dict(PRESETS[preset])
    cols.update({k: v for k, v in (("image", image_column), ("label", label_column), ("subset", subset_column))
                 if v})
    rows = list_rows(root, cols["image"], cols["label"], cols["subset"])
    if not rows:
        raise InputError(f"{root}: no rows")
    words = label_words(real_values, fake_values)
    labelled = []
    for ref, raw, sub in rows:
        key = str(raw).strip().lower() if not isinstance(raw, bool) else str(int(raw))
        if key not in words:
            f, g, r, _ = parse_ref(ref)
            raise InputError(f"{f}: row group {g}, row {r}: label {raw!r} in column {cols['label']!r} is neither "
                             "real nor fake (0/1, real/fake; map other words with --real-values / --fake-values)")
        labelled.append((ref, words[key], sub))
    return group_labelled_rows(labelled, cols["subset"] or "subset")


def add_bench_args(p) -> None:
    """The listing options every benchmark-reading command shares beside --bench/--root/--split/--subsets."""
    p.add_argument("--real-root", default=None,
                   help="synthbuster: the folder of real photos (RAISE); cospy: the folder of <caption set>/ reals; "
                        "ditfake: the MSCOCO reals of generators that hold fakes alone")
    p.add_argument("--columns", default=None,
                   help="bench csv: which header columns to read, e.g. path=filename,label=label,subset=source_id "
                        "(default: the columns path,label[,subset] in that order)")
    p.add_argument("--image-root", default=None,
                   help="bench csv: the folder relative paths are under (default: the CSV's folder)")
    p.add_argument("--real-values", nargs="*", default=[], help="bench csv and parquet sets: more label words meaning real")
    p.add_argument("--fake-values", nargs="*", default=[], help="bench csv and parquet sets: more label words meaning fake")
    p.add_argument("--image-column", default=None,
                   help="parquet sets: the column of image bytes (openfake: image, commfor: image_data)")
    p.add_argument("--label-column", default=None, help="parquet sets: the label column (default label)")
    p.add_argument("--subset-column", default=None,
                   help="parquet sets: the column that names the subset (openfake: model, commfor: model_name; "
                        "parquet: none)")


def bench_kwargs(args) -> Dict[str, object]:
    """load_benchmark's keyword arguments from add_bench_args' options."""
    return {"real_root": getattr(args, "real_root", None), "columns": getattr(args, "columns", None),
            "image_root": getattr(args, "image_root", None), "real_values": getattr(args, "real_values", None) or (),
            "fake_values": getattr(args, "fake_values", None) or (),
            **{k: getattr(args, k, None) for k in ("image_column", "label_column", "subset_column")}}


def load_benchmark(name: str, root: Optional[str] = None, split: Optional[str] = None,
                   subsets: Optional[List[str]] = None, real_root: Optional[str] = None,
                   columns: Optional[str] = None, image_root: Optional[str] = None,
                   real_values: Sequence[str] = (), fake_values: Sequence[str] = (),
                   image_column: Optional[str] = None, label_column: Optional[str] = None,
                   subset_column: Optional[str] = None) -> List[Subset]:
    """Discover a benchmark's subsets; `subsets` keeps only those names (in that order). `split`
    (genimage: train/val, default val; mini: train/test, default test; wildrf: train/val/test, default
    test; aigibench: test/jpeg/noise/sample, default test) is ignored by the other layouts."""
    if name not in BENCHES:
        raise InputError(f"--bench: unknown benchmark {name!r}; choose one of {', '.join(BENCHES)}")
    parquet_columns = {"image": image_column, "label": label_column, "subset": subset_column}
    if name != "csv" and (columns or image_root):
        raise InputError("--columns and --image-root read a CSV list: use --bench csv")
    if name not in ("csv", *PARQUET_BENCHES) and (real_values or fake_values):
        raise InputError("--real-values / --fake-values map the label words of a CSV or parquet set")
    if name not in PARQUET_BENCHES and any(parquet_columns.values()):
        raise InputError("--image-column, --label-column and --subset-column read a parquet set: use --bench parquet, "
                         "openfake or commfor")
    if name == "mini":
        from .minibench import ensure_minibench

        root = os.path.join(ensure_minibench(root), split if split in ("train", "test") else "test")
        found = folder(root)
    elif name in PARQUET_BENCHES:
        if not root:
            raise MissingInput(f"--root: give the parquet file(s) of {name} (a file, a folder or a glob pattern)")
        found = parquet_benchmark(root, name, image_column, label_column, subset_column, real_values, fake_values)
    elif name == "csv":
        if columns or image_root or real_values or fake_values:
            found = csv_columns(root or "", parse_columns(columns or "path=path,label=label"), image_root,
                                real_values, fake_values)
        else:
            found = csv_list(root or "")
    else:
        if not root or not os.path.isdir(root):
            raise MissingInput(f"--root: {root!r} is not a folder (benchmark {name})")
        readers = {"forensynths": forensynths, "selfsynth": selfsynth, "folder": folder, "ufd": ufd,
                   "chameleon": chameleon, "genimage": lambda r: genimage(r, split or "val"),
                   "wildrf": lambda r: wildrf(r, split or "test"),
                   "synthbuster": lambda r: synthbuster(r, real_root), "cospy": lambda r: cospy(r, real_root),
                   "aigibench": lambda r: aigibench(r, split or "test"), "holmes": holmes,
                   "ditfake": lambda r: ditfake(r, real_root)}
        found = readers[name](root)
    if subsets:
        by = {s.name: s for s in found}
        found = [by.get(n, Subset(n, [], "missing")) for n in subsets]
    check_labels(found)
    return found
