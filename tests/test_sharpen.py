"""The sharpen/blur augmentation (augment.sharpen) of pre-training and of fine-tuning: the filter against
a direct numpy reference, shift-invariance (the period and phase of a rescaling trace survive it), the
strengths' determinism, the configs' refusals, and that contrastive_step and the fine-tuning's epoch feed
the model what they promise."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fitgap import config as C
from fitgap import distributed as D
from fitgap import pretrain
from fitgap.pretrain import check_sharpen, sharpen, sharpen_strengths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo_pretrain.yaml")


def reference(x, a):
    """x + a (x - blur(x)), blur = [1 2 1]^T [1 2 1] / 16 with mirrored borders, summed tap by tap."""
    x = x.astype(np.float64)
    n, c, h, w = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    k = np.array([1.0, 2.0, 1.0]) / 4.0
    blurred = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            blurred += k[dy] * k[dx] * p[:, :, dy:dy + h, dx:dx + w]
    return x + np.asarray(a, np.float64).reshape(-1, 1, 1, 1) * (x - blurred)


def test_matches_the_numpy_reference_and_its_end_points():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 12, 9, generator=g)
    a = torch.tensor([-1.0, -0.3, 0.0, 0.7, 2.5], dtype=torch.float64)
    got = sharpen(x, a)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), reference(x.numpy(), a.numpy()), atol=1e-5)
    assert torch.equal(got[2], x[2])                      # a = 0: unchanged
    assert not torch.allclose(got[0], x[0], atol=1e-3)    # a = -1: the blur itself
    # channels_last in, channels_last out, same numbers
    cl = sharpen(x.contiguous(memory_format=torch.channels_last), a)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, got)


def test_shift_invariant_so_the_trace_keeps_its_phase():
    """Shifting a patch by q pixels shifts its filtered copy by q (away from the mirrored border): two
    patches of one rescaled image at periodic offsets stay one class, at other offsets stay apart."""
    g = torch.Generator().manual_seed(1)
    big = torch.randn(1, 3, 40, 40, generator=g)
    a = torch.tensor([0.8], dtype=torch.float64)
    whole = sharpen(big, a)
    for dy, dx in ((0, 0), (3, 0), (2, 5)):
        crop = big[:, :, 10 + dy:30 + dy, 10 + dx:30 + dx]
        got = sharpen(crop, a)[:, :, 1:-1, 1:-1]
        want = whole[:, :, 11 + dy:29 + dy, 11 + dx:29 + dx]
        torch.testing.assert_close(got, want)


def test_the_period_of_a_rescaled_image_survives_and_its_smoothness_does_not():
    """An image enlarged by 3/2 (p/q = 2/3) with the op's arithmetic: the residual energy per column class
    mod 3 keeps its order under any strength drawn from [-1, 1], while the overall residual energy (what
    a smoothness reading would use) moves by far more than the differences between the classes."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(2)
    src = torch.rand(1, 3, 64, 64, generator=g)
    big = F.interpolate(src, scale_factor=1.5, mode="bilinear", align_corners=False)  # 96 px, period 3
    lap = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]).expand(3, 1, 3, 3)

    def class_energy(x):
        r = F.conv2d(x, lap, groups=3)[0].pow(2).mean(0)           # (h, w), border dropped
        return torch.stack([r[:, c::3].mean() for c in range(3)])

    base = class_energy(big)
    order = torch.argsort(base)
    totals = []
    for a in (-1.0, -0.5, 0.5, 1.0):
        e = class_energy(sharpen(big, torch.tensor([a], dtype=torch.float64)))
        assert torch.equal(torch.argsort(e), order), (a, e, base)
        totals.append(float(e.mean()))
    assert max(totals) / min(totals) > 3.0
    assert float(base.max() / base.min()) < max(totals) / min(totals)


def test_strengths_depend_on_seed_rank_and_step_alone():
    a = sharpen_strengths(-1.0, 1.0, 64, seed=3, rank=0, step=7)
    assert a.shape == (64,) and float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert float(a.std()) > 0.3                                         # spread over the band
    torch.manual_seed(123)                                              # the global RNG plays no part
    assert torch.equal(a, sharpen_strengths(-1.0, 1.0, 64, seed=3, rank=0, step=7))
    for other in ({"seed": 4, "rank": 0, "step": 7}, {"seed": 3, "rank": 1, "step": 7},
                  {"seed": 3, "rank": 0, "step": 8}):
        assert not torch.equal(a, sharpen_strengths(-1.0, 1.0, 64, **other))
    assert torch.equal(sharpen_strengths(0.5, 0.5, 4, 0, 0, 0), torch.full((4,), 0.5, dtype=torch.float64))
    for seed in (2**40, -5):  # any seed the config takes gives a valid generator seed
        b = sharpen_strengths(-1.0, 1.0, 8, seed=seed, rank=7, step=10**6)
        assert float(b.min()) >= -1.0 and float(b.max()) <= 1.0


@pytest.mark.parametrize("value", [[1.0], [-2.0, 1.0], [1.0, 0.0], [0.0, 9.0], ["a", 1], True, 0.5, [True, 1]])
def test_bad_bands_are_refused_naming_the_key(value):
    with pytest.raises(C.ConfigError, match="augment.sharpen"):
        check_sharpen(value)


def test_the_config_refuses_a_bad_band_before_work(tmp_path):
    check_sharpen(None)
    check_sharpen([-1, 1])
    cfg = C.load_config(DEMO, [f"data.train={tmp_path}", "probe.images=null"], pretrain.DEFAULTS)
    assert cfg["augment"]["sharpen"] == [-1.0, 1.0]  # the demo pre-trains with it
    pretrain.build_spec(cfg, 1)
    bad = C.load_config(DEMO, [f"data.train={tmp_path}", "probe.images=null", "augment.sharpen=[1, -1]"],
                        pretrain.DEFAULTS)
    with pytest.raises(C.ConfigError, match="augment.sharpen"):
        pretrain.build_spec(bad, 1)
    paper = C.load_config(os.path.join(ROOT, "configs", "pretrain.yaml"), [], pretrain.DEFAULTS)
    assert paper["augment"]["sharpen"] is None       # the paper's config keeps the op's patches as they are


def test_contrastive_step_feeds_the_model_the_sharpened_patches(tmp_path, monkeypatch):
    from rescale_ext import pack_windows

    rng = np.random.default_rng(0)
    pixels, offsets, sizes = pack_windows([rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)])
    batch = {"pixels": pixels, "offsets": offsets, "sizes": sizes, "ratios": torch.tensor([[3, 2]]),
             "corners": torch.tensor([[0, 0, 0], [0, 2, 2], [0, 4, 0]]), "labels": torch.tensor([0, 0, 1])}
    monkeypatch.setattr(pretrain, "supcon_loss", lambda z, labels, t, t_base=None, **kw: z.sum())
    seen = []
    model = lambda x: seen.append(x.clone()) or x.flatten(1)  # noqa: E731
    for band in ("null", "[-1, 1]"):
        cfg = C.load_config(DEMO, ["plan.patch=8", f"data.train={tmp_path}", f"augment.sharpen={band}"],
                            pretrain.DEFAULTS)
        pretrain.contrastive_step(model, batch, cfg, torch.device("cpu"), D.DistInfo(), step=5)
    plain, augmented = seen
    want = sharpen(plain, sharpen_strengths(-1.0, 1.0, 3, cfg["seed"], 0, 5))
    torch.testing.assert_close(augmented, want)
    assert not torch.allclose(augmented, plain, atol=1e-3)


def test_finetuning_refuses_a_bad_band_and_the_demo_uses_the_pretraining_band(tmp_path):
    from fitgap import finetune

    ft = os.path.join(ROOT, "configs", "demo_finetune.yaml")
    cfg = C.load_config(ft, ["init=null"], finetune.DEFAULTS)
    pre = C.load_config(os.path.join(ROOT, "configs", "demo_pretrain.yaml"), [], pretrain.DEFAULTS)
    assert cfg["augment"]["sharpen"] == pre["augment"]["sharpen"] == [-1.0, 1.0]  # both detectors, as pre-training
    finetune.check(cfg, 1)
    finetune.check(C.load_config(ft, ["init=null", "augment.sharpen=null"], finetune.DEFAULTS), 1)
    bad = C.load_config(ft, ["init=null", "augment.sharpen=[0.5, -0.5]"], finetune.DEFAULTS)
    with pytest.raises(C.ConfigError, match="augment.sharpen"):
        finetune.check(bad, 1)
    # refused by finetune.py before any data is read or any run folder is made
    out = tmp_path / "runs"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "finetune.py"), "--config", ft, "init=null",
         f"out_dir={out}", "data.root=/nonexistent", "augment.sharpen=[0, 9]"],
        cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "augment.sharpen" in r.stderr, r.stderr[-2000:]
    assert not out.exists()


def test_a_finetuning_epoch_feeds_the_model_the_sharpened_crops_drawn_by_step():
    """With the band set, the crops the model sees at step s are sharpen(crops, strengths(seed, rank, s)):
    the same draw a resumed run makes at that step, whatever the global generator did before."""
    from fitgap import finetune

    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0.0, 1.0, 0.0, 1.0]), [])
               for _ in range(2)]

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def forward(self, x):
            self.seen.append(x.detach().clone())
            return x.mean((1, 2, 3)) * 0 + self.w

    seen = {}
    for band in ("null", "[-1, 1]"):
        cfg = C.load_config(os.path.join(ROOT, "configs", "demo_finetune.yaml"),
                            ["init=null", f"augment.sharpen={band}", "seed=7", "train.log_every=1000"],
                            finetune.DEFAULTS)
        model = Recorder()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        torch.manual_seed(123 if band == "null" else 321)  # the global stream plays no part
        state = {"epoch": 0, "step": 5}
        finetune.train_one_epoch(model, batches, opt, torch.amp.GradScaler("cpu", enabled=False), [0.0] * 10,
                                 cfg, D.DistInfo(), state, None)
        assert state["step"] == 7
        seen[band] = model.seen
    for k, (x, _, _) in enumerate(batches):
        assert torch.equal(seen["null"][k], x)
        want = sharpen(x, sharpen_strengths(-1.0, 1.0, 4, 7, 0, 5 + k))
        torch.testing.assert_close(seen["[-1, 1]"][k], want)
        assert not torch.allclose(seen["[-1, 1]"][k], x, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_the_cpu(dtype):
    """On the GPU, in the dtypes pre-training builds patches in (bf16 with amp), NCHW and channels_last."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 32, 32, generator=g)
    a = sharpen_strengths(-1.0, 1.0, 6, seed=0, rank=0, step=1)
    want = sharpen(x, a)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = sharpen(x.to("cuda", dtype).contiguous(memory_format=layout), a)
        assert got.dtype == dtype and got.is_contiguous(memory_format=layout)
        tol = 1e-5 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(got.float().cpu(), want, atol=tol, rtol=tol)
