"""Dataset audit: JPEG quality estimates, sizes, and the metadata-only shortcut flag."""
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from fitgap.audit import audit, describe, jpeg_quality, read_header
from fitgap.benchmarks import load_benchmark

from imaging import smooth_noise


@pytest.mark.parametrize("quality", [20, 50, 75, 90, 95, 100])
def test_jpeg_quality_estimate_pil_and_opencv(tmp_path, quality):
    img = smooth_noise(64, 80, quality)
    p1, p2, p3 = tmp_path / "pil.jpg", tmp_path / "cv.jpg", tmp_path / "pil444.jpg"
    Image.fromarray(img).save(p1, quality=quality)
    Image.fromarray(img).save(p3, quality=quality, subsampling=0)
    cv2.imwrite(str(p2), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    for p in (p1, p2, p3):
        rec = read_header(str(p))
        assert abs(rec["jpeg_quality"] - quality) <= 3, (p, rec)
        assert rec["format"] == "JPEG" and (rec["width"], rec["height"]) == (80, 64)
    assert read_header(str(p1))["subsampling"] == "4:2:0" and read_header(str(p3))["subsampling"] == "4:4:4"


def test_jpeg_quality_of_non_standard_tables_is_nearest_not_exact():
    tables = {0: [2] * 64, 1: [3] * 64}
    est = jpeg_quality(tables)
    assert not est["exact"] and 90 <= est["quality"] <= 100
    assert jpeg_quality({})["quality"] is None


def test_headers_sizes_exif_and_unreadable(tmp_path):
    img = smooth_noise(64, 256, 1)
    exif = Image.Exif()
    exif[0x010F] = "camera maker"
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=90, exif=exif)
    Image.fromarray(img[:, :200]).save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    recs = [read_header(str(tmp_path / n)) for n in ("a.jpg", "b.png", "c.jpg")]
    assert recs[0]["exif"] and not recs[1]["exif"] and "error" in recs[2]
    d = describe(recs)
    assert d["n"] == 3 and d["unreadable"] == 1 and d["formats"] == {"JPEG": 1, "PNG": 1}
    assert d["min_side"] == 64 and d["max_side"] == 256 and d["distinct_sizes"] == 2
    # sides: 256, 64 (both multiples of 8 and 64), 200 (of 8 only), 64
    assert d["multiple_of"] == {"8": 1.0, "64": 0.75, "256": 0.25}
    assert d["exif"] == 0.5


def make_tree(root, real_fmt, fake_fmt, n=12, seed=0):
    rng = np.random.default_rng(seed)
    for label, fmt in (("0_real", real_fmt), ("1_fake", fake_fmt)):
        d = os.path.join(root, "gen", label)
        os.makedirs(d)
        for i in range(n):
            if label == "0_real" and fmt == "jpg":  # reals as in the wild: resized, various sizes, JPEG q75
                h, w = int(rng.integers(60, 90)), int(rng.integers(60, 90))
            else:
                h, w = 64, 64
            Image.fromarray(smooth_noise(h, w, 100 * (label == "1_fake") + i)).save(
                os.path.join(d, f"{i}.{fmt}"), **({"quality": 75} if fmt == "jpg" else {}))


def test_shortcut_flagged_when_format_and_size_separate_classes(tmp_path):
    make_tree(str(tmp_path), "jpg", "png")
    res = audit(load_benchmark("folder", str(tmp_path)))
    s = res["subsets"]["gen"]
    assert s["metadata_ap"] >= 0.9 and s["shortcut"] and res["flagged"] == ["gen"]
    assert s["real"]["formats"] == {"JPEG": 12} and s["fake"]["formats"] == {"PNG": 12}
    assert abs(s["real"]["jpeg_quality"]["mean"] - 75) <= 3


def test_no_flag_when_both_classes_are_png_of_one_size(tmp_path):
    make_tree(str(tmp_path), "png", "png")
    res = audit(load_benchmark("folder", str(tmp_path)))
    s = res["subsets"]["gen"]
    assert s["metadata_ap"] < 0.9 and not s["shortcut"] and res["flagged"] == []


def test_the_jpeg96_protocol_removes_the_format_shortcut_from_the_audit(tmp_path):
    """Reals JPEG q96, fakes PNG: flagged as distributed; with the fakes re-encoded as the protocol does,
    the headers carry nothing and the audit no longer flags."""
    rng = np.random.default_rng(0)
    for label in ("0_real", "1_fake"):
        d = tmp_path / "gen" / label
        d.mkdir(parents=True)
        for i in range(12):
            h, w = int(rng.integers(60, 90)), int(rng.integers(60, 90))
            im = Image.fromarray(smooth_noise(h, w, 100 * (label == "1_fake") + i))
            if label == "0_real":
                im.save(d / f"{i}.jpg", quality=96)
            else:
                im.save(d / f"{i}.png")
    subsets = load_benchmark("folder", str(tmp_path))
    as_is = audit(subsets)
    assert as_is["flagged"] == ["gen"]
    fixed = audit(subsets, protocol="jpeg96")
    s = fixed["subsets"]["gen"]
    assert fixed["flagged"] == [] and s["metadata_ap"] < 0.9 and s["fake"]["formats"] == {"JPEG": 12}


def test_audit_cli_writes_json_and_markdown(tmp_path):
    from fitgap.audit import main

    make_tree(str(tmp_path / "bench"), "jpg", "png")
    (tmp_path / "bench" / "gen" / "1_fake" / "broken.png").write_bytes(b"\x89PNG")
    main(["--bench", "folder", "--root", str(tmp_path / "bench"), "--out", str(tmp_path / "out"), "--workers", "0"])
    data = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert set(data["subsets"]["gen"]) >= {"metadata_ap", "shortcut", "real", "fake"}
    assert data["subsets"]["gen"]["fake"]["unreadable"] == 1
    md = (tmp_path / "out" / "audit.md").read_text()
    assert "a shortcut exists" in md and "| formats | JPEG 12 | PNG 12 |" in md


def _pair_tree(root, fake_save, n=12):
    """Reals as RGB PNGs of one size; fakes of the same size and format, saved by `fake_save`."""
    for label in ("0_real", "1_fake"):
        os.makedirs(os.path.join(root, "gen", label))
    for i in range(n):
        a = smooth_noise(64, 64, i)
        Image.fromarray(a).save(os.path.join(root, "gen", "0_real", f"{i}.png"))
        fake_save(Image.fromarray(smooth_noise(64, 64, 100 + i)), os.path.join(root, "gen", "1_fake", f"{i}.png"))


def test_colour_mode_bit_depth_and_text_chunks_are_features(tmp_path):
    from PIL import PngImagePlugin

    # palette PNGs (4 bits) against RGB PNGs of one size: a shortcut the format and size cannot show
    _pair_tree(str(tmp_path / "pal"), lambda im, p: im.convert("P", colors=16).save(p, bits=4))
    s = audit(load_benchmark("folder", str(tmp_path / "pal")))["subsets"]["gen"]
    assert s["shortcut"] and s["fake"]["modes"] == {"P": 12} and s["real"]["modes"] == {"RGB": 12}
    assert s["fake"]["bits"] == {"4": 12} and s["real"]["bits"] == {"8": 12}

    # generation parameters in a text chunk
    def with_text(im, p):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a photo of a cat, Steps: 20")
        im.save(p, pnginfo=info)

    _pair_tree(str(tmp_path / "txt"), with_text)
    s = audit(load_benchmark("folder", str(tmp_path / "txt")))["subsets"]["gen"]
    assert s["shortcut"] and s["fake"]["text_keys"] == {"parameters": 12} and s["real"]["text_keys"] == {}
    rec = read_header(str(tmp_path / "txt" / "gen" / "1_fake" / "0.png"))
    assert rec["text_keys"] == ["parameters"] and rec["icc"] is False and rec["bits"] == 8


def test_identical_headers_stay_in_one_fold(tmp_path):
    # byte-identical real/fake pairs: headers carry nothing, so AP is the share of fakes, not below it
    import shutil

    _pair_tree(str(tmp_path), lambda im, p: None)
    for i in range(12):
        shutil.copyfile(tmp_path / "gen" / "0_real" / f"{i}.png", tmp_path / "gen" / "1_fake" / f"{i}.png")
    s = audit(load_benchmark("folder", str(tmp_path)))["subsets"]["gen"]
    assert abs(s["metadata_ap"] - 0.5) < 1e-9 and not s["shortcut"]


def test_audit_defaults_to_the_split_evaluate_scores(tmp_path):
    from fitgap.audit import main

    for folder, n in (("val", 2), ("test/reddit", 3)):
        for label in ("0_real", "1_fake"):
            d = tmp_path / "wild" / folder / label
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(smooth_noise(32, 32, i)).save(d / f"{i}.png")
    res = main(["--bench", "wildrf", "--root", str(tmp_path / "wild"), "--out", str(tmp_path / "out"),
                "--workers", "0"])
    assert "reddit" in res["subsets"] and res["subsets"]["reddit"]["real"]["n"] == 3
