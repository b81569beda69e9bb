"""Pre-training input from WebDataset tar shards: sequential reads instead of millions of small files.

Write shards from a folder (or any list `data.train` accepts); the original file bytes are stored as
they are (no re-encoding: the file's compression history is what the detector must not learn from, so
it must stay the same as in the folder):

    python -m fitgap.shards --src /data/imagenet/train --out /data/shards --size 1000

then train with `data.train=/data/shards/train-{000000..001280}.tar` (or `data.train=/data/shards/shards.json`,
which the command writes with the sample count of every shard).

Reading. Each rank runs `data.workers` loader workers; every (rank, worker) pair is one *unit*. Every
epoch the shard list is shuffled (seeded by seed and epoch) and dealt to the units in turn, so no two
units read the same shard. A unit reads its shards one after the other, in the order their samples were
written (the command writes a shuffled list), and builds the batches of the steps it owns (step s of
rank r: unit r * W + s mod W; the loader takes the workers' batches in turn). The plan of a step and the
window cut are the same functions as for a folder. Steps per epoch are the same on every rank: what the
unit with the fewest samples can fill. Shards are dealt by their sample counts (largest first, each to the
unit with the fewest samples so far), so a small last shard costs nothing; a layout whose readers still
get uneven shares (fewer shards than a few per reader) is reported in numbers at the start, and a reader
whose shards cannot fill a step cycles them.

Resume. The training loop records, per unit, how many samples it has consumed in the epoch; the
checkpoint holds it for every rank. A resumed run with the same number of ranks and workers restarts
every unit at its recorded sample: whole shards before it are skipped unopened, the rest of a shard is
read past without decoding, and the batches are the same as in an uninterrupted run (tested). With
another number of ranks or workers the units differ: the epoch's shards are dealt anew and each unit
skips the samples its steps would have used; the run continues, but which images it sees in the rest of
that epoch is not the same (it says so).
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .data import ImageError, Slot, collate_planned, cut_window, decode_rgb, step_plan
from .errors import InputError, MissingInput
from .index import IMAGE_EXTENSIONS, build_index
from .plan import PlanSpec

MANIFEST = "shards.json"
IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


def is_shard_source(source: str) -> bool:
    """A shard pattern ("x-{000000..000009}.tar", "x.tar") or a shards.json manifest."""
    s = str(source)
    return os.path.basename(s) == MANIFEST or bool(re.search(r"\.tar(\.gz)?$", s))


def expand_urls(source: str) -> List[str]:
    """A manifest's shards or the brace-expanded pattern (webdataset's expansion, "::" separated lists
    too)."""
    if os.path.basename(source) == MANIFEST:
        return [s.url for s in read_manifest(source)]
    from webdataset.shardlists import expand_urls as wds_expand

    return list(wds_expand(source))


def check_source(source: str) -> None:
    """Refuse a pattern whose shards do not all exist, naming the missing ones (before any work)."""
    from .errors import ConfigError

    if os.path.basename(source) == MANIFEST and not os.path.isfile(source):
        raise ConfigError(f"data.train: {source!r} does not exist")
    urls = expand_urls(source)
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise ConfigError(f"data.train: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[:3]}")


def read_manifest(path: str) -> List[Shard]:
    """The shards of a manifest, each checked against its tar file: a shard whose size on disk
    is the one recorded at writing keeps the count measured then; any other (an older manifest without
    sizes, a file rewritten since) is counted from its tar headers, and a count that differs from the
    manifest's is refused, naming the shard."""
    try:
        with open(path) as f:
            doc = json.load(f)
        base = os.path.dirname(os.path.abspath(path))
        rows = [(s["url"] if os.path.isabs(s["url"]) else os.path.join(base, s["url"]), int(s["samples"]),
                 s.get("bytes")) for s in doc["shards"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a shard manifest ({type(exc).__name__}: {exc})") from None
    for url, samples, size in rows:
        if not os.path.isfile(url):
            raise InputError(f"{path}: shard {url} does not exist")
        if size is not None and os.path.getsize(url) == int(size):
            continue
        counted = count_samples(url)
        if counted != samples:
            raise InputError(f"{path}: shard {os.path.basename(url)} holds {counted} samples, the manifest "
                             f"says {samples}: the manifest does not describe these files (write the shards "
                             "again, or train on the tar pattern, which is counted from the files)")
    return [Shard(url, samples) for url, samples, _ in rows]


def _image_members(tar: tarfile.TarFile) -> Iterator[Tuple[str, tarfile.TarInfo]]:
    """(sample key, member) of every image member, in stored order: what a sample position counts."""
    for m in tar:
        base, _, ext = os.path.basename(m.name).partition(".")
        if m.isfile() and ext.lower() in IMAGE_KEYS:
            yield os.path.join(os.path.dirname(m.name), base), m


def count_samples(url: str) -> int:
    """Samples (image members) in a tar shard, from the headers alone."""
    try:
        with tarfile.open(url) as tar:
            return sum(1 for _ in _image_members(tar))
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"{url}: not a readable tar shard ({exc})") from None


def shard_list(source: str) -> List[Shard]:
    """Every shard with its sample count: from the manifest (given, or shards.json beside the shards),
    else counted from the tar headers."""
    if os.path.basename(source) == MANIFEST:
        return read_manifest(source)
    urls = expand_urls(source)
    known: Dict[str, int] = {}
    manifest = os.path.join(os.path.dirname(os.path.abspath(urls[0])), MANIFEST) if urls else ""
    if manifest and os.path.isfile(manifest):  # counts the manifest measured, for the shards it verifies
        try:
            known = {os.path.abspath(s.url): s.samples for s in read_manifest(manifest)}
        except InputError:
            known = {}  # another set of shards beside it: count these from their headers
    return [Shard(u, known[os.path.abspath(u)] if os.path.abspath(u) in known else count_samples(u)) for u in urls]


def iter_samples(url: str, skip: int = 0) -> Iterator[Tuple[str, bytes]]:
    """(key, image bytes) of a shard in stored order; the first `skip` samples are passed over without
    reading their bytes."""
    try:
        with tarfile.open(url) as tar:  # random access: skipped members are seeked over, not read
            for i, (key, m) in enumerate(_image_members(tar)):
                if i >= skip:
                    yield key, tar.extractfile(m).read()
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"{url}: shard unreadable ({type(exc).__name__}: {exc})") from None


DEAL_VERSION = 2  # how shards are dealt to readers (stored with resume positions)


def deal(counts: Sequence[int], units: int, seed: int, epoch: int) -> List[np.ndarray]:
    """Shard indices of each unit this epoch, balanced by sample counts: a seeded shuffle, then the
    largest shards first, each to the unit with the fewest samples so far (shards of equal size trade
    places between epochs, units are relabelled by the seed). Empty shards are dealt to nobody. With
    fewer non-empty shards than units, unit u reads shard u mod n of the shuffled list (shards repeat)."""
    counts = np.asarray(counts, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 11])
    order = rng.permutation(len(counts))
    order = order[counts[order] > 0]
    labels = rng.permutation(units)
    if len(order) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(units)]
    if len(order) < units:
        return [order[[labels[u] % len(order)]] for u in range(units)]
    order = order[np.argsort(-counts[order], kind="stable")]
    totals = [(0, u) for u in range(units)]  # a heap of (samples dealt, unit)
    mine: List[List[int]] = [[] for _ in range(units)]
    for i in order:
        total, u = heapq.heappop(totals)
        mine[u].append(int(i))
        heapq.heappush(totals, (total + int(counts[i]), u))
    return [np.asarray(mine[labels[u]], dtype=np.int64) for u in range(units)]


@dataclass(frozen=True)
class EpochLayout:
    """What one epoch of shard reading gives: steps per rank, the samples of the unit dealt the fewest,
    how many samples an epoch reads of how many there are, and how often a reader repeats its shards."""
    steps: int
    fewest: int
    read: int
    total: int
    repeats: float

    def describe(self, units: int, images_per_step: int) -> str:
        """One line for the start of a run; says in numbers what an unbalanced layout costs."""
        share = self.read / max(1, self.total)
        line = f"an epoch reads {self.read} of {self.total} images ({100 * share:.1f}%)"
        if self.repeats > 1:
            line += (f"; the reader dealt the fewest shards holds {self.fewest} images, fewer than the "
                     f"{images_per_step} of its steps: its shards are cycled (read {self.repeats:.1f} times an epoch)")
        elif share < 0.99:
            line += (f": the {units} readers (ranks x data.workers) get uneven shards (the fewest {self.fewest} "
                     f"images); write smaller shards (--size) so every reader gets several")
        return line


def epoch_layout(shards: Sequence[Shard], units: int, workers: int, images_per_step: int) -> EpochLayout:
    """Steps every rank can make in any epoch. Each unit owns every W-th step of its rank; the unit
    dealt the fewest samples bounds them: floor(its samples / images per step) steps of its own (the
    deal's totals do not depend on the epoch). A unit whose shards cannot fill one step cycles them
    (webdataset's resampled shards), so any non-empty set of shards trains."""
    counts = [s.samples for s in shards]
    total = int(sum(counts))
    if total == 0:
        raise InputError(f"{len(shards)} shard(s) hold no image")
    dealt = deal(counts, units, 0, 0)
    if sum(1 for c in counts if c > 0) < units:
        fewest = min(c for c in counts if c > 0)  # any unit may be given the smallest shard
    else:
        fewest = int(min(sum(counts[i] for i in d) for d in dealt))
    own = max(1, fewest // images_per_step)
    steps = workers * own
    read = min(total, units * own * images_per_step)
    return EpochLayout(steps, fewest, read, total, own * images_per_step / fewest)


def steps_per_epoch(shards: Sequence[Shard], units: int, workers: int, images_per_step: int) -> int:
    return epoch_layout(shards, units, workers, images_per_step).steps


class ShardWindows(IterableDataset):
    """Batches (as collate_planned packs them) of one rank, read from shards; see the module text.
    Each batch also carries "unit", "consumed" (the unit's samples consumed in this epoch so far) and
    "keys" ("<shard file>:<sample key>" of each window)."""

    def __init__(self, shards: Sequence[Shard], spec: PlanSpec, rank: int, world_size: int, seed: int,
                 workers: int, max_tries: int = 16):
        self.shards = list(shards)
        self.spec, self.rank, self.world_size, self.seed = spec, rank, world_size, seed
        self.workers = max(1, workers)
        self.units = self.world_size * self.workers
        self.max_tries = max_tries
        self.layout = epoch_layout(self.shards, self.units, self.workers, spec.images)
        self.steps = self.layout.steps
        self.epoch, self.start_step = 0, 0
        self.consumed: Dict[int, int] = {}

    def set_epoch(self, epoch: int, start_step: int = 0, consumed: Optional[Dict[int, int]] = None) -> None:
        self.epoch, self.start_step = epoch, start_step
        self.consumed = {int(k): int(v) for k, v in (consumed or {}).items()}

    def __len__(self) -> int:
        return self.steps - self.start_step

    def _stream(self, unit: int, position: int) -> Iterator[Tuple[str, bytes]]:
        """The unit's samples from `position` on. Past its last shard it starts again at its first
        (shards too small for a step are cycled; otherwise only unusable samples can make a unit need
        more than its share, and those few are read twice)."""
        dealt = deal([s.samples for s in self.shards], self.units, self.seed, self.epoch)[unit]
        mine = [self.shards[i] for i in dealt]
        total = sum(s.samples for s in mine)
        position %= total
        while True:
            for shard in mine:
                if position >= shard.samples:  # a whole shard before the resume point: not opened
                    position -= shard.samples
                    continue
                for key, data in iter_samples(shard.url, position):
                    yield f"{os.path.basename(shard.url)}:{key}", data
                position = 0

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers != self.workers:
            raise InputError(f"ShardWindows was set up for {self.workers} workers, the loader has {n_workers}")
        first = self.start_step + worker
        if first >= self.steps:
            return
        local = first % self.workers  # the unit whose steps this loader worker builds
        unit = self.rank * self.workers + local
        position = self.consumed.get(unit, (first // self.workers) * self.spec.images)
        stream = self._stream(unit, position)
        for step in range(first, self.steps, self.workers):
            plan = step_plan(self.spec, self.seed, self.epoch, step, self.rank)
            items, keys = [], []
            for j in range(len(plan.windows)):
                slot = Slot(int(plan.windows[j]), int(plan.seeds[j]))
                skipped = []
                while True:
                    key, data = next(stream)
                    position += 1
                    try:
                        window = cut_window(decode_rgb(data), slot)
                    except ImageError as exc:
                        window = str(exc)
                    if not isinstance(window, str):
                        break
                    skipped.append((key, window))
                    if len(skipped) >= self.max_tries:
                        raise InputError(f"{len(skipped)} unusable samples in a row for reader {unit} "
                                         f"(rank {self.rank}): {skipped[-3:]}")
                items.append((window, skipped, plan if j == 0 else None))
                keys.append(key)
            batch = collate_planned(items)
            batch["unit"], batch["consumed"], batch["keys"] = unit, position, keys
            yield batch


def write_shards(src: str, out: str, size: int, seed: int = 0, prefix: str = "train",
                 progress: bool = True, max_bytes: float = 3e9) -> Dict[str, Any]:
    """Every image of `src` (a folder or list) into tar shards of at most `size` samples and about
    `max_bytes` bytes (webdataset's ShardWriter starts a new shard at either), in a seeded shuffled
    order, bytes unchanged; writes out/shards.json last (atomically) with each shard's sample count as
    written and its size on disk."""
    import webdataset as wds
    from .progress import progress as bar

    from .files import atomic_write_text

    if size < 1:
        raise InputError(f"--size must be >= 1, got {size}")
    if not max_bytes > 0:
        raise InputError(f"--max-bytes must be > 0, got {max_bytes}")
    listing = build_index(src)
    paths = listing.index
    if not len(paths):
        raise MissingInput(f"no images under {src!r}")
    order = np.random.default_rng(seed).permutation(len(paths))
    os.makedirs(out, exist_ok=True)
    existing = [n for n in os.listdir(out) if re.fullmatch(re.escape(prefix) + r"-\d{6}\.tar", n) or n == MANIFEST]
    if existing:
        raise InputError(f"{out} already holds shards ({sorted(existing)[:3]}...): choose another --out or "
                         "--prefix, or remove them")
    pattern = os.path.join(out, f"{prefix}-%06d.tar")
    skipped = []
    written: Dict[str, int] = {}  # shard file -> samples written into it
    with wds.ShardWriter(pattern, maxcount=size, maxsize=max_bytes, verbose=0) as sink:
        for n, i in enumerate(bar(order, desc="shards", disable=not progress, unit="img")):
            path = paths[int(i)]
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                skipped.append(f"{path}: {exc}")
                continue
            if not data:
                skipped.append(f"{path}: empty file")
                continue
            sink.write({"__key__": f"{n:09d}", ext: data,
                        "path.txt": os.path.relpath(path, listing.info.source) if listing.info.kind == "folder" else path})
            name = os.path.basename(sink.fname)
            written[name] = written.get(name, 0) + 1
    if not written:
        raise MissingInput(f"no readable image under {src!r} (skipped {len(skipped)}: {skipped[:3]})")
    shards = [{"url": name, "samples": n, "bytes": os.path.getsize(os.path.join(out, name))}
              for name, n in sorted(written.items())]
    manifest = {"source": listing.info.source, "seed": seed, "size": size, "images": sum(s["samples"] for s in shards),
                "skipped": skipped, "shards": shards}
    atomic_write_text(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1))
    first, last = shards[0]["url"], shards[-1]["url"]
    manifest["pattern"] = os.path.join(out, f"{prefix}-{{{first[len(prefix) + 1:-4]}..{last[len(prefix) + 1:-4]}}}.tar")
    return manifest


def main(argv=None) -> Dict[str, Any]:
    from .cli import run_main

    p = argparse.ArgumentParser(description="Write WebDataset tar shards of the images of a folder or list "
                                            "(file bytes unchanged) for data.train.")
    p.add_argument("--src", required=True, help="folder of images, or a text/CSV/npy list")
    p.add_argument("--out", required=True, help="folder for <prefix>-000000.tar ... and shards.json")
    p.add_argument("--size", type=int, default=1000, help="samples per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    p.add_argument("--max-bytes", type=float, default=3e9,
                   help="a new shard also starts past this many bytes (default 3e9, webdataset's)")
    p.add_argument("--prefix", default="train")
    args = p.parse_args(argv)

    def go():
        m = write_shards(args.src, args.out, args.size, args.seed, args.prefix, max_bytes=args.max_bytes)
        print(f"{m['images']} images in {len(m['shards'])} shards under {args.out}"
              + (f"; {len(m['skipped'])} files skipped, e.g. {m['skipped'][:3]}" if m["skipped"] else ""))
        print(f"train with: data.train={m['pattern']}   (or data.train={os.path.join(args.out, MANIFEST)})")
        return m

    return run_main(go)


if __name__ == "__main__":
    main()
