"""Benchmarks shipped as parquet files (OpenFake, Community Forensics-Eval, any set of image bytes in a
column), read with pyarrow one row group at a time.

An image in a parquet file is named by a reference `<file>::row-group:<g>:<row>:<image column>` (so a
rank or worker that did not list the set can read it); `fitgap.data.decode_rgb`
and the audit's header read take such a reference wherever they take a path, so evaluation, the audit,
robustness and calibration read these sets exactly as they read files (the same decoder, the same
decompression-bomb guard, the same counting of unreadable images). Listing reads the label and subset
columns only; scoring reads one row group's image column when its first image is asked for and keeps
it until another row group is needed (a small per-process cache), so memory follows the row group,
not the file: a 200 GB set is never loaded whole. Items are listed in file and row-group order, which
is the order the evaluation loaders read them in. (The listing and grouping into subsets: fitgap.benchmarks.)
"""
from __future__ import annotations

import glob
import os
import threading
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from .errors import InputError, MissingInput

SEP = "::row-group:"
# column names of the sets this reader knows (a `--*-column` option overrides any of them)
PRESETS: Dict[str, Dict[str, Optional[str]]] = {
    # OpenFake (configs core / reddit): image bytes, label "real"/"fake", the generator in `model`
    "openfake": {"image": "image", "label": "label", "subset": "model"},
    # Community Forensics-Eval: image_data bytes, label 1 fake / 0 real; subsets by model_name (or
    # architecture, or subset)
    "commfor": {"image": "image_data", "label": "label", "subset": "model_name"},
    "parquet": {"image": "image", "label": "label", "subset": None},
}


def make_ref(path: str, group: int, row: int, column: str) -> str:
    return f"{path}{SEP}{group}:{row}:{column}"


def parse_ref(ref: str) -> Optional[Tuple[str, int, int, str]]:
    """(file, row group, row within it, image column) of a reference, or None for an ordinary path."""
    if SEP not in ref:
        return None
    path, _, pos = ref.rpartition(SEP)
    parts = pos.split(":", 2)
    try:
        return path, int(parts[0]), int(parts[1]), parts[2]
    except (ValueError, IndexError):
        return None


def parquet_files(root: str) -> List[str]:
    """A .parquet file, a folder searched recursively, or a glob pattern (sorted)."""
    if os.path.isfile(root):
        return [root]
    if os.path.isdir(root):
        found = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
    else:
        found = sorted(glob.glob(root, recursive=True))
    if not found:
        raise MissingInput(f"--root: no .parquet file at {root!r} (a file, a folder or a glob pattern)")
    return found


def _schema_names(pf) -> List[str]:
    return list(pf.schema_arrow.names)


def list_rows(root: str, image_column: str, label_column: str, subset_column: Optional[str]
              ) -> List[Tuple[str, object, str]]:
    """(reference, raw label, subset value) of every row, reading the label and subset columns only,
    one row group at a time."""
    import pyarrow.parquet as pq

    rows = []
    for f in parquet_files(root):
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a file that is not parquet
            raise InputError(f"{f}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
        names = _schema_names(pf)
        wanted = [c for c in (image_column, label_column, subset_column) if c]
        absent = [c for c in wanted if c not in names]
        if absent:
            raise InputError(f"{f}: no column {', '.join(map(repr, absent))} (its columns: {', '.join(names)}; "
                             "name them with --image-column / --label-column / --subset-column)")
        cols = [label_column] + ([subset_column] if subset_column else [])
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=cols)
            labels = t.column(label_column).to_pylist()
            subs = t.column(subset_column).to_pylist() if subset_column else [None] * len(labels)
            rows += [(make_ref(os.path.abspath(f), g, i, image_column), lab, "" if s is None else str(s))
                     for i, (lab, s) in enumerate(zip(labels, subs))]
    return rows


class RowGroupCache:
    """The image column of the row groups read last, per process (a loader worker has its own). Holds
    at most `keep` row groups; `held_bytes` is what it holds now, `peak_bytes` the most it ever held."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.groups: "OrderedDict[Tuple[str, int, str], List[Optional[bytes]]]" = OrderedDict()
        self.peak_bytes = 0
        self.lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return sum(len(b or b"") for v in self.groups.values() for b in v)

    def get(self, path: str, group: int, row: int, column: str) -> bytes:
        key = (path, group, column)
        with self.lock:
            if key in self.groups:
                self.groups.move_to_end(key)
            else:
                self.groups[key] = read_image_column(path, group, column)
                while len(self.groups) > self.keep:
                    self.groups.popitem(last=False)
                self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            values = self.groups[key]
        if not 0 <= row < len(values):
            raise InputError(f"{path}: row {row} of row group {group} does not exist")
        return values[row] or b""


def read_image_column(path: str, group: int, column: str) -> List[Optional[bytes]]:
    """The image bytes of one row group: a binary column, or a struct with a `bytes` field (the Hugging
    Face datasets Image feature)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = pq.ParquetFile(path).read_row_group(group, columns=[column]).column(column)
    if pa.types.is_struct(col.type):
        if col.type.get_field_index("bytes") < 0:
            raise InputError(f"{path}: column {column!r} is a struct without a 'bytes' field")
        col = pa.chunked_array([c.field("bytes") for c in col.chunks])
    return col.to_pylist()


_CACHE = RowGroupCache()


def read_ref(ref: str) -> bytes:
    """The bytes of the image a reference names."""
    parsed = parse_ref(ref)
    if parsed is None:
        raise InputError(f"{ref!r} is not a parquet row reference")
    path, g, r, column = parsed
    return _CACHE.get(path, g, r, column)
