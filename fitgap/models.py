"""timm encoders with a projection head (pre-training) or a binary head (detection)."""
from __future__ import annotations

import os
from typing import Optional

import timm
from timm.models import register_model
import torch
import torch.nn as nn
import torch.nn.functional as F
from .errors import InputError, MissingInput


class HighPass(nn.Module):
    """A fixed 3x3 Laplacian per channel (optional input filter, off in the paper config): it
    removes the image content that the rescaling trace rides on, which speeds up learning at small
    scale. normalize=True divides each image's residual by its RMS over the image (all channels), so
    that how much fine detail a patch has (its residual energy) cannot be read, only how the residual
    is arranged: the periodic pattern a rescaling leaves. normalize="both" gives both, the residual and
    its normalised copy (6 channels), so the energy and the arrangement are separate inputs."""

    EPS = 1e-4  # on the mean square: residuals of flat patches stay small instead of being blown up

    def __init__(self, normalize=False):
        super().__init__()
        if normalize not in (False, True, "both"):
            raise InputError(f"model.highpass_norm: false, true or both, got {normalize!r}")
        k = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]) / 4.0
        self.register_buffer("weight", k.expand(3, 1, 3, 3).clone(), persistent=False)
        self.normalize = normalize
        self.out_chans = 6 if normalize == "both" else 3

    def forward(self, x):
        r = F.conv2d(x, self.weight.to(x.dtype), padding=1, groups=3)
        if not self.normalize:
            return r
        n = r * torch.rsqrt(r.float().pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.EPS).to(r.dtype)
        return torch.cat([r, n], 1) if self.normalize == "both" else n


class PhaseStats(nn.Module):
    """A small encoder built for the rescaling trace: local features of every pixel at full resolution
    (3x3 conv, 1x1 conv, batch norm, ReLU), averaged separately for every position class (y mod s,
    x mod s) of the patch (a pixel unshuffle by s, then the mean over cells), logged, and mapped to
    `num_features` by one linear layer. For every period q dividing s, the phase of a periodic trace
    is which position classes carry more of a local statistic. A shift of the patch by q permutes the
    class means, but the period-q pattern the trace leaves in them stays the same, while the photo
    content is averaged over every cell of a class before anything is learned from it.
    Registered with timm as "fitgap_phase_stats12" / "fitgap_phase_stats24" (s = 12: periods 2, 3, 4,
    6; s = 24 adds 8)."""

    def __init__(self, block: int = 12, width: int = 16, num_features: int = 512, in_chans: int = 3,
                 num_classes: int = 0, **_):
        super().__init__()
        if num_classes:
            raise InputError("fitgap_phase_stats: an encoder only (num_classes=0)")
        self.block, self.num_features = block, num_features
        self.pixel = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True), nn.Conv2d(width, width, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Linear(width * block * block, num_features), nn.BatchNorm1d(num_features),
                                  nn.ReLU(inplace=True))

    def phase_means(self, x):
        """[N, width * s * s]: the mean of every pixel feature over each position class."""
        f, s = self.pixel(x), self.block
        h, w = f.shape[-2:]
        if h < s or w < s:
            raise InputError(f"fitgap_phase_stats: inputs of {h}x{w} px are smaller than its block {s}")
        # float32 means: the phase is a difference of a few per cent between class means, below
        # what bfloat16 (8 bits of mantissa) keeps under autocast
        return F.pixel_unshuffle(f[..., : h - h % s, : w - w % s].float(), s).mean((2, 3))

    def forward(self, x):
        return self.head(torch.log(self.phase_means(x) + 1e-3))


def _phase_stats(block):
    def create(pretrained=False, **kwargs):
        if pretrained:
            raise InputError("fitgap_phase_stats: no pretrained weights exist")
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        return PhaseStats(block=block, **kwargs)
    create.__name__ = f"fitgap_phase_stats{block}"
    create.__module__ = __name__
    return register_model(create)


fitgap_phase_stats12 = _phase_stats(12)
fitgap_phase_stats24 = _phase_stats(24)


def _first_conv(model: nn.Module) -> Optional[nn.Conv2d]:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    return None


def build_encoder(name: str, pretrained: bool = False, weights: Optional[str] = None,
                  stem_stride: Optional[int] = None, highpass: bool = False,
                  stem_pool: bool = True, pool_grid: int = 1, highpass_norm: bool = False) -> nn.Module:
    """timm backbone with num_classes=0 (pooled features); `.num_features` is set on the result.

    pretrained=True is refused (nothing is downloaded at run time): give a local `weights` file.
    stem_stride overrides the stride of the first convolution; stem_pool=False removes the stem's
    max-pool (ResNet family): a 3x3 max over a period-3 pattern is flat, so the pool erases the
    periodic rescaling pattern that the first layers could otherwise see. pool_grid=k > 1 averages
    the final feature map into a k x k grid and flattens it (features x k^2) instead of one global
    average: cells 2^n px apart hold different phases of a period-3 pattern, and a global average
    mixes them."""
    if pretrained:
        raise InputError("model.pretrained: weights are never downloaded; set model.weights to a "
                         "local state_dict file instead")
    try:  # HighPass (in Encoder) checks highpass_norm; "both" gives the stem 6 channels
        backbone = timm.create_model(name, pretrained=False, num_classes=0,
                                     **({"in_chans": 6} if highpass_norm == "both" else {}))
    except RuntimeError as exc:
        raise InputError(f"model.backbone: unknown timm model {name!r} ({exc})") from None
    if weights:
        if not os.path.isfile(weights):
            raise MissingInput(f"model.weights: {weights!r} does not exist")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        result = backbone.load_state_dict(state, strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.startswith(("fc.", "head", "classifier"))]
        if result.missing_keys or unexpected:
            raise InputError(f"model.weights: {weights} does not match {name}: missing "
                             f"{result.missing_keys[:5]}, unexpected {unexpected[:5]}")
    if stem_stride is not None:
        if isinstance(backbone, PhaseStats):
            raise InputError(f"model.stem_stride: {name} works at full resolution (its position classes "
                             f"are pixels); leave stem_stride null")
        conv = _first_conv(backbone)
        if conv is None:
            raise InputError(f"model.stem_stride: {name} has no Conv2d")
        conv.stride = (stem_stride, stem_stride)
    if not stem_pool:
        if not isinstance(getattr(backbone, "maxpool", None), nn.MaxPool2d):
            raise InputError(f"model.stem_pool: {name} has no stem max-pool to remove")
        backbone.maxpool = nn.Identity()
    if not (isinstance(pool_grid, int) and pool_grid >= 1):
        raise InputError(f"model.pool_grid: a positive integer, got {pool_grid!r}")
    if pool_grid > 1 and not hasattr(backbone, "forward_features"):
        raise InputError(f"model.pool_grid: {name} has no forward_features (a feature map) to pool on a grid")
    return Encoder(backbone, highpass, pool_grid, highpass_norm)


class Encoder(nn.Module):
    """Optional fixed input filter + timm backbone -> pooled features [N, num_features]."""

    def __init__(self, backbone: nn.Module, highpass: bool = False, pool_grid: int = 1, highpass_norm: bool = False):
        super().__init__()
        if highpass_norm and not highpass:
            raise InputError("model.highpass_norm: normalises the Laplacian residual; it needs model.highpass: true")
        self.prefilter = HighPass(normalize=highpass_norm) if highpass else nn.Identity()
        self.backbone = backbone
        self.pool_grid = pool_grid
        # timm's num_features is not always what forward() returns (MobileNetV3's head): measure it.
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            self.num_features = int(self(torch.zeros(1, 3, 64, 64)).shape[1])
            backbone.train(was)

    def forward(self, x):
        if self.pool_grid == 1:
            return self.backbone(self.prefilter(x))
        f = self.backbone.forward_features(self.prefilter(x))
        return F.adaptive_avg_pool2d(f, self.pool_grid).flatten(1)


def encoder_from_config(model_cfg, load_weights: bool = True) -> nn.Module:
    """The encoder a config describes. load_weights=False leaves model.weights unread: for an encoder
    whose weights come from a checkpoint next (a checkpoint holds every weight and never needs the file
    its run started from)."""
    return build_encoder(model_cfg["backbone"], model_cfg.get("pretrained", False),
                         model_cfg.get("weights") if load_weights else None, model_cfg.get("stem_stride"),
                         model_cfg.get("highpass", False), model_cfg.get("stem_pool", True),
                         model_cfg.get("pool_grid", 1), highpass_mode(model_cfg))


def highpass_mode(model_cfg) -> object:
    """HighPass's normalize argument from a model config: model.highpass_both feeds the residual and its
    normalised copy; else model.highpass_norm (true: the normalised one alone)."""
    if model_cfg.get("highpass_both", False):
        if not model_cfg.get("highpass", False):
            raise InputError("model.highpass_both: feeds the Laplacian residual twice; it needs model.highpass: true")
        return "both"
    return bool(model_cfg.get("highpass_norm", False))


def min_side_for_backbone(name: str) -> int:
    """min_input_side from an encoder's name alone (for an exported model): the block of
    fitgap_phase_stats<s>, else 1."""
    import re

    m = re.fullmatch(r"fitgap_phase_stats(\d+)", name or "")
    return int(m.group(1)) if m else 1


def min_input_side(model: nn.Module) -> int:
    """The smallest crop side `model` accepts: the phase-statistics encoder needs at least one block
    (s x s pixels); the timm backbones take any size."""
    return max([m.block for m in model.modules() if isinstance(m, PhaseStats)] + [1])


class ContrastiveModel(nn.Module):
    """encoder -> MLP projection -> L2 normalisation."""

    def __init__(self, encoder: nn.Module, proj_hidden: int = 2048, proj_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        f = encoder.num_features
        self.head = nn.Sequential(nn.Linear(f, proj_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(proj_hidden, proj_dim))

    def forward(self, x):
        return F.normalize(self.head(self.encoder(x)).float(), dim=1)


class Detector(nn.Module):
    """encoder -> Linear(features, 1): the logit of P(fake)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.num_features, 1)

    def forward(self, x):
        return self.classifier(self.encoder(x)).squeeze(1)
