"""Parquet benchmarks (OpenFake, Community Forensics-Eval, any column of image bytes): listed from the
label and subset columns, images decoded from their bytes as files are, one row group held at a time."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imaging import smooth_noise

pa = pytest.importorskip("pyarrow")  # listed in requirements.txt: present wherever `make test` ran
import pyarrow.parquet as pq  # noqa: E402

from fitgap.benchmarks import load_benchmark  # noqa: E402
from fitgap.data import decode_rgb  # noqa: E402
from fitgap.errors import InputError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png(seed, h=48, w=56):
    buf = io.BytesIO()
    Image.fromarray(smooth_noise(h, w, seed)).save(buf, format="PNG")
    return buf.getvalue()


def write_openfake(path, groups=30, per_group=8, struct=True):
    """OpenFake's layout: image as the datasets Image feature (struct of bytes and path), label
    real/fake, model (the reals' model is "real"); one row group per `per_group` rows."""
    models = ["real", "sd-3.5", "flux.1-dev", "real"]
    images, labels, names = [], [], []
    for i in range(groups * per_group):
        m = models[i % 4]
        images.append(png(i))
        labels.append("real" if m == "real" else "fake")
        names.append(m)
    if struct:
        col = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        col = pa.array(images, type=pa.binary())
    t = pa.table({"image": col, "label": labels, "model": names, "prompt": ["a photo"] * len(names)})
    pq.write_table(t, path, row_group_size=per_group)
    return images, labels, names


def test_openfake_is_listed_by_model_with_the_reals_shared_and_decoded_from_bytes(tmp_path):
    f = tmp_path / "test-00000.parquet"
    images, labels, names = write_openfake(f)
    assert pq.ParquetFile(f).num_row_groups == 30
    subs = load_benchmark("openfake", str(f))
    by = {s.name: s for s in subs}
    assert sorted(by) == ["flux.1-dev", "sd-3.5"]
    assert by["sd-3.5"].counts == {"real": 120, "fake": 60} and "model 'real'" in by["sd-3.5"].note
    ref, label = by["flux.1-dev"].items[-1]
    assert label == 1 and "::row-group:" in ref
    i = int(ref.split("::row-group:")[1].split(":")[0]) * 8 + int(ref.split(":")[-2])
    assert names[i] == "flux.1-dev"
    assert np.array_equal(decode_rgb(ref), decode_rgb(images[i]))  # the same decoder as for files
    # a binary column (Community Forensics' image_data), labels 1 / 0, subsets by model_name
    g = tmp_path / "cf.parquet"
    pq.write_table(pa.table({"image_data": pa.array([png(k) for k in range(12)], pa.binary()),
                             "label": [k % 2 for k in range(12)], "model_name": ["m1", "m2", "m3"] * 4}),
                   g, row_group_size=5)
    cf = load_benchmark("commfor", str(g))
    assert [(s.name, s.counts) for s in cf] == [("m1", {"real": 2, "fake": 2}), ("m2", {"real": 2, "fake": 2}),
                                                ("m3", {"real": 2, "fake": 2})]
    one = load_benchmark("commfor", str(g), subset_column="label")  # any column can name the subsets
    assert [(s.name, s.counts) for s in one] == [("1", {"real": 6, "fake": 6})]  # label 0 pooled as the reals
    plain = load_benchmark("parquet", str(g), image_column="image_data")
    assert [s.name for s in plain] == ["all"] and plain[0].counts == {"real": 6, "fake": 6}
    with pytest.raises(InputError, match="no column 'image'"):
        load_benchmark("parquet", str(g))
    with pytest.raises(InputError, match="label 'maybe'"):
        bad = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"image": pa.array([png(0)], pa.binary()), "label": ["maybe"]}), bad)
        load_benchmark("parquet", str(bad))
    assert load_benchmark("parquet", str(bad), real_values=["maybe"])[0].counts == {"real": 1, "fake": 0}


def test_reading_a_parquet_set_holds_one_row_group_not_the_file(tmp_path):
    """A full pass over 40 row groups in order: the cache never holds more than its 2 row groups, and
    pyarrow's memory pool peaks at a few row groups' worth while the file is 40 of them."""
    from fitgap import parquet as P

    f = tmp_path / "big.parquet"
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes() for _ in range(40 * 10)]  # 40 kB each
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": ["fake", "real"] * 200}), f,
                   row_group_size=10, compression="none")
    group_bytes = 10 * 40_000
    assert os.path.getsize(f) > 35 * group_bytes
    subs = load_benchmark("parquet", str(f))
    refs = [r for s in subs for r, _ in s.items]
    refs.sort(key=lambda r: P.parse_ref(r)[1:3])
    P._CACHE = cache = P.RowGroupCache()
    pool = pa.default_memory_pool()
    start = pool.bytes_allocated()
    peak = 0
    for r in refs:
        data = P.read_ref(r)
        assert len(data) == 40_000
        peak = max(peak, pool.bytes_allocated() - start, cache.held_bytes)
    assert cache.peak_bytes <= 2 * group_bytes
    assert peak <= 4 * group_bytes, (peak, group_bytes)
    assert len(cache.groups) <= 2


def test_evaluate_and_audit_read_a_parquet_set_and_count_its_broken_images(tmp_path):
    """evaluate.py on a parquet set: rows scored from their bytes, a row whose bytes are not an image
    counted as unreadable as a broken file is; the audit reads the same rows' headers."""
    sys.path.insert(0, os.path.dirname(__file__))
    from imaging import detector_ckpt

    f = tmp_path / "set.parquet"
    blobs = [png(k) for k in range(16)] + [b"not an image"]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()),
                             "label": ["real", "fake"] * 8 + ["fake"]}), f, row_group_size=4)
    detector_ckpt(tmp_path / "best.pt", "test_resnet", 32)
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "evaluate.py", "--ckpt", str(tmp_path / "best.pt"), "--bench", "parquet",
                        "--root", str(f), "--out", str(out), "--device", "cpu", "--workers", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["subset"] == "all" and row["n"] == 16 and row["skipped"] == 1 and "unreadable" in row["notes"]
    assert row["metadata_ap"] is not None  # the audit beside it read the rows' headers
    from fitgap.audit import audit

    a = audit(load_benchmark("parquet", str(f)))["subsets"]["all"]
    assert a["real"]["formats"] == {"PNG": 8} and a["fake"]["unreadable"] == 1
