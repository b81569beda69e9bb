"""Images for fine-tuning and evaluation: native-resolution crops, perturbations, labelled lists.

Test images are never resized by default (resizing writes the very trace the detector reads): one
centre crop at native resolution, or `tiles` (every non-overlapping crop that covers the image; the
last row/column of tiles is aligned to the border). Perturbations for robustness evaluation (JPEG,
Gaussian blur, resize) are applied identically to real and fake images, before cropping.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from .data import ImageError, decode_rgb, retry_stride
from .errors import InputError


RESIZE_KERNELS = ("nearest", "bilinear", "bicubic", "lanczos", "area")
# PIL's filters (antialiased when shrinking: the filter support grows with the scale)
_PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "lanczos": Image.LANCZOS}  # area: fitgap's own exact area averaging (area_average)
ANTIALIAS_CHOICE = ("bilinear", "bicubic")  # kernels with an antialias switch


def resize_array(a: np.ndarray, factor: float, kernel: str = "bilinear", antialias: bool = True) -> np.ndarray:
    """Resize uint8 HWC by `factor` (output side = round(side * factor), at least 1).

    antialias=True (and nearest, lanczos): PIL's convention, `Image.resize` with that filter.
    area: true area averaging (every output pixel is the mean of the input over its footprint, partly
    covered pixels weighted by the part covered), which is OpenCV's INTER_AREA when shrinking by any
    factor (PIL's BOX filter equals it only for integer factors). antialias=False (bilinear, bicubic
    only): the OpenCV INTER_LINEAR / INTER_CUBIC convention, i.e. torch `F.interpolate` with half-pixel
    centres, `antialias=False` (bicubic a = -0.75), rounded to the nearest integer."""
    h, w = a.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if kernel == "area":
        out = area_average(area_average(a.astype(np.float64), size[0], axis=1), size[1], axis=0)
        return np.ascontiguousarray(np.rint(out).clip(0, 255).astype(np.uint8))
    if antialias or kernel not in ANTIALIAS_CHOICE:
        return np.ascontiguousarray(np.asarray(Image.fromarray(a).resize(size, _PIL_FILTERS[kernel])))
    t = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float()  # a copy: PIL arrays are read-only
    t = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode=kernel, align_corners=False,
                                        antialias=False)
    return np.ascontiguousarray(t[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


def area_average(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area resampling of float `a` to `n_out` samples along `axis`: output i is the mean of the input
    (a step function, one step per pixel) over [i s, (i + 1) s), s = n_in / n_out, computed exactly
    from the running integral of the input (O(n), no weight matrix)."""
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    integral = np.concatenate([np.zeros((1,) + a.shape[1:]), np.cumsum(a, axis=0)])  # S(j), j = 0..n

    def S(x):  # the integral from 0 to x (0 <= x <= n) of the step function
        j = np.minimum(np.floor(x).astype(np.int64), n - 1)
        frac = (x - j).reshape((-1,) + (1,) * (a.ndim - 1))
        return integral[j] + frac * a[j]

    edges = np.arange(n_out + 1, dtype=np.float64) * (n / n_out)
    edges[-1] = n
    s = S(edges)
    out = (s[1:] - s[:-1]) / np.diff(edges).reshape((-1,) + (1,) * (a.ndim - 1))
    return np.moveaxis(out, 0, axis)


def encode_decode(a: np.ndarray, fmt: str, quality: Optional[int] = None) -> np.ndarray:
    """Save as PNG / JPEG / WEBP in memory (PIL's defaults; JPEG 4:2:0) and decode again."""
    buf = io.BytesIO()
    kw = {} if quality is None else {"quality": quality}
    Image.fromarray(a).save(buf, format=fmt, **kw)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def parse_reencode(spec: Optional[str]) -> Optional[Tuple[str, Optional[int]]]:
    """'png' | 'jpeg:Q' | 'webp:Q' -> (PIL format, quality)."""
    if spec is None:
        return None
    fmt, _, q = spec.lower().partition(":")
    try:
        if fmt == "png" and not q:
            return "PNG", None
        if fmt in ("jpeg", "jpg", "webp") and q and 1 <= int(q) <= 100:
            return ("JPEG" if fmt != "webp" else "WEBP"), int(q)
    except ValueError:
        pass
    raise InputError(f"--reencode: png, jpeg:Q or webp:Q with Q in 1..100, got {spec!r}")


@dataclass(frozen=True)
class Perturbation:
    """Applied to real and fake images alike, in this order: re-encoding of every image into one format
    (`reencode`), resize, Gaussian blur, JPEG, WebP."""
    jpeg: Optional[int] = None  # quality 1..100
    blur: Optional[float] = None  # Gaussian sigma in pixels
    resize: Optional[float] = None  # scale factor
    resize_kernel: str = "bilinear"
    antialias: Optional[bool] = None  # None: the kernel's default (PIL, antialiased)
    webp: Optional[int] = None  # quality 1..100
    reencode: Optional[str] = None  # png | jpeg:Q | webp:Q
    max_side: Optional[int] = None  # shrink (bilinear, antialiased) so the long side is at most this

    def check(self) -> None:
        if self.jpeg is not None and not 1 <= self.jpeg <= 100:
            raise InputError(f"--jpeg: quality must be in 1..100, got {self.jpeg}")
        if self.webp is not None and not 1 <= self.webp <= 100:
            raise InputError(f"--webp: quality must be in 1..100, got {self.webp}")
        if self.blur is not None and self.blur <= 0:
            raise InputError(f"--blur: sigma must be positive, got {self.blur}")
        if self.resize is not None and self.resize <= 0:
            raise InputError(f"--resize: factor must be positive, got {self.resize}")
        if self.max_side is not None and self.max_side < 1:
            raise InputError(f"max_side: must be >= 1 px, got {self.max_side}")
        if self.resize_kernel not in RESIZE_KERNELS:
            raise InputError(f"--resize-kernel: one of {', '.join(RESIZE_KERNELS)}, got {self.resize_kernel!r}")
        if self.antialias is False and self.resize_kernel not in ANTIALIAS_CHOICE:
            raise InputError(f"--antialias off: only {' and '.join(ANTIALIAS_CHOICE)} have the choice, "
                             f"not {self.resize_kernel}")
        parse_reencode(self.reencode)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.jpeg, self.blur, self.resize, self.webp, self.reencode,
                                           self.max_side))

    @property
    def kernel_name(self) -> str:
        """e.g. bilinear (antialiased, PIL), bilinear-noaa (OpenCV/torch convention)."""
        return self.resize_kernel + ("-noaa" if self.antialias is False else "")

    def describe(self) -> str:
        parts = [f"reencode-{self.reencode.replace(':', '')}" if self.reencode else "",
                 (f"resize{self.resize:g}" + ("" if self.kernel_name == "bilinear" else f"-{self.kernel_name}"))
                 if self.resize else "",
                 f"maxside{self.max_side}" if self.max_side else "",
                 f"blur{self.blur:g}" if self.blur else "", f"jpeg{self.jpeg}" if self.jpeg else "",
                 f"webp{self.webp}" if self.webp else ""]
        return "+".join(p for p in parts if p) or "none"

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if not self.active:
            return a
        enc = parse_reencode(self.reencode)
        if enc is not None:
            a = encode_decode(a, *enc)
        if self.resize is not None:
            a = resize_array(a, self.resize, self.resize_kernel, self.antialias is not False)
        if self.max_side is not None and max(a.shape[:2]) > self.max_side:
            a = resize_array(a, self.max_side / max(a.shape[:2]))
        if self.blur is not None:
            a = np.ascontiguousarray(np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius=self.blur))))
        if self.jpeg is not None:
            a = encode_decode(a, "JPEG", self.jpeg)
        if self.webp is not None:
            a = encode_decode(a, "WEBP", self.webp)
        return a


# Evaluation protocols that remove the format shortcut: a perturbation of the FAKE images only.
# jpeg96: Dual Data Alignment's evaluation of GenImage, ForenSynths and AIGCDetectBenchmark (their reals
# are JPEGs, their fakes PNGs): every fake re-encoded as JPEG at quality 96.
PROTOCOLS: Dict[str, Tuple[str, "Perturbation"]] = {}
# Robustness tiers, as deployed detectors report them: what a web upload and a hard re-share do, to both
# classes.
TIERS: Dict[str, Tuple[str, "Perturbation"]] = {}


def resized_shape(h: int, w: int, factor: float) -> Tuple[int, int]:
    """(height, width) after resize_array by `factor`."""
    return max(1, round(h * factor)), max(1, round(w * factor))


def center_box(h: int, w: int, size: int) -> Tuple[int, int, int, int]:
    """(y, x, height, width) of center_crop's window."""
    ch, cw = min(size, h), min(size, w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


JPEG_MCU = 16  # PIL's JPEGs are 4:2:0: 16x16-pixel MCUs
JPEG_MARGIN = 32  # pixels past the crop: whole MCUs on every side, so chroma upsampling sees real neighbours


def center_crop_of(p: "Perturbation", a: np.ndarray, size: int) -> np.ndarray:
    """center_crop(p(a), size), computing only the window the crop needs when p is an antialiased PIL
    resize alone or a JPEG re-encode alone (the resampling check of fitgap.detect), the whole image
    otherwise.

    JPEG: the window is the crop and at least 32 px around it, aligned to the 16-px MCU grid of the
    whole image, so every block and every chroma sample the crop decodes from is the one the whole
    image would give: identical bytes (tested). Resize: PIL's `box`, so the same filter at the same
    source positions; PIL takes the box in single precision, which moves fixed-point weights by their
    last bits: the crop differs from the whole image's by at most 3 grey levels, on about 4% of its
    pixels on average (tested). For the check this window IS the definition of the resized centre crop,
    the same in fitgap detect and fitgap serve."""
    only = {k for k, v in vars(p).items() if v is not None and k not in ("resize_kernel", "antialias")}
    h, w = a.shape[:2]
    if only == {"jpeg"}:
        y, x, ch, cw = center_box(h, w, size)
        y0, x0 = max(0, y - JPEG_MARGIN) // JPEG_MCU * JPEG_MCU, max(0, x - JPEG_MARGIN) // JPEG_MCU * JPEG_MCU
        y1, x1 = min(h, y + ch + JPEG_MARGIN), min(w, x + cw + JPEG_MARGIN)
        win = encode_decode(np.ascontiguousarray(a[y0:y1, x0:x1]), "JPEG", p.jpeg)
        return win[y - y0:y - y0 + ch, x - x0:x - x0 + cw]
    if only == {"resize"} and p.antialias is not False and p.resize_kernel in _PIL_FILTERS:
        H, W = resized_shape(h, w, p.resize)
        y, x, ch, cw = center_box(H, W, size)
        sy, sx = h / H, w / W
        box = (x * sx, y * sy, (x + cw) * sx, (y + ch) * sy)
        return np.ascontiguousarray(np.asarray(Image.fromarray(a).resize((cw, ch), _PIL_FILTERS[p.resize_kernel],
                                                                          box=box)))
    return center_crop(p(a), size)


def center_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return a[y:y + ch, x:x + cw]


def tile_boxes(h: int, w: int, size: int) -> List[Tuple[int, int, int, int]]:
    """(y, x, height, width) of the tiles of an h x w image: non-overlapping size x size boxes covering
    it, the last row and column aligned to the border; one centred box when a side is below `size`."""
    if h < size or w < size:
        ch, cw = min(size, h), min(size, w)
        return [((h - ch) // 2, (w - cw) // 2, ch, cw)]
    ys = list(range(0, h - size + 1, size))
    xs = list(range(0, w - size + 1, size))
    if ys[-1] + size < h:
        ys.append(h - size)
    if xs[-1] + size < w:
        xs.append(w - size)
    return [(y, x, size, size) for y in ys for x in xs]


def tiles(a: np.ndarray, size: int) -> List[np.ndarray]:
    """Non-overlapping size x size crops covering the image (the last ones aligned to the border)."""
    return [a[y:y + th, x:x + tw] for y, x, th, tw in tile_boxes(a.shape[0], a.shape[1], size)]


def to_tensor(a: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HWC -> normalised float CHW (mean/std on the 0..1 scale)."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # PIL-backed arrays are read-only
        a = a.copy()
    t = torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def stack_uint8(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HWC crops of one size -> uint8 [K, 3, h, w]. Crops stay uint8 until the model's chunk is
    normalised (fitgap.detector.score_logits): 4x less memory than float for every tile waiting."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops))).permute(0, 3, 1, 2)


def normalize_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [K, 3, h, w] -> float, the same arithmetic as to_tensor (bit-identical results)."""
    t = x.float().div_(255.0)
    m = torch.tensor(mean, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
    return (t - m) / s


def op_normalization(cfg: Dict[str, Any]):
    """mean/std on the 0..255 scale, as the op takes them."""
    return ([255.0 * m for m in cfg["normalize"]["mean"]], [255.0 * s for s in cfg["normalize"]["std"]])


PROTOCOLS["jpeg96"] = ("fakes re-encoded as JPEG q96, reals as they are (Dual Data Alignment)",
                       Perturbation(jpeg=96))
TIERS["web"] = ("long side <= 768 px, then JPEG q60", Perturbation(max_side=768, jpeg=60))
TIERS["hard"] = ("long side <= 512 px, then JPEG q40", Perturbation(max_side=512, jpeg=40))


class EvalDataset(Dataset):
    """(path, label) -> (uint8 crops [K, 3, h, w], label, index, error); unreadable files, and images
    smaller than `min_side` (the encoder's smallest input) on a side, give crops=None with the reason. The scorer normalises the crops, chunk by chunk (fitgap.detector.score_logits)."""

    def __init__(self, items: Sequence[Tuple[str, int]], crop: int, mode: str,
                 perturb: Perturbation = Perturbation(), min_side: int = 1,
                 fake_perturb: Optional[Perturbation] = None):
        if mode not in ("center", "tiles"):
            raise InputError(f"--crop: center or tiles, got {mode!r}")
        if crop < max(1, min_side):
            raise InputError(f"crop size {crop} px is smaller than the encoder's smallest input ({min_side} px)"
                             if crop >= 1 else f"crop size must be >= 1 px, got {crop}")
        self.items, self.crop, self.mode, self.perturb = items, crop, mode, perturb
        self.min_side = min_side  # images whose crop would be smaller are skipped (the encoder's minimum)
        self.fake_perturb = fake_perturb  # a protocol's perturbation of the fakes (label 1) alone, after perturb

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            a = self.perturb(decode_rgb(path))
            if label == 1 and self.fake_perturb is not None:
                a = self.fake_perturb(a)
        except ImageError as exc:
            return None, label, i, str(exc)
        if min(a.shape[:2]) < self.min_side:
            return None, label, i, f"too small for the encoder: {a.shape[1]}x{a.shape[0]} < {self.min_side} px"
        crops = [center_crop(a, self.crop)] if self.mode == "center" else tiles(a, self.crop)
        return stack_uint8(crops), label, i, ""


def collate_eval(items):
    return items  # variable sizes and counts: the caller groups them


class TrainCrops(Dataset):
    """Fine-tuning images: a random patch x patch crop at native resolution (no resize), optional
    horizontal flip, optional JPEG / blur augmentation. Images smaller than the patch, or unreadable,
    are replaced by the next one and counted."""

    def __init__(self, items: Sequence[Tuple[str, int]], patch: int, mean, std, flip: bool = True,
                 jpeg_prob: float = 0.0, jpeg_quality: Tuple[int, int] = (60, 95), blur_prob: float = 0.0,
                 blur_sigma: Tuple[float, float] = (0.1, 2.0), seed: int = 0):
        if not items:
            raise InputError("no training images")
        self.items, self.patch, self.mean, self.std = list(items), patch, mean, std
        self.flip, self.jpeg_prob, self.jpeg_quality = flip, jpeg_prob, jpeg_quality
        self.blur_prob, self.blur_sigma, self.seed = blur_prob, blur_sigma, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        skipped = []
        for k in range(min(16, len(self.items))):
            path, label = self.items[(i + k * retry_stride(len(self.items))) % len(self.items)]
            try:
                a = decode_rgb(path)
            except ImageError as exc:
                skipped.append((path, str(exc)))
                continue
            h, w = a.shape[:2]
            if h < self.patch or w < self.patch:
                skipped.append((path, f"too small: {w}x{h} < {self.patch}"))
                continue
            if rng.random() < self.blur_prob:
                a = Perturbation(blur=float(rng.uniform(*self.blur_sigma)))(a)
            if rng.random() < self.jpeg_prob:
                a = Perturbation(jpeg=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))(a)
            y, x = int(rng.integers(0, h - self.patch + 1)), int(rng.integers(0, w - self.patch + 1))
            a = a[y:y + self.patch, x:x + self.patch]
            if self.flip and rng.random() < 0.5:
                a = a[:, ::-1]
            return to_tensor(a, self.mean, self.std), label, skipped
        raise InputError(f"no usable training image near {self.items[i][0]!r}: {skipped[-3:]}")


def collate_train(items):
    x = torch.stack([a for a, _, _ in items])
    y = torch.tensor([b for _, b, _ in items], dtype=torch.float32)
    return x, y, [s for _, _, sk in items for s in sk]


@torch.no_grad()
def image_features(encoder, items, crop: int, mean, std, device, rescale: Optional[int] = None,
                   batch: int = 32) -> List[Optional[np.ndarray]]:
    """Features of the centre crop (crop x crop, native resolution) of each image; with `rescale`,
    of that crop resized (bilinear) to rescale x rescale. Unreadable or smaller images give None."""
    out: List[Optional[np.ndarray]] = [None] * len(items)
    pending: List[torch.Tensor] = []
    slots: List[int] = []

    def flush():
        if pending:
            f = encoder(torch.stack(pending).to(device)).float().cpu().numpy()
            for s, v in zip(slots, f):
                out[s] = v
            pending.clear()
            slots.clear()

    for k, (path, _) in enumerate(items):
        try:
            c = center_crop(decode_rgb(path), crop)
        except ImageError:
            continue
        if c.shape[0] != crop or c.shape[1] != crop:
            continue
        if rescale is not None:
            c = np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((rescale, rescale), Image.BILINEAR))
        pending.append(to_tensor(c, mean, std))
        slots.append(k)
        if len(pending) == batch:
            flush()
    flush()
    return out
