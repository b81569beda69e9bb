"""The linear probe: leave-one-photo-out scoring, and what it reports for encoders that do or do not
see the rescaling trace."""
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from fitgap import config as C
from fitgap.models import ContrastiveModel, build_encoder
from fitgap.pretrain import DEFAULTS
from fitgap.probe import format_probe, leave_one_photo_out, main, photo_folds, probe_encoder

RATIOS = [Fraction(2, 3), Fraction(3, 4), Fraction(5, 4), Fraction(3, 2)]


def noise_photos(folder, n=4, size=200):
    """Photos with fine texture everywhere (white noise), so every patch carries the trace."""
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        a = np.random.default_rng(i).normal(128, 40, (size, size, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(a).save(os.path.join(folder, f"photo_{i}.png"))
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


class SpectrumEncoder(nn.Module):
    """A hand-made trace detector: the log spectrum of the row and column profiles of the residual
    energy (the periodic interpolation pattern) and of the residual itself."""

    def forward(self, x):
        g = x.mean(1, keepdim=True)
        k = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]).view(1, 1, 3, 3)
        r = F.conv2d(g, k)
        e = r.abs() / (r.abs().mean((2, 3), keepdim=True) + 1e-6)
        px, py = e.mean(2).squeeze(1), e.mean(3).squeeze(1)
        prof = (torch.fft.rfft(px - px.mean(1, keepdim=True)).abs()
                + torch.fft.rfft(py - py.mean(1, keepdim=True)).abs())
        spec = torch.fft.rfft2(r).abs().mean(2).squeeze(1)
        return torch.log1p(torch.cat([prof, spec], 1))


class ConstantEncoder(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 8)


def test_leave_one_photo_out_never_scores_a_photo_with_itself():
    # The label is a property of the photo and the only feature is the photo's identity: a classifier
    # that saw the photo would score 1.0, one that did not can only guess.
    photo = np.repeat(np.arange(6), 10)
    y = photo % 2
    f = np.eye(6)[photo]
    pred = leave_one_photo_out(f, y, photo)
    assert (pred == y).mean() <= 0.5
    # a feature that carries the label inside every photo is found on photos never seen
    y2 = np.tile([0, 1], 30)
    f2 = np.stack([y2 + 0.1 * np.random.default_rng(0).normal(size=len(y2)), np.ones(len(y2))], 1)
    assert (leave_one_photo_out(f2, y2, photo) == y2).mean() == 1.0


def test_folds_of_photos_never_fit_on_the_photo_they_predict(monkeypatch):
    """probe.folds = k: with more than k photos, each photo lands in exactly one of k folds (round-robin by
    photo index, every row of a photo in its fold) and every fold is predicted by one classifier fitted
    on rows of the other folds only; with k photos or fewer, or k = 0, it is leave-one-photo-out."""
    import fitgap.probe as P

    photo = np.repeat(np.array([3, 0, 5, 1, 4, 2, 6]), 5)  # 7 photos, rows not sorted by photo
    g = photo_folds(photo, 3)
    assert sorted(np.unique(g)) == [0, 1, 2]
    assert all(len(np.unique(g[photo == p])) == 1 for p in np.unique(photo))
    assert [int(g[photo == p][0]) for p in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert np.array_equal(photo_folds(photo, 0), photo) and np.array_equal(photo_folds(photo, 7), photo)
    assert np.array_equal(photo_folds(photo, 9), photo)
    calls = []
    real = P._fit_predict

    def spy(f_tr, y_tr, f_te):
        calls.append((set(f_tr[:, 0].astype(int)), set(f_te[:, 0].astype(int))))
        return real(f_tr, y_tr, f_te)

    monkeypatch.setattr(P, "_fit_predict", spy)
    f = np.stack([photo, np.random.default_rng(0).normal(size=len(photo))], 1).astype(float)
    leave_one_photo_out(f, photo % 2, photo, folds=3)
    assert len(calls) == 3 and all(not (tr & te) for tr, te in calls)
    assert sorted(p for _, te in calls for p in te) == list(range(7))
    calls.clear()
    leave_one_photo_out(f, photo % 2, photo)
    assert len(calls) == 7 and all(len(te) == 1 and not (tr & te) for tr, te in calls)


def test_probe_in_folds_reports_how_it_was_scored(tmp_path):
    """The probe over folds of photos finds the trace as leave-one-photo-out does, and its report says
    which of the two it was."""
    paths = noise_photos(str(tmp_path / "photos"), n=5)
    kw = dict(patch=32, device="cpu", per_image=16, window=160, quantize=True, mean=[128.0] * 3, std=[40.0] * 3)
    folded = probe_encoder(SpectrumEncoder(), paths, RATIOS, folds=2, **kw)
    assert folded["ratio_acc"] > 2 * folded["ratio_chance"]
    assert "in 2 folds" in folded["cv"] and "in 2 folds" in format_probe(folded)
    loo = probe_encoder(ConstantEncoder(), paths, RATIOS, folds=5, **kw)  # 5 photos, 5 folds: one each
    assert loo["cv"] == "leave-one-photo-out" and "leave-one-photo-out" in format_probe(loo)


def test_probe_folds_are_checked_before_any_work(tmp_path, capsys):
    """probe.folds 1 (no photo left to fit on), negative, a bool or a string: refused by the pre-training's
    config check and by the probe command."""
    from fitgap.pretrain import build_spec

    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo_pretrain.yaml")
    base = [f"data.train={tmp_path}", "probe.images=null"]
    for bad in ("1", "-2", "true", "'3'"):
        with pytest.raises(C.ConfigError, match="probe.folds"):
            build_spec(C.load_config(demo, base + [f"probe.folds={bad}"], DEFAULTS), 1)
    for good in ("0", "3"):
        assert build_spec(C.load_config(demo, base + [f"probe.folds={good}"], DEFAULTS), 1) is not None
    with pytest.raises(SystemExit) as exc:
        main(["--ckpt", str(tmp_path / "missing.pt"), "--folds", "1"])
    assert exc.value.code == 2


def test_probe_photos_are_the_held_out_ones_and_the_installed_debian_ones(tmp_path):
    """export_probe_photos: the 4 held-out photos and every listed Debian photo that is installed, bytes
    unchanged, but the second view of a scene (TWINS); unlisted files are not taken; a photo whose
    package went away is removed from the folder; with no package installed, the 4 alone and a count of 0."""
    from fitgap.photos import HELDOUT, OPENCV_PHOTOS, TWINS, export_probe_photos, missing_debian_photos

    opencv, palapeli = tmp_path / "opencv", tmp_path / "palapeli"
    opencv.mkdir(), palapeli.mkdir()
    listed = ["apple.jpg", "baboon.jpg", "aloeL.jpg", "aloeR.jpg"]
    assert set(listed) <= set(OPENCV_PHOTOS) and "aloeR.jpg" in TWINS
    for name in listed + ["lena_drawing.jpg"]:
        (opencv / name).write_bytes(name.encode())
    (palapeli / "bee.jpg").write_bytes(b"bee")
    (palapeli / "notes.txt").write_bytes(b"x")
    folder, n = export_probe_photos(str(tmp_path / "cache"), str(opencv), str(palapeli))
    assert n == 4 and sorted(os.listdir(folder)) == sorted(HELDOUT + ["apple.jpg", "baboon.jpg", "aloeL.jpg", "bee.jpg"])
    assert (tmp_path / "cache" / "probe" / "baboon.jpg").read_bytes() == b"baboon.jpg"
    missing = missing_debian_photos(str(opencv), str(palapeli))
    assert "apple.jpg" not in missing and "aero1.jpg" in missing and len(missing) == len(OPENCV_PHOTOS) - 4
    (palapeli / "bee.jpg").unlink()
    assert missing_debian_photos(str(opencv), str(palapeli))[-1] == "palapeli-data's photos"
    folder, n = export_probe_photos(str(tmp_path / "cache"), str(tmp_path / "none"), str(palapeli))
    assert n == 0 and sorted(os.listdir(folder)) == sorted(HELDOUT)


def test_probe_tells_a_trace_detector_from_a_blind_encoder(tmp_path):
    paths = noise_photos(str(tmp_path / "photos"))
    kw = dict(patch=32, device="cpu", per_image=12, window=160, quantize=True, mean=[128.0] * 3,
              std=[40.0] * 3, seed=0)
    good = probe_encoder(SpectrumEncoder(), paths, RATIOS, **kw)
    blind = probe_encoder(ConstantEncoder(), paths, RATIOS, **kw)
    assert good["ratio_chance"] == blind["ratio_chance"] == 0.25
    assert good["photos"] == 4 and good["n_test"] == 4 * 4 * 12
    assert good["ratio_acc"] >= 0.8, good
    assert blind["ratio_acc"] <= 0.3, blind
    assert set(good["per_ratio"]) == {"2/3", "3/4", "5/4", "3/2"}
    assert set(good["phase"]["3/2"]) == {"acc", "chance"} and good["phase"]["3/2"]["chance"] >= 0.25
    assert good["no_patch"] == []
    assert probe_encoder(SpectrumEncoder(), paths, RATIOS, **kw)["ratio_acc"] == good["ratio_acc"]


def test_reference_statistic_reads_what_the_patches_carry(tmp_path):
    """The hand-made statistic scored beside the encoder: on noise photos (the trace in every patch) it
    reads the ratio and the phase of every ratio with q >= 3, whatever the encoder; on flat photos
    (no trace anywhere) it reads neither, so an encoder at chance there is not a failure to learn."""
    from fitgap.probe import format_probe, probe_table, trace_statistic

    paths = noise_photos(str(tmp_path / "photos"))
    kw = dict(patch=32, device="cpu", per_image=48, window=160, quantize=True, mean=[128.0] * 3,
              std=[40.0] * 3, seed=0)
    blind = probe_encoder(ConstantEncoder(), paths, RATIOS, reference=True, **kw)
    ref = blind["reference"]
    assert blind["ratio_acc"] <= 0.3 and ref["ratio_acc"] >= 0.8, ref
    for name in ("2/3", "3/4", "5/4"):  # q >= 3; a period-2 energy pattern is symmetric in its phase
        assert ref["phase"][name]["acc"] >= 2 * blind["phase"][name]["chance"], (name, ref["phase"][name])
        assert blind["phase"][name]["acc"] <= 1.5 * blind["phase"][name]["chance"]
    assert set(ref["per_ratio"]) == set(blind["per_ratio"])
    assert probe_encoder(SpectrumEncoder(), paths, RATIOS, reference=True, **kw)["reference"] == ref
    assert "reference" not in probe_encoder(ConstantEncoder(), paths, RATIOS, **kw)
    text = format_probe(blind)
    assert "the hand-made trace statistic on the same patches (reference, no learning): ratio accuracy" in text
    assert f"{ref['ratio_acc']:.3f}" in text and f"3/4 {ref['phase']['3/4']['acc']:.2f}" in text
    table = probe_table(blind)
    assert len({row.count("|") for row in table}) == 1 and len(table) == 2 + len(RATIOS) + 1
    assert "phase: reference statistic" in table[0] and "phase: before" not in table[0]  # no baseline here
    row = next(t for t in table if t.startswith("| 3/4 |"))
    p = ref["phase"]["3/4"]
    assert f"{p['acc']:.2f} ({p['acc'] / p['chance']:.1f}x) |" in row
    # flat photos: constant patches, no residual, nothing to read
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((200, 200, 3), 60 + 40 * i, np.uint8)).save(flat / f"flat_{i}.png")
    r = probe_encoder(ConstantEncoder(), sorted(str(p) for p in flat.iterdir()), RATIOS, reference=True, **kw)
    assert r["reference"]["ratio_acc"] <= 0.3
    assert all(v["acc"] <= 1.5 * r["phase"][k]["chance"] for k, v in r["reference"]["phase"].items())
    # patches too small for the statistic's 3x3 residual: said, not a crash at the end of a run
    tiny = probe_encoder(ConstantEncoder(), paths, RATIOS, **dict(kw, patch=2, per_image=4), reference=True)
    assert "reference" not in tiny and "no reference statistic (2-px patches" in format_probe(tiny)
    # the phase features: one log mean per row class and per column class of the period
    x = torch.rand(5, 3, 32, 32)
    assert trace_statistic(x, 4).shape == (5, 8) and trace_statistic(x).shape == (5, 2 * 16)


def test_probe_chance_counts_only_the_classes_present(tmp_path):
    from fitgap.probe import format_probe, majority_rate

    assert majority_rate(np.array([0, 0, 0, 1])) == 0.75 and majority_rate(np.array([2, 3, 2, 3])) == 0.5
    # 1/8 gives no patch from 160-px windows at 32 px (a 20-px destination): named, not counted
    paths = noise_photos(str(tmp_path / "photos"))
    r = probe_encoder(ConstantEncoder(), paths, RATIOS + [Fraction(8, 1)], 32, "cpu", 6, 160, True,
                      [128.0] * 3, [40.0] * 3)
    assert r["no_patch"] == ["8/1"] and "8/1" not in r["per_ratio"] and "8/1" not in r["phase"]
    assert r["ratio_chance"] == 0.25  # four ratios with patches, equally many each
    assert "no patch at 8/1" in format_probe(r)
    for name, v in r["phase"].items():
        q = Fraction(name).denominator
        assert v["chance"] >= 1 / q ** 2


def test_probe_needs_two_photos(tmp_path):
    paths = noise_photos(str(tmp_path / "photos"), n=1)
    with pytest.raises(ValueError, match="leave-one-photo-out needs >= 2"):
        probe_encoder(ConstantEncoder(), paths, RATIOS, 32, "cpu", 4, 160, True, [128.0] * 3, [40.0] * 3)


def test_probe_command_reads_a_pretraining_checkpoint(tmp_path, capsys):
    folder = str(tmp_path / "photos")
    noise_photos(folder, n=3, size=120)
    cfg = C.load_config(None, ["model.backbone=resnet10t", "model.highpass=true", 'ratios.list=["3/4","3/2"]',
                               "plan.patch=16", "probe.window=120"], DEFAULTS)
    model = ContrastiveModel(build_encoder("resnet10t", highpass=True), 32, 8)
    path = str(tmp_path / "checkpoint.pt")
    torch.save({"model": model.state_dict(), "config": cfg}, path)
    report = main(["--ckpt", path, "--images", folder, "--patches", "3"])
    assert report["photos"] == 3 and report["n_test"] == 3 * 2 * 3
    assert 0.0 <= report["ratio_acc"] <= 1.0 and report["ratio_chance"] == 0.5
    assert 0.0 <= report["initial"]["ratio_acc"] <= 1.0  # the encoder as pre-training started
    assert set(report["initial"]["phase"]) == set(report["phase"])  # its phases too, beside the trained ones
    out = capsys.readouterr().out
    assert "probe (3 held-out photos, leave-one-photo-out, 18 patches)" in out
    assert "the encoder before pre-training: ratio accuracy" in out and ", phase 3/4 " in out
    assert set(report["reference"]["phase"]) == set(report["phase"])  # the hand-made statistic beside it
    assert "(reference, no learning)" in out
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", path, "--images", folder, "--patches", "0"])
    assert e.value.code == 2 and "--patches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ckpt", path])  # no probe.images in the checkpoint and no --images
    assert "--images" in capsys.readouterr().err
    detector = str(tmp_path / "detector.pt")
    torch.save({"model": model.state_dict(), "config": {"model": cfg["model"], "normalize": cfg["normalize"]}},
               detector)
    with pytest.raises(SystemExit):
        main(["--ckpt", detector, "--images", folder])
    assert "not a pre-training checkpoint" in capsys.readouterr().err


def test_probe_counts_and_reports_skipped_photos(tmp_path):
    from fitgap.probe import format_probe

    paths = noise_photos(str(tmp_path / "photos"), n=3)
    bad = tmp_path / "photos" / "broken.png"
    bad.write_bytes(b"\x89PNG not an image")
    r = probe_encoder(ConstantEncoder(), paths + [str(bad)], RATIOS, 32, "cpu", 4, 160, True, [128.0] * 3,
                      [40.0] * 3)
    assert r["photos"] == 3 and r["skipped"]["count"] == 1 and "broken.png: unreadable" in r["skipped"]["examples"][0]
    assert "skipped 1 photo(s): broken.png" in format_probe(r)


def test_pool_grid_keeps_where_features_are():
    """pool_grid=2: the final map is averaged into 2x2 cells and flattened, so an input whose only
    difference is the quadrant it sits in gives different features (a global average cannot tell)."""
    from fitgap.errors import InputError

    torch.manual_seed(0)
    glob, grid = build_encoder("test_resnet", stem_pool=False), build_encoder("test_resnet", stem_pool=False, pool_grid=2)
    grid.load_state_dict(glob.state_dict())
    assert grid.num_features == 4 * glob.num_features
    glob.eval(), grid.eval()
    x = torch.zeros(2, 3, 64, 64)
    x[0, :, 8:24, 8:24] = 1.0  # the same blob, top-left ...
    x[1, :, 40:56, 40:56] = 1.0  # ... and bottom-right
    with torch.no_grad():
        fg, fq = glob(x), grid(x)
        m = glob.backbone.forward_features(x)
    assert fq.shape == (2, grid.num_features)
    assert torch.allclose(fg[0], fg[1], atol=1e-5)  # global average: the same
    assert not torch.allclose(fq[0], fq[1], atol=1e-3)  # the grid: not
    # the flattened cells are the quadrant means of the map, and their mean is the global average
    assert torch.allclose(fq.view(2, -1, 4).mean(2), m.mean((2, 3)), atol=1e-5)
    with pytest.raises(InputError, match="pool_grid"):
        build_encoder("test_resnet", pool_grid=0)


def test_phase_stats_encoder_averages_every_position_class():
    """fitgap_phase_stats12 (a timm-registered model): the head reads, per pixel feature, its mean over
    each position class (y mod 12, x mod 12) of the patch, cut to a multiple of 12 from the origin."""
    import timm

    from fitgap.errors import InputError
    from fitgap.models import PhaseStats

    assert {"fitgap_phase_stats12", "fitgap_phase_stats24"} <= set(timm.list_models("fitgap_*"))
    torch.manual_seed(0)
    enc = build_encoder("fitgap_phase_stats12", highpass=True)
    net = enc.backbone
    assert isinstance(net, PhaseStats) and net.block == 12 and enc.num_features == 512
    net.eval()
    x = torch.rand(2, 3, 50, 40)  # cut to 48 x 36
    with torch.no_grad():
        f = net.pixel(x)[..., :48, :36]
        want = torch.stack([f[:, :, i::12, j::12].mean((2, 3)) for i in range(12) for j in range(12)], 2)
        got = net.phase_means(x)
    assert got.shape == (2, 16 * 144)
    assert torch.allclose(got, want.flatten(1), atol=1e-6)  # channel c * 144 + (y mod 12) * 12 + (x mod 12)
    with torch.no_grad():
        enc.eval()
        assert enc(torch.rand(3, 3, 96, 96)).shape == (3, 512)
    with pytest.raises(InputError, match="smaller than its block 12"):
        net.phase_means(torch.rand(1, 3, 11, 40))
    with pytest.raises(InputError, match="an encoder only"):
        timm.create_model("fitgap_phase_stats12", num_classes=2)
    with pytest.raises(InputError, match="model.pretrained"):
        build_encoder("fitgap_phase_stats12", pretrained=True)
    with pytest.raises(InputError, match="model.stem_stride: fitgap_phase_stats12 works at full resolution"):
        build_encoder("fitgap_phase_stats12", stem_stride=2)


def test_phase_stats_keeps_float32_class_means_under_bfloat16_autocast():
    """Under bf16 autocast the convolutions run in bf16, the class means stay float32 (the phase is a
    few per cent between them)."""
    torch.manual_seed(0)
    net = build_encoder("fitgap_phase_stats12").backbone.eval()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.pixel(x).dtype == torch.bfloat16
        assert net.phase_means(x).dtype == torch.float32
        assert torch.isfinite(net(x).float()).all()


def test_normalised_highpass_reads_the_arrangement_of_the_residual_not_its_energy():
    """model.highpass_norm: the Laplacian residual divided by its RMS per image, so an image with more
    (or less) fine detail everywhere (a contrast scaled by c) gives the same input to the backbone,
    while the pattern of the residual still reaches it; refused without model.highpass."""
    from fitgap.errors import InputError
    from fitgap.models import encoder_from_config

    torch.manual_seed(0)
    enc = build_encoder("resnet10t", highpass=True, highpass_norm=True).eval()
    x = torch.randn(2, 3, 32, 32)
    r = enc.prefilter(x)
    assert torch.allclose(r.pow(2).mean((1, 2, 3)), torch.ones(2), atol=1e-3)
    for c in (0.5, 3.0):
        assert torch.allclose(enc.prefilter(c * x), r, atol=1e-3)
        with torch.no_grad():
            assert torch.allclose(enc(c * x), enc(x), atol=1e-3)
    plain = build_encoder("resnet10t", highpass=True).eval()
    assert not torch.allclose(plain.prefilter(3.0 * x), plain.prefilter(x), atol=1e-3)  # energy is read there
    shuffled = x.flatten(2)[:, :, torch.randperm(32 * 32)].view_as(x)  # the same values, arranged otherwise
    with torch.no_grad():
        assert not torch.allclose(enc(shuffled), enc(x), atol=1e-2)
    with pytest.raises(InputError, match="needs model.highpass"):
        encoder_from_config({"backbone": "resnet10t", "highpass": False, "highpass_norm": True})


def test_highpass_norm_both_gives_the_residual_and_its_normalised_copy():
    """model.highpass_norm: both -> 6 input channels, the raw residual (energy readable) and the
    normalised one (arrangement alone); the backbone's stem takes them; other values refused."""
    from fitgap.errors import InputError
    from fitgap.models import HighPass

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    both, raw, norm = HighPass("both"), HighPass(False), HighPass(True)
    out = both(x)
    assert out.shape == (2, 6, 32, 32) and both.out_chans == 6
    assert torch.equal(out[:, :3], raw(x)) and torch.allclose(out[:, 3:], norm(x))
    assert torch.allclose(both(3.0 * x)[:, 3:], out[:, 3:], atol=1e-3)  # the normalised half ignores energy
    assert not torch.allclose(both(3.0 * x)[:, :3], out[:, :3])  # the raw half reads it
    for name, side in (("resnet10t", 32), ("fitgap_phase_stats12", 48)):
        enc = build_encoder(name, highpass=True, highpass_norm="both").eval()
        with torch.no_grad():
            assert torch.isfinite(enc(torch.randn(2, 3, side, side))).all()
    with pytest.raises(InputError, match="false, true or both"):
        build_encoder("resnet10t", highpass=True, highpass_norm="yes")
    from fitgap.models import encoder_from_config

    enc = encoder_from_config({"backbone": "resnet10t", "highpass": True, "highpass_both": True})
    assert enc.prefilter.out_chans == 6 and enc.backbone.conv1[0].in_channels == 6
    with pytest.raises(InputError, match="needs model.highpass"):
        encoder_from_config({"backbone": "resnet10t", "highpass": False, "highpass_both": True})
