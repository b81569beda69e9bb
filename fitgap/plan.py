"""The batch plan of rescaling-contrastive pre-training (CPU, integers only).

For one rank and one step the plan chooses, for every image slot: a ratio p/q, a square source
window of S x S pixels to cut from the image, the phases (y0 mod q, x0 mod q) it carries and the
patch corners in the window's destination image, with the SupCon label of every patch:

    label(patch) = (ratio index, y0 mod q, x0 mod q)

Images come in groups of `images_per_ratio` that share a ratio AND their phases, so every class
has cross-image positives; each image carries `phases_per_image` phases (same-image hard
negatives) with `patches_per_phase` patches each at offsets that are multiples of q (same-image
positives). Every patch lies on destination rows/columns whose source taps are not clamped, so it
sees only the periodic pattern.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import List

import numpy as np

from rescale_ext.reference import dst_length

from .config import ConfigError


@dataclass(frozen=True)
class PlanSpec:
    ratios: List[Fraction]
    patch: int
    images: int  # image slots per rank per step
    images_per_ratio: int = 2
    phases_per_image: int = 2
    patches_per_phase: int = 2
    grid: int = 2  # periodic positions per axis: offsets 0, q, ..., (grid - 1) q

    @property
    def patches_per_image(self) -> int:
        return self.phases_per_image * self.patches_per_phase

    @property
    def qmax(self) -> int:
        return max(r.denominator for r in self.ratios)

    @property
    def num_classes(self) -> int:
        return len(self.ratios) * self.qmax * self.qmax

    def check(self, prefix: str = "plan") -> None:
        def need(cond, key, msg):
            if not cond:
                raise ConfigError(f"{prefix}.{key}: {msg}")

        need(self.patch >= 1, "patch", f"must be >= 1, got {self.patch}")
        need(self.images_per_ratio >= 2, "images_per_ratio",
             f"must be >= 2 so that every ratio appears in two images, got {self.images_per_ratio}")
        need(self.phases_per_image >= 2, "phases_per_image",
             f"must be >= 2 (same-image hard negatives), got {self.phases_per_image}")
        need(self.patches_per_phase >= 1, "patches_per_phase", f"must be >= 1, got {self.patches_per_phase}")
        need(self.grid >= 1, "grid", f"must be >= 1, got {self.grid}")
        need(self.images % self.images_per_ratio == 0 and self.images > 0, "images_per_ratio",
             f"{self.images} images per rank and step are not a multiple of {self.images_per_ratio}")
        qmin = min(r.denominator for r in self.ratios)
        need(self.phases_per_image <= qmin * qmin, "phases_per_image",
             f"{self.phases_per_image} phases do not exist for a ratio with q = {qmin} "
             f"({qmin * qmin} phases)")
        need(self.patches_per_phase <= self.grid * self.grid, "patches_per_phase",
             f"{self.patches_per_phase} periodic positions per phase need grid >= "
             f"{int(np.ceil(np.sqrt(self.patches_per_phase)))}")


def first_clean(p: int, q: int) -> int:
    """First destination index whose source coordinate is not clamped below (0 when shrinking)."""
    x = 0
    while (2 * x + 1) * p < q:
        x += 1
    return x


def source_extent(dst_extent: int, p: int, q: int) -> int:
    """Smallest source length whose destination covers `dst_extent` pixels with the upper tap of the
    last one unclamped."""
    num = (2 * (dst_extent - 1) + 1) * p - q
    n = max(num, 0) // (2 * q) + 2
    while dst_length(n, p, q) < dst_extent:
        n += 1
    return n


def layout(spec: PlanSpec, ratio: Fraction):
    """(base, window side S) for one ratio: corners are base + phase + q * j."""
    p, q = ratio.numerator, ratio.denominator
    base = q * -(-first_clean(p, q) // q)
    dst_extent = base + (q - 1) + q * (spec.grid - 1) + spec.patch
    return base, source_extent(dst_extent, p, q)


def max_window(spec: PlanSpec) -> int:
    return max(layout(spec, r)[1] for r in spec.ratios)


@dataclass
class Plan:
    ratio_index: np.ndarray  # [I]
    ratios: np.ndarray  # [I, 2] (p, q)
    windows: np.ndarray  # [I] side S of the square source window
    corners: np.ndarray  # [N, 3] (image slot, y0, x0) in destination pixels
    labels: np.ndarray  # [N]
    seeds: np.ndarray  # [I] seed of the window placement


def make_plan(spec: PlanSpec, rng: np.random.Generator) -> Plan:
    groups = spec.images // spec.images_per_ratio
    nr = len(spec.ratios)
    chosen = rng.choice(nr, size=groups, replace=groups > nr)
    ratio_index, ratios, windows, corners, labels = [], [], [], [], []
    qmax = spec.qmax
    cells = np.array([(jy, jx) for jy in range(spec.grid) for jx in range(spec.grid)])
    slot = 0
    for g in range(groups):
        ri = int(chosen[g])
        r = spec.ratios[ri]
        p, q = r.numerator, r.denominator
        base, side = layout(spec, r)
        phases = rng.choice(q * q, size=spec.phases_per_image, replace=False)
        for _ in range(spec.images_per_ratio):
            ratio_index.append(ri)
            ratios.append((p, q))
            windows.append(side)
            for ph in phases:
                py, px = divmod(int(ph), q)
                for jy, jx in cells[rng.choice(len(cells), size=spec.patches_per_phase, replace=False)]:
                    corners.append((slot, base + py + q * int(jy), base + px + q * int(jx)))
                    labels.append(ri * qmax * qmax + py * qmax + px)
            slot += 1
    return Plan(np.array(ratio_index, dtype=np.int64), np.array(ratios, dtype=np.int64),
                np.array(windows, dtype=np.int64), np.array(corners, dtype=np.int64),
                np.array(labels, dtype=np.int64),
                rng.integers(0, 2**62, size=spec.images, dtype=np.int64))
