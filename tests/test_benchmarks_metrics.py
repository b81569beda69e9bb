"""Benchmark layouts and labels; metrics against hand-computed values."""
import os

import numpy as np
import pytest
from PIL import Image

from fitgap.benchmarks import GENIMAGE, SELFSYNTH, load_benchmark
from fitgap.metrics import mean_row, subset_metrics


def touch_images(folder, n):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(os.path.join(folder, f"{i}.png"))


def test_selfsynth_layout_and_missing(tmp_path):
    for gen in SELFSYNTH[:3]:
        touch_images(tmp_path / gen / "0_real", 2)
        touch_images(tmp_path / gen / "1_fake", 3)
    os.makedirs(tmp_path / "SNGAN" / "0_real")
    subsets = load_benchmark("selfsynth", str(tmp_path))
    by = {s.name: s for s in subsets}
    assert [s.name for s in subsets] == SELFSYNTH
    assert by["AttGAN"].counts == {"real": 2, "fake": 3} and by["AttGAN"].status == "ok"
    assert by["SNGAN"].status == "empty" and by["STGAN"].status == "missing"
    assert all(label == (1 if "1_fake" in p else 0) for p, label in by["BEGAN"].items)


def test_forensynths_pools_class_folders(tmp_path):
    for c in ("car", "cat"):
        touch_images(tmp_path / "progan" / c / "0_real", 2)
        touch_images(tmp_path / "progan" / c / "1_fake", 1)
    touch_images(tmp_path / "stylegan" / "0_real", 1)
    touch_images(tmp_path / "stylegan" / "1_fake", 1)
    by = {s.name: s for s in load_benchmark("forensynths", str(tmp_path))}
    assert by["progan"].counts == {"real": 4, "fake": 2}
    assert by["stylegan"].counts == {"real": 1, "fake": 1}
    assert by["biggan"].status == "missing"


def test_genimage_ai_nature_and_renamed(tmp_path):
    touch_images(tmp_path / "ADM" / "imagenet_ai_0508_adm" / "val" / "ai", 3)
    touch_images(tmp_path / "ADM" / "imagenet_ai_0508_adm" / "val" / "nature", 2)
    touch_images(tmp_path / "ADM" / "imagenet_ai_0508_adm" / "train" / "ai", 5)
    touch_images(tmp_path / "glide" / "val" / "1_fake", 1)
    touch_images(tmp_path / "glide" / "val" / "0_real", 4)
    touch_images(tmp_path / "VQDM" / "0_real", 1)
    touch_images(tmp_path / "VQDM" / "1_fake", 2)
    by = {s.name: s for s in load_benchmark("genimage", str(tmp_path))}
    assert by["ADM"].counts == {"real": 2, "fake": 3}
    assert all(label == 1 for p, label in by["ADM"].items if "/ai/" in p)
    assert all(label == 0 for p, label in by["ADM"].items if "/nature/" in p)
    assert by["glide"].counts == {"real": 4, "fake": 1}
    assert by["VQDM"].counts == {"real": 1, "fake": 2}
    assert by["Midjourney"].status == "missing"
    train = {s.name: s for s in load_benchmark("genimage", str(tmp_path), split="train")}
    assert train["ADM"].counts == {"real": 0, "fake": 5}
    assert [s.name for s in load_benchmark("genimage", str(tmp_path))][:len(GENIMAGE)] == GENIMAGE


def test_folder_layout_any_depth(tmp_path):
    touch_images(tmp_path / "a" / "x" / "0_real", 1)
    touch_images(tmp_path / "a" / "x" / "1_fake", 2)
    touch_images(tmp_path / "b" / "1_fake", 1)
    by = {s.name: s for s in load_benchmark("folder", str(tmp_path))}
    assert by["a/x"].counts == {"real": 1, "fake": 2} and by["b"].counts == {"real": 0, "fake": 1}
    with pytest.raises(FileNotFoundError):
        load_benchmark("folder", str(tmp_path / "a" / "x" / "0_real"))
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("imagenet", str(tmp_path))


def test_subset_filter_reports_missing(tmp_path):
    touch_images(tmp_path / "AttGAN" / "0_real", 1)
    s = load_benchmark("selfsynth", str(tmp_path), subsets=["AttGAN", "NoSuchGAN"])
    assert [x.status for x in s] == ["ok", "missing"]


def test_metrics_hand_computed():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.9, 0.7, 0.3, 0.5]
    m = subset_metrics(labels, scores)
    # predictions p > 0.5: [F, T, F, T, T, F, F]
    assert m["acc"] == pytest.approx(4 / 7) and m["real_acc"] == pytest.approx(2 / 3)
    assert m["fake_acc"] == pytest.approx(2 / 4)
    # AP: ranking 0.9(1) 0.7(1) 0.6(0) 0.5(1) 0.4(0) 0.3(1) 0.1(0): precisions at positives 1, 1, 3/4, 4/6
    assert m["ap"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert m["n_real"] == 3 and m["n_fake"] == 4


def test_one_class_subset_reports_undefined_ap():
    m = subset_metrics([1, 1, 1], [0.9, 0.2, 0.8])
    assert m["ap"] is None and "AP undefined" in m["notes"] and m["real_acc"] is None
    assert m["fake_acc"] == pytest.approx(2 / 3)


def test_mean_row_is_unweighted_and_skips_undefined():
    rows = [{"acc": 1.0, "real_acc": 1.0, "fake_acc": 1.0, "ap": 1.0},
            {"acc": 0.5, "real_acc": None, "fake_acc": 0.5, "ap": None},
            {"acc": 0.0, "real_acc": 0.0, "fake_acc": 0.0, "ap": 0.5}]
    m = mean_row(rows)
    assert m["acc"] == pytest.approx(0.5) and m["ap"] == pytest.approx(0.75) and m["ap_subsets"] == 2
