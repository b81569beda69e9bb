"""SupCon: its invariants (identical features, labels=None, permutations, no-positive anchors) and an
independent float64 implementation."""
import math

import pytest
import torch
import torch.nn.functional as F

from fitgap.losses import supcon_loss


def supcon_float64(features, labels, t, t_base):
    """Direct per-anchor sums, no masking tricks."""
    f = features.double()
    n = f.shape[0]
    total = 0.0
    for i in range(n):
        others = [k for k in range(n) if k != i]
        denom = sum(math.exp(float(f[i] @ f[k]) / t) for k in others)
        pos = [k for k in others if labels[k] == labels[i]]
        if not pos:
            continue
        total += -(t / t_base) * sum(float(f[i] @ f[k]) / t - math.log(denom) for k in pos) / len(pos)
    return total / n


def feats(n=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_matches_float64_reference():
    f = feats()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3, 3, 1, 2, 4])
    for t, tb in ((0.1, 0.1), (0.07, 0.07), (0.5, 0.07)):
        got = supcon_loss(f, labels, t, tb)
        assert abs(got.item() - supcon_float64(f, labels, t, tb)) < 1e-4


def test_identical_features_give_log_n_minus_1():
    b, v = 6, 2
    f = F.normalize(torch.ones(b, v, 16), dim=-1)
    for t, tb in ((0.1, 0.1), (0.07, 0.1)):
        got = supcon_loss(f, torch.arange(b), t, tb)
        assert abs(got.item() - (t / tb) * math.log(v * b - 1)) < 1e-5


def test_labels_none_equals_arange():
    f = F.normalize(torch.randn(5, 2, 8), dim=-1)
    assert torch.allclose(supcon_loss(f, None), supcon_loss(f, torch.arange(5)))


def test_permutation_invariance():
    f = feats(10)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 1])
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(supcon_loss(f, labels), supcon_loss(f[perm], labels[perm]), atol=1e-6)


def test_anchor_without_positive_contributes_zero_not_nan():
    f = feats(4)
    labels = torch.tensor([0, 1, 2, 3])  # nobody has a positive
    loss = supcon_loss(f, labels)
    assert torch.isfinite(loss) and loss.item() == 0.0
    labels = torch.tensor([0, 0, 1, 2])
    expected = supcon_float64(f, labels, 0.1, 0.1)
    assert abs(supcon_loss(f, labels).item() - expected) < 1e-5


def test_fp32_under_bf16_autocast():
    f = feats(8).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supcon_loss(f.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(f.grad).all()


def test_contrast_set_with_offset_equals_plain_loss_on_concatenation():
    """The gathered form (anchors = a slice of the contrast set) averages to the full loss."""
    f = feats(12)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    full = supcon_loss(f, labels)
    parts = [supcon_loss(f[i:i + 4], labels[i:i + 4], contrast=f, contrast_labels=labels, anchor_offset=i)
             for i in (0, 4, 8)]
    assert abs(sum(p.item() for p in parts) / 3 - full.item()) < 1e-6


def test_wrong_label_count_is_refused():
    with pytest.raises(ValueError, match="labels"):
        supcon_loss(feats(4), torch.tensor([0, 1]))


def test_base_temperature_is_a_config_key_that_reaches_the_loss(monkeypatch, tmp_path):
    import os

    import numpy as np

    from fitgap import config as C
    from fitgap import distributed as D
    from fitgap import pretrain
    from rescale_ext import pack_windows

    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo_pretrain.yaml")
    seen = {}

    def fake_loss(z, labels, t, t_base=None, **kw):
        seen["t"] = (t, t_base)
        return z.sum()

    monkeypatch.setattr(pretrain, "supcon_loss", fake_loss)
    pixels, offsets, sizes = pack_windows([np.zeros((40, 40, 3), np.uint8)])
    batch = {"pixels": pixels, "offsets": offsets, "sizes": sizes, "ratios": torch.tensor([[3, 2]]),
             "corners": torch.tensor([[0, 0, 0], [0, 2, 2]]), "labels": torch.tensor([0, 0])}
    for override, want in ((["loss.base_temperature=0.07"], (0.1, 0.07)), ([], (0.1, None))):
        cfg = C.load_config(demo, ["plan.patch=8", f"data.train={tmp_path}", *override], pretrain.DEFAULTS)
        pretrain.contrastive_step(lambda x: x.flatten(1), batch, cfg, torch.device("cpu"), D.DistInfo())
        assert seen["t"] == want
    # the loss itself: t / t_base scales it
    f = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert supcon_loss(f, y, 0.1, 0.07).item() == pytest.approx(supcon_loss(f, y, 0.1).item() * 0.1 / 0.07, rel=1e-5)
    bad = C.load_config(demo, ["loss.base_temperature=-1", f"data.train={tmp_path}"], pretrain.DEFAULTS)
    with pytest.raises(C.ConfigError, match="loss.base_temperature"):
        pretrain.build_spec(bad, 1)
