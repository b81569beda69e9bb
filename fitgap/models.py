"""timm encoders with a projection head (pre-training) or a binary head (detection)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

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


class TraceStats(nn.Module):
    """A branch beside the backbone that reads where in the rescaling period a patch sits, at the cost
    of a few multiplications per pixel. Fixed part (no weights): the grey Laplacian residual r of the
    input (the first three channels, which HighPass makes the residual) divided by its local RMS (over
    LOCAL x LOCAL pixels, so that a few strong edges do not outweigh the rest of the patch), its products
    with shifted copies of itself r(y, x) r(y + dy, x + dx) for the offsets in OFFSETS, divided by the
    patch's mean energy, and averaged per ROW class (y mod s, over every column) and per COLUMN class
    (x mod s, over every row): 2 s numbers per offset. Bilinear rescaling is separable, so where a row
    sits in the period of p/q decides how it relates to its neighbours; the class means keep that and
    average the photo content over every row (column) of a class. Learned part: a batch norm of those
    numbers (affine=False: it only standardises), Linear to `num_features`, batch norm, ReLU.
    A shift of the patch by q cyclically shifts the class means by q: the period-q pattern stays, its
    position in the s classes is the phase."""

    OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0))
    EPS = 1e-6
    LOCAL = 5    # window of the local RMS; 3 and 7 read the shrinks' phase less well at 32-64 px
    FLOOR = 1e-4  # of the patch's mean energy, added to the local one: flat areas are not blown up

    def __init__(self, block: int = 12, num_features: int = 256):
        super().__init__()
        if not (isinstance(block, int) and block >= 2):
            raise InputError(f"model.trace_block: an integer >= 2 (the period of the position classes), got {block!r}")
        if not (isinstance(num_features, int) and num_features >= 1):
            raise InputError(f"model.trace_features: a positive integer, got {num_features!r}")
        self.block, self.num_features = block, num_features
        self.in_features = 2 * block * len(self.OFFSETS)
        self.head = nn.Sequential(nn.BatchNorm1d(self.in_features, affine=False),
                                  nn.Linear(self.in_features, num_features), nn.BatchNorm1d(num_features),
                                  nn.ReLU(inplace=True))

    @staticmethod
    def side_for(block: int) -> int:
        """The smallest input side for period `block`: one full period of classes after the border and the
        offsets."""
        return block + 6

    @property
    def min_side(self) -> int:
        return self.side_for(self.block)

    def _classes(self, n: int, start: int, device) -> torch.Tensor:
        """[n, s]: column k averages the positions i (patch pixel start + i) with (start + i) mod s == k."""
        c = F.one_hot((torch.arange(n, device=device) + start) % self.block, self.block).float()
        return c / c.sum(0).clamp_min(1.0)

    def statistics(self, r: torch.Tensor) -> torch.Tensor:
        """[N, 2 s len(OFFSETS)]: the fixed part, in float32 (the phase is a difference of a few per cent
        between class means, below what bfloat16 keeps; autocast is turned off here)."""
        with torch.autocast(r.device.type, enabled=False):
            return self._statistics(r)

    def _statistics(self, r: torch.Tensor) -> torch.Tensor:
        g = r[:, :3].float().mean(1, keepdim=True)[..., 1:-1, 1:-1]  # HighPass pads by 1: drop that border
        h, w = g.shape[-2:]
        if h - 2 < self.block or w - 4 < self.block:
            raise InputError(f"model.trace_features: inputs of {h + 2}x{w + 2} px are too small for the trace "
                             f"branch (period {self.block}: at least {self.min_side} px a side)")
        e = g.pow(2)
        local = F.avg_pool2d(e, self.LOCAL, 1, self.LOCAL // 2, count_include_pad=False)
        g = (g * torch.rsqrt(local + self.FLOOR * e.mean((2, 3), keepdim=True) + self.EPS))[:, 0]
        energy = g.pow(2).mean((1, 2), keepdim=True) + self.EPS
        a = g[:, : h - 2, 2: w - 2]  # anchors: patch rows 1.., columns 3..; every offset stays inside
        rows, cols = self._classes(h - 2, 1, g.device), self._classes(w - 4, 3, g.device)
        out = []
        for dy, dx in self.OFFSETS:
            prod = a * g[:, dy: h - 2 + dy, 2 + dx: w - 2 + dx] / energy
            out += [prod.mean(2) @ rows, prod.mean(1) @ cols]
        return torch.cat(out, 1)

    def forward(self, r):
        return self.head(self.statistics(r))


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
                  stem_pool: bool = True, pool_grid: int = 1, highpass_norm: bool = False,
                  trace_features: int = 0, trace_block: int = 12) -> nn.Module:
    """timm backbone with num_classes=0 (pooled features); `.num_features` is set on the result.

    pretrained=True is refused (nothing is downloaded at run time): give a local `weights` file.
    stem_stride overrides the stride of the first convolution; stem_pool=False removes the stem's
    max-pool (ResNet family): a 3x3 max over a period-3 pattern is flat, so the pool erases the
    periodic rescaling pattern that the first layers could otherwise see. pool_grid=k > 1 averages
    the final feature map into a k x k grid and flattens it (features x k^2) instead of one global
    average: cells 2^n px apart hold different phases of a period-3 pattern, and a global average
    mixes them. trace_features=n > 0 adds a TraceStats branch of n features (period trace_block) beside the
    backbone's pooled features; it reads the Laplacian residual, so it needs highpass=True."""
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
    trace = None
    if not (isinstance(trace_features, int) and not isinstance(trace_features, bool) and trace_features >= 0):
        raise InputError(f"model.trace_features: 0 (no trace branch) or a positive integer, got {trace_features!r}")
    if trace_features:
        if not highpass:
            raise InputError("model.trace_features: the trace branch reads the Laplacian residual; it needs "
                             "model.highpass: true")
        trace = TraceStats(trace_block, trace_features)
    return Encoder(backbone, highpass, pool_grid, highpass_norm, trace)


class Encoder(nn.Module):
    """Optional fixed input filter + timm backbone -> pooled features [N, num_features], followed by the
    trace branch's features when there is one."""

    def __init__(self, backbone: nn.Module, highpass: bool = False, pool_grid: int = 1, highpass_norm: bool = False,
                 trace: Optional[TraceStats] = None):
        super().__init__()
        if highpass_norm and not highpass:
            raise InputError("model.highpass_norm: normalises the Laplacian residual; it needs model.highpass: true")
        self.prefilter = HighPass(normalize=highpass_norm) if highpass else nn.Identity()
        self.backbone = backbone
        self.pool_grid = pool_grid
        self.trace = trace
        # timm's num_features is not always what forward() returns (MobileNetV3's head): measure it.
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            if trace is not None:
                trace.eval()
            side = max(64, trace.min_side if trace is not None else 0)  # a trace_block above 58 needs more
            self.num_features = int(self(torch.zeros(1, 3, side, side)).shape[1])
            backbone.train(was)
            if trace is not None:
                trace.train(was)

    def forward(self, x):
        r = self.prefilter(x)
        if self.pool_grid == 1:
            f = self.backbone(r)
        else:
            f = F.adaptive_avg_pool2d(self.backbone.forward_features(r), self.pool_grid).flatten(1)
        return f if self.trace is None else torch.cat([f, self.trace(r).to(f.dtype)], 1)


def encoder_from_config(model_cfg, load_weights: bool = True) -> nn.Module:
    """The encoder a config describes. load_weights=False leaves model.weights unread: for an encoder
    whose weights come from a checkpoint next (a checkpoint holds every weight and never needs the file
    its run started from)."""
    return build_encoder(model_cfg["backbone"], model_cfg.get("pretrained", False),
                         model_cfg.get("weights") if load_weights else None, model_cfg.get("stem_stride"),
                         model_cfg.get("highpass", False), model_cfg.get("stem_pool", True),
                         model_cfg.get("pool_grid", 1), highpass_mode(model_cfg),
                         model_cfg.get("trace_features", 0), model_cfg.get("trace_block", 12))


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


def min_side_for_config(model_cfg) -> int:
    """min_input_side from an encoder's model config alone (an exported model carries it): the backbone's
    (min_side_for_backbone) or, with a trace branch, one period of its classes, whichever is larger."""
    side = min_side_for_backbone(model_cfg.get("backbone", ""))
    if model_cfg.get("trace_features"):
        side = max(side, TraceStats.side_for(int(model_cfg.get("trace_block", 12))))
    return side


def check_encoder_config(model_cfg, sides) -> None:
    """Refuse, before any work starts, the trace options of a wrong type, the trace branch without
    model.highpass, and any input side (sides: {config key: pixels}) smaller than the encoder takes."""
    from . import config as C

    tf, tb = model_cfg.get("trace_features", 0), model_cfg.get("trace_block", 12)
    C.require(isinstance(tf, int) and not isinstance(tf, bool) and tf >= 0, "model.trace_features",
              f"0 (no trace branch) or a positive integer, got {tf!r}")
    C.require(isinstance(tb, int) and not isinstance(tb, bool) and tb >= 2, "model.trace_block",
              f"an integer >= 2, got {tb!r}")
    C.require(not tf or model_cfg.get("highpass", False), "model.trace_features",
              "the trace branch reads the Laplacian residual; it needs model.highpass: true")
    need = min_side_for_config(model_cfg)
    for key, side in sides.items():
        C.require(side >= need, key, f"{side} px is smaller than the encoder takes ({need} px a side with "
                                     f"model.backbone={model_cfg.get('backbone')!r}, model.trace_features={tf})")


def min_input_side(model: nn.Module) -> int:
    """The smallest crop side `model` accepts: the phase-statistics encoder needs at least one block
    (s x s pixels), the trace branch one period of classes (TraceStats.min_side); the timm backbones take
    any size."""
    return max([m.block for m in model.modules() if isinstance(m, PhaseStats)]
               + [m.min_side for m in model.modules() if isinstance(m, TraceStats)] + [1])


class ContrastiveModel(nn.Module):
    """encoder -> MLP projection -> L2 normalisation.

    backbone_head=True (an encoder with a trace branch only) adds a second projection of the backbone's
    features alone, without the trace branch's: forward then returns both embeddings, (whole, backbone),
    each to get its own SupCon loss, so the backbone has to learn the classes itself instead of leaving
    them to the branch's fixed statistics."""

    def __init__(self, encoder: nn.Module, proj_hidden: int = 2048, proj_dim: int = 128,
                 backbone_head: bool = False):
        super().__init__()
        self.encoder = encoder
        f = encoder.num_features
        self.head = nn.Sequential(nn.Linear(f, proj_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(proj_hidden, proj_dim))
        self.backbone_head = None
        if backbone_head:
            trace = getattr(encoder, "trace", None)
            if trace is None:
                raise InputError("loss.backbone_weight: a second projection of the backbone alone needs an "
                                 "encoder with a trace branch (model.trace_features > 0); without one the "
                                 "backbone is the whole encoder")
            self.backbone_features = f - trace.num_features
            self.backbone_head = nn.Sequential(nn.Linear(self.backbone_features, proj_hidden), nn.ReLU(inplace=True),
                                               nn.Linear(proj_hidden, proj_dim))

    def forward(self, x):
        f = self.encoder(x)
        z = F.normalize(self.head(f).float(), dim=1)
        if self.backbone_head is None:
            return z
        return z, F.normalize(self.backbone_head(f[:, : self.backbone_features]).float(), dim=1)


class RealDistance(nn.Module):
    """How far a feature vector lies from the features of the real images a detector was fine-tuned
    on, as a logit: the Mahalanobis distance d under a Gaussian fitted to those reals (shrunk covariance,
    Ledoit-Wolf; W with W^T W = its inverse), read as (log d - center) / scale, where center and scale
    come from held-out reals (logit 0 at the distance 95 % of them stay under). Two-sided: fakes that
    differ from the reals in any direction of the feature space score high, including directions
    opposite to the one that separates the fakes fine-tuned on. Fitted by fitgap.realdist."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("whiten", torch.eye(dim))
        self.register_buffer("center", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, f):
        with torch.autocast(f.device.type, enabled=False):  # a small distance's log needs float32
            z = (f.float() - self.mean) @ self.whiten.t()
            d2 = (z * z).sum(1)
            return (0.5 * torch.log(d2 + 1e-12) - self.center) / self.scale


SCORES = ("head", "distance")


def has_distance(state: Dict[str, Any]) -> bool:
    """Whether a Detector state dict holds a fitted RealDistance (its `distance.` buffers)."""
    return any(k.startswith("distance.") for k in state)


def without_distance(state: Dict[str, Any]) -> Dict[str, Any]:
    """A Detector state dict without its fitted RealDistance: the encoder and the head."""
    return {k: v for k, v in state.items() if not k.startswith("distance.")}


class Detector(nn.Module):
    """encoder -> Linear(features, 1): the logit of P(fake). With `distance` (a fitted RealDistance,
    the fine-tuning's `score: distance`), the logit is the features' distance from the training
    reals instead; the head is still what fine-tuning trains."""

    def __init__(self, encoder: nn.Module, distance: Optional[RealDistance] = None):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.num_features, 1)
        self.distance = distance

    def forward(self, x):
        f = self.encoder(x)
        if self.distance is not None:
            return self.distance(f)
        return self.classifier(f).squeeze(1)
