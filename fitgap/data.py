"""Image files -> RGB uint8 arrays -> planned windows packed into one buffer.

Decoding converts grey, grey+alpha, palette, RGBA, CMYK and 16-bit images to RGB uint8 (EXIF
orientation applied: a lossless transpose). Unreadable, truncated, empty or too-small images are
skipped and counted, never a crash and never a silent drop; PIL's decompression-bomb guard stays on.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from rescale_ext import pack_windows

from .index import PathIndex, build_index
from .plan import PlanSpec, make_plan
from .errors import InputError

class ImageError(Exception):
    """An image that cannot be used; str() is the reason."""


def retry_stride(n: int, base: int = 7919) -> int:
    """The step between the candidates tried in place of an unusable image: coprime with n, so the
    candidates of any start visit every image before one repeats (7919 itself retried the same few
    images of a dataset whose size is a multiple of it)."""
    import math

    s = base % n if n > 1 else 1
    s = s or 1
    while math.gcd(s, n) != 1:
        s += 1
    return s


def list_images(source: str) -> List[str]:
    """All image files under a folder (recursive, sorted), or the paths listed in a file (text: one a
    line, '#' comments; CSV; .npy), relative paths resolved against the file's folder."""
    return build_index(source).index.tolist()


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL image -> [H, W, 3] uint8 RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        if a.dtype != np.uint8:
            a = a.astype(np.int64)
            top = 65535 if mode.startswith("I;16") or a.max() > 255 else 255
            a = np.clip(a * 255 // top if top != 255 else a, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode != "RGB":
        img = img.convert("RGB")  # L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, 1
    a = np.asarray(img)
    if a.dtype != np.uint8:  # e.g. 48-bit RGB read by some plugins
        a = (a.astype(np.float64) / np.iinfo(a.dtype).max * 255).round().astype(np.uint8)
    return np.ascontiguousarray(a)


def _decode_jpeg_torchvision(data: bytes) -> Optional[np.ndarray]:
    """torchvision's libjpeg-turbo decode, EXIF orientation applied: the same pixels as Pillow's path
    (tests: 4:2:0/4:2:2/4:4:4, progressive, grey, CMYK, EXIF orientations) and 1.4x the images/s of a
    pre-training worker (benchmarks/bench_input.py). None when it fails: Pillow then decodes the file
    or names what is wrong with it. torchvision 0.29 marks its image decoders deprecated (TorchCodec
    takes them over); where they are gone, every JPEG goes through Pillow."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            t = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                            apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        return None
    return np.ascontiguousarray(t.permute(1, 2, 0).numpy())


PARQUET_SEP = "::row-group:"  # fitgap.parquet.SEP: "<file>::row-group:<g>:<row>:<column>" names an image in a parquet file


def decode_rgb(src: Union[str, bytes], jpeg: str = "torchvision") -> np.ndarray:
    """Decode an image file (a path, or its bytes as read from a shard) to [H, W, 3] uint8; raises
    ImageError with the reason. JPEGs go through torchvision (jpeg="pillow": through Pillow, the
    reference it is tested against); Pillow reads the header first either way, so its
    decompression-bomb guard applies to every file."""
    try:
        if isinstance(src, bytes):
            data = src
        elif PARQUET_SEP in src:  # an image stored in a parquet file (fitgap.parquet)
            from .parquet import read_ref

            data = read_ref(src)
        else:
            with open(src, "rb") as f:
                data = f.read()
        if not data:
            raise ImageError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format == "JPEG" and jpeg == "torchvision":
                    fast = _decode_jpeg_torchvision(data)
                    if fast is not None:
                        return fast
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb_uint8(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"too large (decompression-bomb guard): {exc}") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        raise ImageError(f"unreadable: {type(exc).__name__}: {exc}") from None


@dataclass
class Slot:
    """One image slot of a planned batch: what the loader must cut."""
    window: int  # side of the square source window
    seed: int  # window placement


def cut_window(img: np.ndarray, slot: Slot) -> Union[np.ndarray, str]:
    """The slot's square window of an image (placement drawn from slot.seed), or why there is none."""
    h, w = img.shape[:2]
    s = slot.window
    if h < s or w < s:
        return f"too small: {w}x{h} < {s}x{s} window"
    rng = np.random.default_rng(slot.seed)
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    return np.ascontiguousarray(img[y:y + s, x:x + s])


class WindowDataset(Dataset):
    """Item (index, Slot) -> (window uint8 [S, S, 3], skipped [(path, reason)]).

    An image that cannot give the window (unreadable, too small) is replaced by the next candidates
    in a fixed order, and reported as skipped."""

    def __init__(self, paths, max_tries: int = 16, cache_images: int = 0):
        if not len(paths):
            raise InputError("no images found")
        # flat storage: a forked worker reading paths does not copy them page by page (fitgap.index)
        self.paths = paths if isinstance(paths, PathIndex) else PathIndex.from_paths(list(paths))
        self.max_tries = max_tries
        self.cache_images = cache_images  # decoded images kept per worker (small datasets)
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def decode(self, path: str) -> np.ndarray:
        if not self.cache_images:
            return decode_rgb(path)
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        img = decode_rgb(path)
        self._cache[path] = img
        if len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return img

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: Tuple[int, Slot]):
        index, slot = item
        skipped = []
        n = len(self.paths)
        for k in range(min(self.max_tries, n)):
            path = self.paths[(index + k * retry_stride(n)) % n]
            try:
                img = self.decode(path)
            except ImageError as exc:
                skipped.append((path, str(exc)))
                continue
            window = cut_window(img, slot)
            if isinstance(window, str):
                skipped.append((path, window))
                continue
            return window, skipped
        raise InputError(f"no usable image among {min(self.max_tries, n)} candidates starting at "
                           f"{self.paths[index]!r}: {skipped[-3:]}")


def step_plan(spec: PlanSpec, seed: int, epoch: int, step: int, rank: int):
    """The plan of one rank's batch: deterministic in (seed, epoch, step, rank), whatever feeds it."""
    return make_plan(spec, np.random.default_rng([seed, epoch, step, rank]))


class PlanBatchSampler(Sampler):
    """Per rank: the DistributedSampler's shuffled indices, in chunks of spec.images, each with its
    batch plan. Deterministic in (seed, epoch, step, rank), so a resumed run sees the same batches.

    steps_per_epoch None: one pass over this rank's share; an int: cycle through it as needed
    (small datasets)."""

    def __init__(self, n_images: int, spec: PlanSpec, rank: int, world_size: int, seed: int,
                 steps_per_epoch: Optional[int] = None):
        self.spec = spec
        self.rank, self.seed = rank, seed
        self.n_images, self.world_size = n_images, world_size
        self.epoch = 0
        per_rank = math.ceil(n_images / world_size)
        if steps_per_epoch is None:
            steps_per_epoch = per_rank // spec.images
            if steps_per_epoch == 0:
                raise InputError(f"{n_images} images give no full batch of {spec.images} images per "
                                 f"rank x {world_size} ranks; set train.steps_per_epoch to cycle")
        self.steps = steps_per_epoch
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step

    def rank_order(self) -> np.ndarray:
        """This rank's shuffled share, the same indices as torch's DistributedSampler(shuffle=True,
        drop_last=False) gives, as one int64 array instead of a list of Python ints."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n_images, generator=g).numpy()
        total = math.ceil(self.n_images / self.world_size) * self.world_size
        return np.resize(order, total)[self.rank:total:self.world_size]

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[List[Tuple[int, Slot]]]:
        order = self.rank_order()
        need = self.steps * self.spec.images
        reps = math.ceil(need / len(order))
        stream = np.concatenate([order] + [order[np.random.default_rng([self.seed, self.epoch, r, 7])
                                                 .permutation(len(order))] for r in range(1, reps)])
        for step in range(self.start_step, self.steps):
            plan = step_plan(self.spec, self.seed, self.epoch, step, self.rank)
            chunk = stream[step * self.spec.images:(step + 1) * self.spec.images]
            yield [(int(idx), Slot(int(plan.windows[i]), int(plan.seeds[i])), plan if i == 0 else None)
                   for i, idx in enumerate(chunk)]


class PlannedWindows(Dataset):
    """Adapter: the batch sampler's (index, Slot, plan) items -> dataset items + the plan."""

    def __init__(self, base: WindowDataset):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, item):
        index, slot, plan = item
        window, skipped = self.base[(index, slot)]
        return window, skipped, plan


def collate_planned(items) -> Dict[str, object]:
    """Pack the windows of one planned batch into one uint8 buffer with its metadata."""
    windows = [w for w, _, _ in items]
    plan = items[0][2]
    skipped = [s for _, sk, _ in items for s in sk]
    pixels, offsets, sizes = pack_windows(windows)
    return {"pixels": pixels, "offsets": offsets, "sizes": sizes,
            "ratios": torch.from_numpy(plan.ratios), "corners": torch.from_numpy(plan.corners),
            "labels": torch.from_numpy(plan.labels), "ratio_index": torch.from_numpy(plan.ratio_index),
            "skipped": skipped}


def summarize_skipped(skipped: Sequence[Tuple[str, str]]) -> Dict[str, object]:
    reasons = Counter(r.split(":")[0] for _, r in skipped)
    files = sorted({p for p, _ in skipped})
    return {"count": len(skipped), "files": len(files), "reasons": dict(reasons),
            "examples": [f"{os.path.basename(p)}: {r}" for p, r in skipped[:5]]}
