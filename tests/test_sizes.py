"""The size-constrained protocol: only the sizes both classes share are scored, from headers or from a
per-image metadata CSV (UnbiasedGenImage's), and the audit then finds no size shortcut."""
import os

import pytest
from PIL import Image

from imaging import smooth_noise

from fitgap.audit import audit, read_metadata, size_constrain
from fitgap.benchmarks import load_benchmark
from fitgap.errors import InputError


def make(tmp_path):
    """Reals of many sizes (JPEG), fakes at 3 fixed sizes (PNG): as distributed, size alone separates
    most of them."""
    root = tmp_path / "gen"
    real, fake = root / "0_real", root / "1_fake"
    real.mkdir(parents=True)
    fake.mkdir(parents=True)
    sizes = [(40 + 7 * i, 50 + 5 * i) for i in range(12)]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(smooth_noise(h, w, i)).save(real / f"{i}.jpg", quality=90)
    for i in range(12):
        w, h = [(64, 64), (96, 96), (200, 200)][i % 3]
        Image.fromarray(smooth_noise(h, w, 100 + i)).save(fake / f"{i}.png")
    return tmp_path


def test_only_the_shared_sizes_are_kept(tmp_path):
    make(tmp_path)
    subs = load_benchmark("folder", str(tmp_path))
    kept = size_constrain(subs)[0]
    # reals: widths 40-117, heights 50-105; fakes 64-200 both: shared widths 64-117, heights 64-105
    assert "kept" in kept.note and "width 64-117, height 64-105" in kept.note
    for p, _ in kept.items:
        w, h = Image.open(p).size
        assert 64 <= w <= 117 and 64 <= h <= 105
    assert kept.counts["fake"] == 8 and 0 < kept.counts["real"] < 12  # the 200-px fakes and small reals go
    (tmp_path / "gen" / "1_fake" / "broken.png").write_bytes(b"\x89PNG not really")
    with_broken = size_constrain(load_benchmark("folder", str(tmp_path)))[0]
    assert any(p.endswith("broken.png") for p, _ in with_broken.items) and "1 without a readable size" in with_broken.note
    os.remove(tmp_path / "gen" / "1_fake" / "broken.png")
    meta = tmp_path / "meta.csv"
    lines = ["file_path,generator,width,height,quality"]
    for p, y in subs[0].items:  # the metadata says every image is 64x64: all kept, no header read needed
        lines.append(f"{os.path.relpath(p, tmp_path)},{'sd' if y else 'real'},64,64,{'' if y else 90}")
    meta.write_text("\n".join(lines) + "\n")
    md = read_metadata(str(meta))
    assert len(md) == 24 and md[os.path.abspath(subs[0].items[0][0])]["jpeg_quality"] in (90, None)
    assert len(size_constrain(subs, md)[0].items) == 24
    bad = tmp_path / "bad.csv"
    bad.write_text("file_path,width,height\nx.png,wide,3\n")
    with pytest.raises(InputError, match="bad.csv:2"):
        read_metadata(str(bad))
    with pytest.raises(InputError, match="no width column"):
        (tmp_path / "nowidth.csv").write_text("path,height\nx,1\n")
        read_metadata(str(tmp_path / "nowidth.csv"))


def test_the_audit_under_the_protocol_reads_the_kept_images_and_the_metadata(tmp_path):
    make(tmp_path)
    subs = load_benchmark("folder", str(tmp_path))
    as_is = audit(subs)["subsets"]["gen"]
    kept = audit(size_constrain(subs), protocol="size-constrained")
    s = kept["subsets"]["gen"]
    assert s["real"]["n"] < as_is["real"]["n"] and kept["protocol"] == "size-constrained"
    meta = tmp_path / "meta.csv"
    meta.write_text("path,width,height,jpeg_quality\n" + "".join(
        f"{p},{333},{222},{55}\n" for p, y in subs[0].items if y == 0))
    with_meta = audit(subs, metadata=read_metadata(str(meta)))["subsets"]["gen"]
    assert with_meta["real"]["jpeg_quality"]["mean"] == 55  # the metadata's quality, not the header's 90
