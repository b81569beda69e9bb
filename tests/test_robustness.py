"""Resampling sensitivity and robustness sweeps: kernels, flips, the sweep on a fixed detector, the CLI."""
import json
import math
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fitgap import checkpoint as ckpt
from fitgap.evaldata import Perturbation, resize_array
from fitgap.models import Detector, build_encoder
from fitgap.robustness import conditions, flip_stats, summarize, sweep_subset

from imaging import smooth_noise


def test_resize_conventions_match_opencv():
    a = smooth_noise(61, 83, 3)
    for f in (0.5, 0.75, 1.25):
        size = (round(83 * f), round(61 * f))
        lin = resize_array(a, f, "bilinear", antialias=False)
        cub = resize_array(a, f, "bicubic", antialias=False)
        assert lin.shape == (size[1], size[0], 3)
        d = np.abs(lin.astype(int) - cv2.resize(a, size, interpolation=cv2.INTER_LINEAR).astype(int))
        assert d.max() <= 1, f
        d = np.abs(cub.astype(int) - cv2.resize(a, size, interpolation=cv2.INTER_CUBIC).astype(int))
        assert d[2:-2, 2:-2].max() <= 1, f
    # area = OpenCV INTER_AREA at every shrinking default factor, on even and odd sizes
    from fitgap.robustness import FACTORS

    for h, w in ((64, 80), (61, 83), (37, 101)):
        img = (np.random.default_rng(h).random((h, w, 3)) * 255).astype(np.uint8)  # texture: no averaging hides errors
        for f in [f for f in FACTORS if f < 1] + [1 / 3, 0.3]:
            size = (round(w * f), round(h * f))
            area = resize_array(img, f, "area")
            ref = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            assert area.shape == ref.shape and np.abs(area.astype(int) - ref.astype(int)).max() <= 1, (h, w, f)
    # enlarging: coverage-weighted too (a mean of the pixels under the footprint: never outside their range)
    up = resize_array(img, 1.5, "area")
    assert up.shape == (round(37 * 1.5), round(101 * 1.5), 3)
    assert np.array_equal(resize_array(img, 2.0, "area"), np.repeat(np.repeat(img, 2, 0), 2, 1))
    # shrinking with and without antialiasing differs; enlarging does not depend on it
    assert not np.array_equal(resize_array(a, 0.5, "bilinear"), resize_array(a, 0.5, "bilinear", False))
    with pytest.raises(ValueError, match="antialias"):
        Perturbation(resize=0.5, resize_kernel="lanczos", antialias=False).check()
    with pytest.raises(ValueError, match="--reencode"):
        Perturbation(reencode="gif").check()


def test_flip_stats_hand_computed():
    native = np.array([0.2, 0.4, 0.6, 0.9])
    cond = np.array([0.7, 0.3, 0.4, 0.95])
    s = flip_stats(native, cond, 0.5)
    assert s["flip"] == pytest.approx(0.5) and s["to_fake"] == pytest.approx(0.25)
    assert s["dp"] == pytest.approx((0.5 - 0.1 - 0.2 + 0.05) / 4)
    assert flip_stats(native, cond, 0.35)["flip"] == pytest.approx(0.5)  # 0.2 -> 0.7 and 0.4 -> 0.3 cross 0.35
    assert flip_stats(native, cond, 0.8)["flip"] == 0.0
    assert flip_stats(np.array([]), np.array([]))["flip"] is None


class Sharpness(torch.nn.Module):
    """A fixed detector: fake when the mean absolute horizontal gradient is high."""

    def __init__(self, cut):
        super().__init__()
        self.cut = cut

    def forward(self, x):
        g = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))
        return 40.0 * (g - self.cut)


def sharp_tree(tmp_path, n=6):
    items = []
    rng = np.random.default_rng(0)
    for i in range(n):
        real = smooth_noise(64, 64, i)
        fake = np.clip(real.astype(int) + rng.integers(-60, 61, real.shape), 0, 255).astype(np.uint8)
        for label, img in ((0, real), (1, fake)):
            p = str(tmp_path / f"{label}_{i}.png")
            Image.fromarray(img).save(p)
            items.append((p, label))
    return items


def test_sweep_on_a_fixed_detector_flips_fakes_under_blur_only(tmp_path):
    items = sharp_tree(tmp_path)
    model = Sharpness(cut=0.5)
    tiers = conditions(factors=[], kernels=[], jpeg=[], webp=[], blur=[])  # the tiers come by default
    assert [(c.name, c.group, c.perturb.max_side, c.perturb.jpeg) for c in tiers] == [
        ("tier-web", "tier", 768, 60), ("tier-hard", "tier", 512, 40)]
    conds = conditions(factors=[1.5], kernels=["bilinear"], jpeg=[], webp=[], blur=[2.0], tiers=[])
    scores, errors = sweep_subset(model, items, conds, 48, "center", [0.5] * 3, [0.25] * 3, "cpu", batch=4,
                                  workers=0)
    assert not errors and scores.shape == (12, 3) and np.isfinite(scores).all()
    labels = np.array([y for _, y in items])
    res = summarize(labels, scores, conds, 0.5)["conditions"]
    assert res["native"]["ap"] == 1.0 and res["native"]["acc"] == 1.0 and res["native"]["real_flip"] == 0.0
    blur = res["blur2"]
    assert blur["fake_flip"] == 1.0 and blur["fake_acc"] == 0.0 and blur["real_flip"] == 0.0
    assert blur["real_to_fake"] == 0.0 and blur["fake_dp"] < -0.5
    # the same numbers from the scores by hand
    assert blur["fake_dp"] == pytest.approx(float((scores[labels == 1, 2] - scores[labels == 1, 0]).mean()))


def test_robustness_cli_writes_tables_and_plots(tmp_path):
    from fitgap.robustness import main

    bench = tmp_path / "bench" / "gen"
    for i, (p, y) in enumerate(sharp_tree(tmp_path, n=4)):
        d = bench / ("1_fake" if y else "0_real")
        d.mkdir(parents=True, exist_ok=True)
        os.replace(p, d / f"{i}.png")
    torch.manual_seed(0)
    model = Detector(build_encoder("test_resnet"))
    cfg = {"model": {"backbone": "test_resnet", "pretrained": False, "weights": None, "stem_stride": None,
                     "stem_pool": True, "highpass": False, "proj_hidden": 32, "proj_dim": 16},
           "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}, "patch": 32, "eval": {"size": 48}}
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    ckpt.atomic_save({"model": model.state_dict(), "config": cfg, "kind": "detector"}, str(path))
    out = tmp_path / "out"
    main(["--ckpt", str(path), "--bench", "folder", "--root", str(tmp_path / "bench"), "--out", str(out),
          "--factors", "0.5", "1.5", "--kernels", "bilinear", "bicubic-noaa", "--jpeg", "75", "--webp", "80",
          "--blur", "1", "--device", "cpu", "--workers", "0", "--reencode", "jpeg:95"])
    data = json.loads((out / "robustness.json").read_text())
    names = [c["name"] for c in data["conditions"]]
    assert names == ["resize0.5-bilinear", "resize1.5-bilinear", "resize0.5-bicubic-noaa", "resize1.5-bicubic-noaa",
                     "jpeg75", "webp80", "blur1", "tier-web", "tier-hard"]
    g = data["subsets"]["gen"]
    assert g["n_real"] == 4 and g["n_fake"] == 4 and set(g["conditions"]) == {"native", *names}
    assert data["reencode"] == "jpeg:95" and "run/best.pt" in data["title"]
    for f in ("robustness.md", "robustness.csv", "resize_ap.png", "degrade.png"):
        assert (out / f).stat().st_size > 0
    md = (out / "robustness.md").read_text()
    assert "| resize0.5-bicubic-noaa |" in md and "OpenCV INTER_CUBIC" in md
    assert "## Robustness tiers" in md and "| web | long side <= 768 px, then JPEG q60 |" in md
    # a subset-name typo: one line naming what was asked for, not KeyError: 'ap'
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", str(path), "--bench", "folder", "--root", str(tmp_path / "bench"), "--out", str(out),
              "--subsets", "gne", "--device", "cpu", "--workers", "0"])
    assert e.value.code == 2


def test_the_check_resamples_only_the_window_its_centre_crop_needs():
    """center_crop_of(p, a, size) == center_crop(p(a), size): byte for byte for the JPEG re-encode
    (whole MCUs around the crop); for PIL's antialiased resize of the crop's window (its box is single
    precision) within 3 grey levels, on about 4% of the pixels on average; any other perturbation
    takes the whole image."""
    from fitgap.evaldata import Perturbation, center_crop, center_crop_of

    rng = np.random.default_rng(0)
    shares = []
    for k in range(24):
        h, w = int(rng.integers(20, 420)), int(rng.integers(20, 420))
        a = smooth_noise(h, w, k)
        for size in (16, 64, 97, 500):
            got = center_crop_of(Perturbation(jpeg=95), a, size)
            assert np.array_equal(got, center_crop(Perturbation(jpeg=95)(a), size)), (h, w, size)
            for factor in (0.9, 1.1, 0.5, 1.37):
                for kernel in ("bilinear", "bicubic"):
                    p = Perturbation(resize=factor, resize_kernel=kernel)
                    ref, got = center_crop(p(a), size), center_crop_of(p, a, size)
                    assert ref.shape == got.shape, (h, w, size, factor)
                    d = np.abs(ref.astype(int) - got)
                    assert d.max() <= 3, (h, w, size, factor, kernel)
                    shares.append(float((d > 0).mean()))
    assert np.mean(shares) < 0.06
    a = smooth_noise(90, 120, 1)
    for p in (Perturbation(resize=0.9, antialias=False), Perturbation(resize=0.9, jpeg=95), Perturbation(blur=1.0),
              Perturbation(resize=0.7, resize_kernel="area")):  # the whole image, as before
        assert np.array_equal(center_crop_of(p, a, 32), center_crop(p(a), 32))


def test_undefined_metrics_are_gaps_in_the_plots_not_points_at_zero(tmp_path, monkeypatch):
    """A condition whose AP is undefined (one class left) is left out of the line, not drawn at 0."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from fitgap.robustness import plot

    drawn = []
    real_plot = Axes.plot

    def spy(self, x, y, *a, **k):
        drawn.append(list(y))
        return real_plot(self, x, y, *a, **k)

    monkeypatch.setattr(Axes, "plot", spy)
    row = {"ap": 0.9, "real_to_fake": 0.1, "fake_flip": 0.2, "acc": 0.8, "real_acc": 0.7, "fake_acc": 0.9}
    result = {"title": "t", "conditions": [
        {"name": "resize0.5-bilinear", "group": "resize:bilinear", "strength": 0.5},
        {"name": "jpeg75", "group": "jpeg", "strength": 75}],
        "mean": {"native": row, "resize0.5-bilinear": dict(row, ap=None), "jpeg75": dict(row, fake_acc=None)}}
    written = plot(result, str(tmp_path))
    assert [os.path.basename(p) for p in written] == ["resize_ap.png", "degrade.png"]
    resize_ap, jpeg_fake_acc = drawn[0], drawn[6]  # resize: ap, r2f, flip; jpeg: ap, acc, real acc, fake acc
    assert math.isnan(resize_ap[0]) and resize_ap[1] == pytest.approx(90.0)  # factor 0.5 undefined, 1.0 native
    assert math.isnan(jpeg_fake_acc[0]) and jpeg_fake_acc[1] == pytest.approx(90.0)  # q75, then native
    assert not any(v == 0 for line in drawn for v in line)
