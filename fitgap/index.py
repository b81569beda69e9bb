"""The list of training images, built once per run and held in flat memory.

A `PathIndex` keeps every path in one numpy byte buffer plus an offsets array: two Python objects
whatever the number of files. A forked DataLoader worker that reads a path touches no reference
count of a per-path object, so its pages stay shared with the parent (a list of str is copied page by
page into every worker as the workers touch it).

Sources (`data.train`, or `data.index` for a list a user made): a folder (walked recursively, sorted),
a text file (one path a line, '#' comments), a CSV file (a `path` column, or the first column), or a
.npy array of paths. Relative paths in a file are relative to the file's folder.

Rank 0 builds the index and writes `index.npz` into the run folder; every other rank (on any node)
receives it by broadcast instead of walking the tree. A resumed run reuses the saved index, so the
order of its batches does not change; if the source changed meanwhile (count, or the cheap fingerprint:
the mtime of every directory walked, or the bytes of a list file) it says so.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError, MissingInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
INDEX_FILE = "index.npz"


class PathIndex:
    """Paths as one uint8 buffer + int64 offsets; index -> str on access."""

    __slots__ = ("buf", "offsets")

    def __init__(self, buf: np.ndarray, offsets: np.ndarray):
        if buf.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) < 1:
            raise InputError("PathIndex: needs a uint8 buffer and int64 offsets (n + 1 entries)")
        if offsets[0] != 0 or offsets[-1] != len(buf) or np.any(np.diff(offsets) < 0):
            raise InputError("PathIndex: offsets do not describe the buffer")
        self.buf, self.offsets = buf, offsets

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> "PathIndex":
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(buf, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"path index {i} out of range for {n} paths")
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.buf[a:b].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def tolist(self) -> List[str]:
        return list(self)

    @property
    def nbytes(self) -> int:
        return int(self.buf.nbytes + self.offsets.nbytes)


@dataclass
class IndexInfo:
    source: str  # absolute path of the folder or list file
    kind: str  # folder | text | csv | npy
    count: int
    fingerprint: str
    built_s: float  # seconds the listing took

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def _walk(folder: str) -> Tuple[List[str], List[str]]:
    """Image files under `folder` (recursive, symlinks followed; names sorted within a folder, a
    folder's files before its sub-folders) and every directory walked."""
    files: List[str] = []
    dirs: List[str] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise MissingInput(f"cannot list {d!r}: {exc}") from None
        dirs.append(d)
        sub = []
        for e in entries:
            if e.is_dir(follow_symlinks=True):
                sub.append(e.path)
            elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(e.path)
        stack.extend(reversed(sub))  # depth first: a folder's files, then its sub-folders (os.walk's order)
    return files, dirs


def walk_images(folder: str) -> List[str]:
    """The image files under `folder` in the index's order ([] when it is not a folder)."""
    return _walk(folder)[0] if os.path.isdir(folder) else []


def _dirs_fingerprint(dirs: PathIndex) -> str:
    """Hash of every walked directory's mtime: creating, removing or renaming an entry in a directory
    changes its mtime, so this sees added and removed images (and new sub-folders) with one stat per
    directory instead of a new walk (ImageNet train: 1,001 stats instead of listing 1.28M names)."""
    h = hashlib.sha1()
    for d in dirs:
        try:
            mtime = os.stat(d).st_mtime_ns
        except OSError:
            mtime = -1
        h.update(f"{d}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _file_fingerprint(path: str) -> str:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return "missing"
    return h.hexdigest()


def _read_list_file(path: str, root: Optional[str]) -> Tuple[List[str], str]:
    """Paths listed in a .npy / .csv / text file; relative ones are joined to `root` (default: the
    file's folder)."""
    base = root or os.path.dirname(os.path.abspath(path))
    low = path.lower()
    if low.endswith(tuple(IMAGE_EXTENSIONS)):
        raise InputError(f"{path} is an image: give the folder that holds it, or a list file of image paths "
                         "(text, CSV or .npy)")
    try:
        return _read_list_lines(path, low, base)
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a list of image paths (not UTF-8 text): give a folder, or a text, "
                         "CSV or .npy list") from None


def _read_list_lines(path: str, low: str, base: str) -> Tuple[List[str], str]:
    if low.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{path}: not a .npy array of paths ({exc})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "US":
            raise InputError(f"{path}: a 1-D array of str or bytes paths is needed, got "
                             f"{arr.dtype} with shape {arr.shape}")
        paths = [p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else str(p) for p in arr.tolist()]
        kind = "npy"
    elif low.endswith(".csv"):
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        header = [c.strip().lower() for c in rows[0]] if rows else []
        col = header.index("path") if "path" in header else 0
        if "path" in header:
            rows = rows[1:]
        paths = [r[col].strip() for r in rows if len(r) > col and r[col].strip()]
        kind = "csv"
    else:
        with open(path) as f:
            paths = [ln.strip() for ln in f]
        paths = [p for p in paths if p and not p.startswith("#")]
        kind = "text"
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in paths], kind


@dataclass
class Listing:
    """What rank 0 knows about the source: the paths, and what tells a later run whether it changed."""
    index: PathIndex
    info: IndexInfo
    dirs: PathIndex  # folder sources: every directory walked (empty for list files)


def fingerprint(kind: str, source: str, dirs: PathIndex) -> str:
    return _dirs_fingerprint(dirs) if kind == "folder" else _file_fingerprint(source)


def build_index(source: str, root: Optional[str] = None) -> Listing:
    """List `source` (a folder, or a text/CSV/npy list whose relative paths join `root`)."""
    t0 = time.perf_counter()
    src = os.path.abspath(source)
    if os.path.isdir(src):
        files, dirs = _walk(src)
        kind, dir_index = "folder", PathIndex.from_paths(dirs)
    elif os.path.isfile(src):
        files, kind = _read_list_file(src, root)
        dir_index = PathIndex.from_paths([])
    else:
        raise MissingInput(f"image source {source!r} is neither a folder nor a file list")
    index = PathIndex.from_paths(files)
    info = IndexInfo(src, kind, len(index), fingerprint(kind, src, dir_index), time.perf_counter() - t0)
    return Listing(index, info, dir_index)


def save_index(path: str, listing: Listing) -> None:
    """Atomic write of the listing (.npz: paths, walked directories, info)."""
    from .files import atomic_write

    atomic_write(path, lambda f: np.savez(f, buf=listing.index.buf, offsets=listing.index.offsets,
                                     dir_buf=listing.dirs.buf, dir_offsets=listing.dirs.offsets,
                                     info=np.array(listing.info.to_json())))


def load_index(path: str) -> Listing:
    try:
        with np.load(path, allow_pickle=False) as z:
            index = PathIndex(z["buf"].astype(np.uint8, copy=False), z["offsets"].astype(np.int64, copy=False))
            dirs = PathIndex(z["dir_buf"].astype(np.uint8, copy=False),
                             z["dir_offsets"].astype(np.int64, copy=False))
            info = IndexInfo(**json.loads(str(z["info"])))
    except (OSError, ValueError, KeyError, TypeError, InputError) as exc:
        raise InputError(f"{path}: not a readable image index ({type(exc).__name__}: {exc}); delete it "
                         "to list the images again") from None
    return Listing(index, info, dirs)


def index_for_run(source: str, run_dir: Optional[str], resuming: bool, root: Optional[str] = None,
                  say=print) -> PathIndex:
    """Rank 0's side. A saved `run_dir/index.npz` is reused when resuming (the batches of a resumed
    run depend on it; a change of the source is reported, not applied) and when the source is the same
    and unchanged (count and fingerprint); otherwise the source is listed and the index saved."""
    saved = os.path.join(run_dir, INDEX_FILE) if run_dir else None
    src = os.path.abspath(source)
    if saved and os.path.isfile(saved):
        old = load_index(saved)
        info = old.info
        if resuming and info.source != src:
            say(f"warning: data.train is now {src}, this run was started on {info.source}; the resumed run "
                f"keeps the saved list of {info.count} images ({saved}) so that its batches stay the same")
            return old.index
        if info.source == src:
            fp = fingerprint(info.kind, info.source, old.dirs)
            if fp == info.fingerprint:
                say(f"image index: {info.count} paths from {saved} (source unchanged)")
                return old.index
            change = f"{info.source} changed since {saved} was built ({info.count} images then)"
            if resuming:
                say(f"warning: {change}; this resumed run keeps the saved list so that its batches stay "
                    f"the same. Delete {saved} and start a new run to use the new files.")
                return old.index
            say(f"image index: {change}: listing it again")
    listing = build_index(source, root)
    if saved:
        save_index(saved, listing)
    say(f"image index: {listing.info.count} paths listed from {listing.info.source} in "
        f"{listing.info.built_s:.1f} s" + (f" -> {saved}" if saved else ""))
    return listing.index


def broadcast_index(index: Optional[PathIndex], device) -> PathIndex:
    """Rank 0's index to every rank (two tensor broadcasts; no rank walks the tree)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        assert index is not None
        return index
    rank = dist.get_rank()
    sizes = torch.zeros(2, dtype=torch.int64, device=device)
    if rank == 0:
        sizes[0], sizes[1] = len(index.buf), len(index.offsets)
    dist.broadcast(sizes, 0)
    nbuf, noff = int(sizes[0]), int(sizes[1])
    if rank == 0:
        buf = torch.from_numpy(index.buf).to(device)
        off = torch.from_numpy(index.offsets).to(device)
    else:
        buf = torch.empty(nbuf, dtype=torch.uint8, device=device)
        off = torch.empty(noff, dtype=torch.int64, device=device)
    dist.broadcast(buf, 0)
    dist.broadcast(off, 0)
    if rank == 0:
        return index
    return PathIndex(buf.cpu().numpy().copy(), off.cpu().numpy().copy())
