"""Analysis tools: the diagonal similarity band number and t-SNE outputs."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import rescale_ext
from fractions import Fraction

from fitgap.analysis import (band_scores, diagonal_similarity, image_features, main, random_crops, rescaled_crops,
                             similarity_of_crops, tsne_points)

from imaging import smooth_noise

P, Q = 5, 3  # rescale by 5/3: period 3 in destination pixels


def rescaled_images(n=3, size=200):
    """Sources rescaled by the op (the whole destination image, no rounding)."""
    out = []
    for i in range(n):
        src = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels, offsets, sizes = rescale_ext.pack_windows([src])
        d = rescale_ext.dst_length(size, P, Q)
        img = rescale_ext.rescale_gather(pixels, offsets, sizes, torch.tensor([[P, Q]]),
                                         torch.tensor([[0, 0, 0]]), d)[0]
        out.append(img.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    return out


def _laplacian(x):
    k = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]).expand(3, 1, 3, 3)
    return F.conv2d(x, k, groups=3).abs().mean(1)  # [N, h, w], valid part


class PhaseEncoder(nn.Module):
    """Mean residual energy per (row mod q, col mod q) position, centred: sees phase."""

    def forward(self, x):
        e = _laplacian(x)
        n, h, w = e.shape
        feats = []
        for a in range(Q):
            for b in range(Q):
                feats.append(e[:, a::Q, b::Q].mean((1, 2)))
        f = torch.stack(feats, 1)
        return f - f.mean(1, keepdim=True)


class BlindEncoder(nn.Module):
    """Global statistics of the residual energy: phase-blind."""

    def forward(self, x):
        e = _laplacian(x)
        return torch.stack([e.mean((1, 2)), e.std((1, 2)), e.amax((1, 2))], 1)


def test_band_number_separates_phase_sensitive_from_blind():
    images = rescaled_images()
    kw = dict(crop=96, patch=48, count=48, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
    sens = band_scores(diagonal_similarity(PhaseEncoder(), images, **kw), [Q])[Q]
    blind = band_scores(diagonal_similarity(BlindEncoder(), images, **kw), [Q])[Q]
    assert sens > 0.05
    assert abs(blind) < 0.01 and sens > 10 * abs(blind)
    again = band_scores(diagonal_similarity(PhaseEncoder(), images, **kw), [Q])[Q]
    assert again == sens  # deterministic with a seed


def test_rescaled_crops_carry_the_period_and_the_photos_as_they_are_do_not():
    """The analysis rescales the photos by a ratio itself (a period exists only then): on those crops a
    phase-sensitive encoder shows a band at q well above the one on the same photos as they are. That
    one is not 0: overlapping patches whose offset is a multiple of q put the same pixels in the same
    position classes, so an encoder of per-class statistics has bands on any image (hence the control)."""
    srcs = [np.random.default_rng(i).integers(0, 256, (200, 200, 3), dtype=np.uint8) for i in range(3)]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    crops = rescaled_crops(srcs, Fraction(P, Q), 96, mean, std)
    assert len(crops) == 3 and crops[0].shape == (3, 96, 96)
    as_is = random_crops(srcs, 96, mean, std)
    on = band_scores(similarity_of_crops(PhaseEncoder(), crops, 48, 32), [Q])[Q]
    off = band_scores(similarity_of_crops(PhaseEncoder(), as_is, 48, 32), [Q])[Q]
    blind = band_scores(similarity_of_crops(BlindEncoder(), crops, 48, 32), [Q])[Q]
    assert on > off + 0.3 and off > 0.1 and abs(blind) < 0.1, (on, off, blind)
    # a crop is 8-bit like the pre-training patches: normalised values land on the 1/255 grid
    v = crops[0] * 0.25 + 0.5
    assert torch.allclose(v * 255, (v * 255).round(), atol=1e-3)
    assert rescaled_crops([srcs[0][:100, :100]], Fraction(7, 4), 96, mean, std) == []  # too small: left out


def test_band_scores_on_a_made_up_matrix():
    n = 12
    d = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    sim = np.where(d % 4 == 0, 1.0, 0.5)
    s = band_scores(sim, [2, 4])
    assert s[4] == pytest.approx(0.5) and s[2] > 0


def test_similarity_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="exceeds the crop"):
        diagonal_similarity(BlindEncoder(), rescaled_images(1), crop=64, patch=48, count=32)


def test_tsne_points_and_files(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 8))
    a, b = tsne_points(x, seed=1), tsne_points(x, seed=1)
    assert a.shape == (40, 2) and np.allclose(a, b)


def test_image_features_with_rescale(tmp_path):
    paths = []
    for i, size in enumerate((80, 80, 20)):
        p = tmp_path / f"{i}.png"
        Image.fromarray(smooth_noise(size, size, i)).save(p)
        paths.append((str(p), 0))
    f = image_features(BlindEncoder(), paths, 64, (0.5,) * 3, (0.25,) * 3, "cpu")
    g = image_features(BlindEncoder(), paths, 64, (0.5,) * 3, (0.25,) * 3, "cpu", rescale=48)
    assert f[2] is None and g[2] is None and f[0].shape == (3,)
    assert not np.allclose(f[0], g[0])


def test_cli_outputs(tmp_path):
    """similarity and tsne end to end from a checkpoint, on a tiny folder benchmark."""
    from fitgap import checkpoint as ckpt
    from fitgap.models import ContrastiveModel, build_encoder

    model = ContrastiveModel(build_encoder("test_resnet"), 16, 8)
    cfg = {"model": {"backbone": "test_resnet", "pretrained": False, "weights": None, "stem_stride": None,
                     "stem_pool": True, "highpass": False},
           "ratios": {"list": ["3/2", "5/4"], "range": None, "max_denominator": 8}}
    path = str(tmp_path / "ck.pt")
    ckpt.atomic_save({"model": model.state_dict(), "config": cfg, "kind": "pretrain"}, path)
    img_dir = tmp_path / "imgs"
    for label in ("0_real", "1_fake"):
        os.makedirs(img_dir / "g" / label)
        for i in range(4):
            Image.fromarray(smooth_noise(120, 120, i + (10 if label == "1_fake" else 0))).save(
                img_dir / "g" / label / f"{i}.png")
    out = str(tmp_path / "out")
    scores = main(["similarity", "--ckpt", path, "--images", str(img_dir), "--crop", "64", "--patch", "32",
                   "--count", "16", "--out", out, "--device", "cpu"])
    assert set(scores) == {2, 4}  # the ratios' q, from the rescaled photos
    maps = np.load(os.path.join(out, "similarity.npz"))
    assert set(maps.files) == {"as_they_are", "rescaled_3_2", "rescaled_5_4"}
    assert all(maps[k].shape == (16, 16) and np.allclose(np.diag(maps[k]), 1.0) for k in maps.files)
    with open(os.path.join(out, "similarity.json")) as f:
        rows = json.load(f)["rows"]
    # every input is scored beside the encoder before pre-training; the photos as they are at every q
    assert [(r["input"], r["q"]) for r in rows] == [("as they are", 2), ("as they are", 4),
                                                    ("rescaled 5/4", 4), ("rescaled 3/2", 2)]
    assert all(np.isfinite(r["before"]) and r["crops"] == 8 for r in rows)
    assert os.path.getsize(os.path.join(out, "similarity.png")) > 1000
    main(["tsne", "--ckpt", path, "--bench", "folder", "--root", str(img_dir), "--patch", "48", "--n", "4",
          "--rescale", "40", "--out", out, "--device", "cpu"])
    z = np.load(os.path.join(out, "tsne.npz"))
    assert z["points"].shape == (16, 2) and len(set(z["groups"].tolist())) == 4
    assert os.path.getsize(os.path.join(out, "tsne.png")) > 1000


class MeanColour(nn.Module):
    """Features: the mean of each channel (a frozen encoder that reads brightness only)."""

    def forward(self, x):
        return x.mean((2, 3))


def _brightness_items(tmp_path, name, fake_offset, n=12, size=40, reals=True):
    items = []
    folder = tmp_path / name
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(len(name))
    for i in range(n):
        for label in ((0, 1) if reals else (1,)):
            base = 100 + (fake_offset if label else 0)
            a = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            path = str(folder / f"{label}_{i}.png")
            Image.fromarray(a).save(path)
            items.append((path, label))
    return items


def test_transfer_scores_follow_the_direction_the_features_carry(tmp_path):
    from fitgap.analysis import transfer_scores

    train = _brightness_items(tmp_path, "train", +40)
    small = str(tmp_path / "small.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(small)
    tests = [("same", _brightness_items(tmp_path, "same", +40)),       # fakes brighter, as in training
             ("inverted", _brightness_items(tmp_path, "inv", -40)),    # fakes darker: ranked below the reals
             ("fakes only", _brightness_items(tmp_path, "fo", +40, reals=False) + [(small, 0)])]
    r = transfer_scores(MeanColour(), train, tests, 32, (0.5,) * 3, (0.25,) * 3, "cpu")
    assert r["ap"]["same"] == pytest.approx(1.0)
    assert r["ap"]["inverted"] < 0.6
    assert r["ap"]["fakes only"] is None          # one class: no AP, not a number that means nothing
    # read as a distance from the training reals, both directions rank the fakes above the reals
    assert r["distance_ap"]["same"] > 0.95 and r["distance_ap"]["inverted"] > 0.95
    assert r["distance_ap"]["fakes only"] is None
    assert r["n"] == {"same": 24, "inverted": 24, "fakes only": 12} and r["left_out"] == 1
    with pytest.raises(Exception, match="both classes"):
        transfer_scores(MeanColour(), [it for it in train if it[1] == 1], tests, 32, (0.5,) * 3, (0.25,) * 3, "cpu")


def test_transfer_cli(tmp_path):
    from fitgap import checkpoint as ckpt
    from fitgap.analysis import format_transfer
    from fitgap.models import ContrastiveModel, build_encoder

    model = ContrastiveModel(build_encoder("test_resnet"), 16, 8)
    cfg = {"model": {"backbone": "test_resnet", "pretrained": False, "weights": None, "stem_stride": None,
                     "stem_pool": True, "highpass": False}, "seed": 3}
    path = str(tmp_path / "ck.pt")
    ckpt.atomic_save({"model": model.state_dict(), "config": cfg, "kind": "pretrain"}, path)
    root = tmp_path / "bench"
    for sub, shift in (("g1", 10), ("g2", 30)):
        for label in ("0_real", "1_fake"):
            os.makedirs(root / sub / label)
            for i in range(5):
                Image.fromarray(smooth_noise(64, 64, i + (shift if label == "1_fake" else 0))).save(
                    root / sub / label / f"{i}.png")
    out = str(tmp_path / "out")
    result = main(["transfer", "--ckpt", path, "--bench", "folder", "--root", str(root), "--train-subset", "g1",
                   "--crop", "48", "--out", out, "--device", "cpu"])
    with open(os.path.join(out, "transfer.json")) as f:
        saved = json.load(f)
    assert saved["train"] == "g1" and set(saved["encoder"]["ap"]) == {"g1", "g2"}
    assert set(saved["initial"]["ap"]) == {"g1", "g2"} and saved["encoder"]["n"] == {"g1": 10, "g2": 10}
    assert saved["encoder"]["unseen"] == pytest.approx(saved["encoder"]["ap"]["g2"])
    assert result["encoder"]["ap"] == saved["encoder"]["ap"]
    table = format_transfer(saved)
    # the folder layout has no splits: the fitted subset is scored on its own images, and the table says so
    assert saved["train_overlap"] == 10
    assert table[2].startswith("| g1 (fitted on 10 of these same images: not held out) |")
    assert table[-1].startswith("| mean over the others |")
    assert format_transfer(dict(saved, train_overlap=0))[2].startswith("| g1 (fitted on its train split) |")
    with pytest.raises(SystemExit):
        main(["transfer", "--ckpt", path, "--bench", "folder", "--root", str(root), "--train-subset", "nope",
              "--out", out, "--device", "cpu"])
