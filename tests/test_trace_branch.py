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


def test_a_second_projection_reads_the_backbone_alone():
    """loss.backbone_weight's model: forward returns the whole encoder's embedding and one of the backbone's
    features alone; a change to the trace branch moves the first and never the second. Without a trace
    branch the second projection is refused by name."""
    from fitgap.models import ContrastiveModel

    torch.manual_seed(0)
    enc = encoder_from_config({"backbone": "test_resnet", "highpass": True, "trace_features": 8, "trace_block": 12})
    model = ContrastiveModel(enc, 16, 8, backbone_head=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        z, zb = model(x)
        assert z.shape == zb.shape == (4, 8)
        assert torch.allclose(z.norm(dim=1), torch.ones(4)) and torch.allclose(zb.norm(dim=1), torch.ones(4))
        assert model.backbone_features == enc.num_features - 8
        for p in enc.trace.parameters():
            p.add_(1.0)
        z2, zb2 = model(x)
    assert torch.equal(zb2, zb) and not torch.allclose(z2, z)
    plain = ContrastiveModel(build_encoder("test_resnet", highpass=True, trace_features=8), 16, 8).eval()
    assert isinstance(plain(x), torch.Tensor) and plain.backbone_head is None
    with pytest.raises(InputError, match="loss.backbone_weight: .*trace branch"):
        ContrastiveModel(build_encoder("test_resnet"), 16, 8, backbone_head=True)


def test_the_backbone_loss_is_added_with_its_weight(monkeypatch):
    """contrastive_step: SupCon of the whole embedding + backbone_weight x SupCon of the backbone's, the
    same labels for both; a pre-training checkpoint with the second projection still loads into a detector."""
    from fitgap import distributed as D
    from fitgap import pretrain as P
    from fitgap.detector import load_pretrained_encoder
    from fitgap.losses import supcon_loss
    from fitgap.models import ContrastiveModel, Detector

    torch.manual_seed(0)
    model = ContrastiveModel(build_encoder("test_resnet", highpass=True, trace_features=8), 16, 8,
                             backbone_head=True).eval()
    x = torch.randn(8, 3, 24, 24)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    monkeypatch.setattr(P, "build_patches", lambda batch, cfg, device: x)
    cfg = {"loss": {"temperature": 0.1, "base_temperature": None, "gather": True, "backbone_weight": 0.5},
           "augment": {"sharpen": None}, "train": {"amp": "none"}, "seed": 0}
    info = D.DistInfo()  # one process: no gather
    with torch.no_grad():
        loss, n = P.contrastive_step(model, {"labels": labels}, cfg, torch.device("cpu"), info)
        z, zb = model(x)
    assert n == 8
    whole, alone = supcon_loss(z, labels, 0.1, None), supcon_loss(zb, labels, 0.1, None)
    assert torch.allclose(loss, whole + 0.5 * alone) and float(alone) > 0
    detector = Detector(build_encoder("test_resnet", highpass=True, trace_features=8))
    path = "/dev/null"
    monkeypatch.setattr("fitgap.detector.ckpt.load", lambda p: {"model": model.state_dict()})
    result = load_pretrained_encoder(detector, path)
    assert any(k.startswith("backbone_head.") for k in result["unexpected"])
    for k, v in detector.encoder.state_dict().items():
        assert torch.equal(v, model.encoder.state_dict()[k])
    extra = dict(model.state_dict(), **{"other.weight": torch.zeros(1)})
    monkeypatch.setattr("fitgap.detector.ckpt.load", lambda p: {"model": extra})
    with pytest.raises(InputError, match="unexpected .*other.weight"):
        load_pretrained_encoder(Detector(build_encoder("test_resnet", highpass=True, trace_features=8)), path)


def test_backbone_weight_is_checked_before_any_work(tmp_path):
    from fitgap import config as C
    from fitgap.pretrain import DEFAULTS, build_spec

    demo = "configs/demo_pretrain.yaml"
    data = [f"data.train={tmp_path}", "probe.images=null"]
    build_spec(C.load_config(demo, [*data, "model.trace_features=8", "loss.backbone_weight=1.0"], DEFAULTS), 1)
    with pytest.raises(C.ConfigError, match="loss.backbone_weight: needs model.trace_features > 0"):
        build_spec(C.load_config(demo, [*data, "model.trace_features=0", "loss.backbone_weight=1.0"], DEFAULTS), 1)
    for bad in ("-1", "true", "abc", ".nan"):
        with pytest.raises(C.ConfigError, match="loss.backbone_weight"):
            build_spec(C.load_config(demo, [*data, "model.trace_features=8", f"loss.backbone_weight={bad}"],
                                     DEFAULTS), 1)
