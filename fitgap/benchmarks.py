"""Evaluation benchmarks: subset discovery and labels (real = 0, fake = 1).

    forensynths  <gen>/[<class>/]{0_real,1_fake}        class folders pooled per generator
    selfsynth    {AttGAN,...,STGAN}/{0_real,1_fake}
    genimage     <gen>/[<inner>/]{train,val}/{ai,nature}  ai = fake; also {0_real,1_fake} in place of ai/nature
    folder       any tree of 0_real/1_fake pairs; the subset is the pair's parent folder
    mini         the embedded mini-benchmark (fitgap.minibench), the `folder` layout

A subset the benchmark expects but the root lacks, or that holds no image, is reported as missing or
empty, never silently dropped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .data import IMAGE_EXTENSIONS

SELFSYNTH = ["AttGAN", "BEGAN", "CramerGAN", "InfoMaxGAN", "MMDGAN", "RelGAN", "S3GAN", "SNGAN", "STGAN"]
FORENSYNTHS = ["progan", "stylegan", "stylegan2", "biggan", "cyclegan", "stargan", "gaugan", "deepfake"]
GENIMAGE = ["ADM", "BigGAN", "glide", "Midjourney", "stable_diffusion_v_1_4", "stable_diffusion_v_1_5",
            "VQDM", "wukong"]
BENCHES = ("forensynths", "selfsynth", "genimage", "folder", "mini")


@dataclass
class Subset:
    name: str
    items: List[Tuple[str, int]] = field(default_factory=list)  # (path, label)
    status: str = "ok"  # ok | missing | empty

    @property
    def counts(self) -> Dict[str, int]:
        fake = sum(label for _, label in self.items)
        return {"real": len(self.items) - fake, "fake": fake}


def _images(folder: str) -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


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


def selfsynth(root: str) -> List[Subset]:
    out = []
    for gen in _ordered_names(root, SELFSYNTH):
        folder = os.path.join(root, gen)
        out.append(_finish(gen, _pair(folder), os.path.isdir(folder) and _has_pair(folder)))
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
        raise FileNotFoundError(f"no 0_real/1_fake folders under {root!r}")
    return out


def load_benchmark(name: str, root: Optional[str] = None, split: str = "val",
                   subsets: Optional[List[str]] = None) -> List[Subset]:
    """Discover a benchmark's subsets; `subsets` keeps only those names (in that order)."""
    if name not in BENCHES:
        raise ValueError(f"--bench: unknown benchmark {name!r}; choose one of {', '.join(BENCHES)}")
    if name == "mini":
        from .minibench import ensure_minibench

        root = os.path.join(ensure_minibench(root), split if split in ("train", "test") else "test")
        found = folder(root)
    else:
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"--root: {root!r} is not a folder (benchmark {name})")
        found = {"forensynths": forensynths, "selfsynth": selfsynth, "folder": folder}.get(
            name, lambda r: genimage(r, split))(root)
    if subsets:
        by = {s.name: s for s in found}
        found = [by.get(n, Subset(n, [], "missing")) for n in subsets]
    return found
