"""The controls of benchmarks/residual_control.py and the pixdiff denoiser's training range."""
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_phase_randomised_residual_keeps_every_channels_power_spectrum_and_mean_but_not_its_layout():
    import residual_control as RC

    rng = np.random.default_rng(0)
    d = rng.standard_normal((32, 48, 3)).cumsum(1) + np.array([3.0, -1.0, 0.5])  # coloured, with a mean
    p = RC.phase_randomised(d, np.random.default_rng(1))
    assert p.shape == d.shape and np.isrealobj(p)
    spec = lambda a: np.abs(np.fft.rfft2(a, axes=(0, 1)))  # noqa: E731
    np.testing.assert_allclose(spec(p), spec(d), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p.mean((0, 1)), d.mean((0, 1)), atol=1e-9)
    assert abs(np.corrcoef(p[..., 0].ravel(), d[..., 0].ravel())[0, 1]) < 0.5  # the layout is gone
    # one draw of phases for all channels: the channels' cross-correlation survives
    same = np.repeat(rng.standard_normal((32, 48, 1)), 3, axis=2)
    q = RC.phase_randomised(same, np.random.default_rng(2))
    np.testing.assert_allclose(q[..., 0], q[..., 2], atol=1e-9)


def test_white_control_keeps_the_residuals_mean_and_energy_per_channel():
    import residual_control as RC

    rng = np.random.default_rng(0)
    d = rng.standard_normal((128, 128, 3)) * np.array([1.0, 4.0, 9.0]) + np.array([2.0, 0.0, -5.0])
    w = RC.white(d, np.random.default_rng(3))
    np.testing.assert_allclose(w.mean((0, 1)), d.mean((0, 1)), atol=0.3)  # 4 standard errors of 9/128
    np.testing.assert_allclose(w.std((0, 1)), d.std((0, 1)), rtol=0.03)


def test_controls_are_seeded_uint8_tiles_as_far_from_their_reals_as_the_fakes():
    import residual_control as RC
    from fitgap import minibench as M

    rng = np.random.default_rng(0)
    reals = [rng.integers(40, 200, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    fakes = [np.clip(r.astype(int) + rng.integers(-20, 21, r.shape), 0, 255).astype(np.uint8) for r in reals]
    a, b = RC.controls(reals, fakes, seed=4), RC.controls(reals, fakes, seed=4)
    for name in ("phases", "white"):
        assert all(np.array_equal(x, y) for x, y in zip(a[name], b[name]))
        assert all(x.dtype == np.uint8 and x.shape == r.shape for x, r in zip(a[name], reals))
        assert abs(M.psnr(reals, a[name]) - M.psnr(reals, fakes)) < 0.5
        assert not any(np.array_equal(x, f) for x, f in zip(a[name], fakes))


def test_residual_energy_ratio_skips_flat_reals_and_reads_added_noise():
    from fitgap import minibench as M

    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert M.laplacian_energy(flat) == 0.0
    smooth = np.repeat(np.repeat(textured[::4, ::4], 4, 0), 4, 1)
    # the flat pair (0 energy) is left out; the smoothed copy has less residual energy than the original
    assert M.residual_energy_ratio([textured, flat], [smooth, textured]) < 1.0
    assert M.residual_energy_ratio([smooth], [textured]) > 1.0


def test_denoiser_trains_only_on_the_steps_it_is_told(monkeypatch):
    from fitgap import minibench as M

    seen = []
    forward = M.TinyUNet.forward

    def spy(self, x, t):
        seen.append(t.clone())
        return forward(self, x, t)

    monkeypatch.setattr(M.TinyUNet, "forward", spy)
    tiles = [np.random.default_rng(0).integers(0, 256, (M.TILE, M.TILE, 3), dtype=np.uint8)]
    M.train_denoiser(tiles, 20, seed=0, t_max=7)
    t = torch.cat(seen)
    assert int(t.min()) >= 1 and int(t.max()) <= 7 and len(set(t.tolist())) > 3
    seen.clear()
    M.train_denoiser(tiles, 20, seed=0)
    assert int(torch.cat(seen).max()) > 7  # the whole schedule by default
    for bad in (0, M.DIFFUSION_STEPS + 1):
        with pytest.raises(ValueError, match="t_max"):
            M.train_denoiser(tiles, 1, seed=0, t_max=bad)


def test_control_folders_are_rebuilt_when_a_run_left_them_incomplete(tmp_path):
    import residual_control as RC
    from fitgap import minibench as M

    rng = np.random.default_rng(0)
    src, out = tmp_path / "src", tmp_path / "out"
    for kind in M.FAMILIES:
        M._save(str(src / kind / "0_real"), [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)])
        M._save(str(src / kind / "1_fake"), [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)])
    RC.build(str(src), str(out))
    victim = out / "phases" / "tconv" / "1_fake" / "0002.png"
    victim.unlink()  # as if killed while writing
    kept = (out / "white" / "nearest" / "1_fake" / "0000.png").stat().st_mtime_ns
    RC.build(str(src), str(out))
    assert victim.exists()  # rebuilt
    assert (out / "white" / "nearest" / "1_fake" / "0000.png").stat().st_mtime_ns == kept  # complete ones kept


def test_the_builds_denoiser_trains_on_sdedits_range_for_three_times_the_autoencoders_steps(monkeypatch):
    from fitgap import minibench as M

    calls = []
    monkeypatch.setattr(M, "train_denoiser", lambda tiles, steps, seed, t_max=M.DIFFUSION_STEPS:
                        calls.append((steps, seed, t_max)) or "unet")
    assert M.train_pixdiff([], 300, seed=3) == "unet"
    assert calls == [(900, 3, 35)]
    assert M.PIXDIFF_T_MAX == round(M.SDEDIT_STRENGTH * M.DIFFUSION_STEPS)  # SDEdit starts at t = 35


def test_a_benchmark_cache_built_for_another_minibench_version_is_cleared_once(tmp_path, capsys):
    from fitgap import minibench as M

    out = tmp_path / "cache"
    for d in ("plain", "jpeg_fakes", "notes"):
        (out / d).mkdir(parents=True)
        (out / d / "f.png").write_bytes(b"x")
    M.refresh_derived(str(out), ["plain", "jpeg_fakes"])  # no stamp: built before stamps, so stale
    assert not (out / "plain").exists() and not (out / "jpeg_fakes").exists()
    assert (out / "notes" / "f.png").exists()  # what it does not own is left
    assert (out / "MINIBENCH_VERSION").read_text().strip() == str(M.VERSION)
    assert "rebuilding plain, jpeg_fakes" in capsys.readouterr().out
    (out / "plain").mkdir()
    M.refresh_derived(str(out), ["plain", "jpeg_fakes"])  # current: kept
    assert (out / "plain").exists()
    (out / "MINIBENCH_VERSION").write_text(f"{M.VERSION - 1}\n")
    M.refresh_derived(str(out), ["plain", "jpeg_fakes"])
    assert not (out / "plain").exists()


def test_control_folders_are_rebuilt_after_the_minibench_changes(tmp_path):
    import residual_control as RC
    from fitgap import minibench as M

    rng = np.random.default_rng(0)
    src, out = tmp_path / "src", tmp_path / "out"
    for kind in M.FAMILIES:
        for label in ("0_real", "1_fake"):
            M._save(str(src / kind / label), [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)])
    RC.build(str(src), str(out))
    before = RC.read_folder(str(out / "phases" / "pixdiff" / "1_fake"))
    M._save(str(src / "pixdiff" / "1_fake"), [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)])
    (out / "MINIBENCH_VERSION").write_text("4\n")  # the fakes came from another build
    RC.build(str(src), str(out))
    after = RC.read_folder(str(out / "phases" / "pixdiff" / "1_fake"))
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))


def test_other_camera_set_rebuilds_a_family_left_half_written_and_after_a_version_change(tmp_path, monkeypatch):
    import source_shift as S
    from fitgap import minibench as M

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    trained = []
    monkeypatch.setattr(S, "other_camera_tiles", lambda: tiles)
    monkeypatch.setattr(M, "photo_tiles", lambda names: tiles)
    monkeypatch.setattr(M, "train_generator", lambda kind, train, steps, seed: trained.append(kind) or kind)
    monkeypatch.setattr(M, "generate", lambda kind, model, t, seed: [255 - a for a in t])
    out = tmp_path / "ss"
    S.build(str(out))
    assert trained == list(M.FAMILIES) and len(list((out / "jpeg_fakes" / "ldm" / "1_fake").glob("*.png"))) == 3
    trained.clear()
    (out / "jpeg_fakes" / "pixdiff" / "1_fake" / "0002.png").unlink()  # as if killed while writing
    S.build(str(out))
    assert trained == ["pixdiff"]  # the whole families kept
    trained.clear()
    (out / "MINIBENCH_VERSION").write_text(f"{M.VERSION - 1}\n")
    S.build(str(out))
    assert trained == list(M.FAMILIES)
