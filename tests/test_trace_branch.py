"""The trace branch (fitgap.models.TraceStats): fixed per-position-class statistics of the residual that
keep where in the rescaling period a patch sits, and the encoder that carries it beside its backbone."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from fitgap.errors import InputError
from fitgap.models import HighPass, TraceStats, build_encoder, encoder_from_config, min_input_side
from fitgap.probe import probe_encoder

from test_probe import ConstantEncoder, noise_photos


def _rows(stats: torch.Tensor, s: int) -> torch.Tensor:
    """The row-class part of every offset: [N, len(OFFSETS), s]."""
    return stats.view(stats.shape[0], len(TraceStats.OFFSETS), 2, s)[:, :, 0]


def test_trace_statistics_are_anchored_at_the_patch_origin():
    """On an image that repeats every 12 rows, a patch one row lower sees every row class one place
    earlier: its row-class means are the first patch's rolled by one (up to the few rows whose local
    window meets the patch border), and clearly not the same numbers unrolled."""
    s = 12
    rows = torch.randn(s, 80)
    img = rows.repeat(8, 1)[None, None].expand(1, 3, -1, -1).contiguous()  # [1, 3, 96, 80], period 12 in y
    branch, hp = TraceStats(s, 4), HighPass()
    a = _rows(branch.statistics(hp(img[..., 5:69, :64])), s)
    b = _rows(branch.statistics(hp(img[..., 6:70, :64])), s)
    rolled = (b - a.roll(-1, dims=2)).abs().mean()
    unrolled = (b - a).abs().mean()
    assert rolled < 0.1 * unrolled, (float(rolled), float(unrolled))


def test_trace_statistics_ignore_contrast_and_stay_float32_under_autocast():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 40, 48)
    branch, hp = TraceStats(12, 8), HighPass()
    f = branch.statistics(hp(x))
    assert f.shape == (3, 2 * 12 * len(TraceStats.OFFSETS)) and f.dtype == torch.float32
    assert torch.allclose(branch.statistics(hp(4.0 * x)), f, atol=1e-3)  # the local RMS divides contrast out
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert branch.statistics(hp(x).bfloat16()).dtype == torch.float32
    assert not torch.allclose(branch.statistics(hp(x.flip(2))), f, atol=1e-3)  # it does read the arrangement


def test_trace_statistics_read_the_phase_that_a_blind_encoder_cannot(tmp_path):
    """On noise photos rescaled by shrinks and enlargements, a probe of the fixed statistics reads the
    phase of every ratio with q >= 3 at >= 2x chance, where a constant encoder stays at chance."""

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hp, self.branch = HighPass(), TraceStats(12, 4)

        def forward(self, x):
            return self.branch.statistics(self.hp(x))

    paths = noise_photos(str(tmp_path / "photos"), n=3, size=160)
    ratios = [Fraction(2, 3), Fraction(3, 4), Fraction(5, 4), Fraction(4, 3)]
    kw = dict(patch=48, device="cpu", per_image=32, window=160, quantize=True, mean=[128.0] * 3,
              std=[40.0] * 3, seed=0)
    good, blind = probe_encoder(Fixed(), paths, ratios, **kw), probe_encoder(ConstantEncoder(), paths, ratios, **kw)
    for name in ("2/3", "3/4", "5/4", "4/3"):
        chance = blind["phase"][name]["chance"]
        assert good["phase"][name]["acc"] >= 2 * chance, (name, good["phase"][name])
        assert blind["phase"][name]["acc"] <= 1.5 * chance


def test_encoder_with_a_trace_branch():
    """model.trace_features adds the branch's features after the backbone's; it reads the residual, so it
    is refused without model.highpass; inputs smaller than one period of classes are refused by name."""
    enc = encoder_from_config({"backbone": "resnet10t", "highpass": True, "highpass_both": True,
                               "trace_features": 32, "trace_block": 12})
    plain = encoder_from_config({"backbone": "resnet10t", "highpass": True, "highpass_both": True})
    assert enc.num_features == plain.num_features + 32
    assert isinstance(enc.trace, TraceStats) and plain.trace is None
    assert min_input_side(enc) == 18 and min_input_side(plain) == 1
    enc.eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 64, 64))
        assert out.shape == (2, plain.num_features + 32) and torch.isfinite(out).all()
        assert enc(torch.randn(1, 3, 18, 18)).shape == (1, plain.num_features + 32)
        with pytest.raises(InputError, match="too small for the trace branch"):
            enc(torch.randn(1, 3, 64, 17))
    with pytest.raises(InputError, match="needs model.highpass"):
        build_encoder("resnet10t", trace_features=8)
    wide = build_encoder("test_resnet", highpass=True, trace_features=4, trace_block=64)  # its period > 58 px
    assert min_input_side(wide) == 70 and wide.num_features == build_encoder("test_resnet").num_features + 4
    for bad, key in ((dict(trace_features=-1), "trace_features"), (dict(trace_features=8, trace_block=1), "trace_block")):
        with pytest.raises(InputError, match=key):
            build_encoder("resnet10t", highpass=True, **bad)


def test_configs_too_small_for_the_trace_branch_are_refused_before_any_work(tmp_path):
    """Pre-training checks plan.patch against the encoder's smallest side, fine-tuning its crops, with
    the key named; the branch without the residual input is refused the same way."""
    from fitgap import config as C
    from fitgap.models import check_encoder_config
    from fitgap.pretrain import DEFAULTS, build_spec

    demo = "configs/demo_pretrain.yaml"
    data = [f"data.train={tmp_path}", "probe.images=null"]  # a folder that exists: the photos need a demo run
    build_spec(C.load_config(demo, [*data, "model.trace_features=256"], DEFAULTS), 1)  # 32 px: enough
    with pytest.raises(C.ConfigError, match="plan.patch: 16 px is smaller than the encoder takes"):
        build_spec(C.load_config(demo, [*data, "model.trace_features=256", "plan.patch=16"], DEFAULTS), 1)
    with pytest.raises(C.ConfigError, match="model.trace_features: the trace branch reads the Laplacian"):
        build_spec(C.load_config(demo, [*data, "model.trace_features=8", "model.highpass=false",
                                        "model.highpass_both=false"], DEFAULTS), 1)
    model = {"backbone": "resnet10t", "highpass": True, "trace_features": 16, "trace_block": 12}
    check_encoder_config(model, {"patch": 32, "eval.size": 64})
    with pytest.raises(C.ConfigError, match="eval.size: 16 px"):
        check_encoder_config(model, {"patch": 32, "eval.size": 16})
    with pytest.raises(C.ConfigError, match="model.trace_block"):
        check_encoder_config(dict(model, trace_block=1), {"patch": 32})
    check_encoder_config(dict(model, trace_features=0), {"patch": 8})  # no branch: any side
