"""The batch plan: positives, phases, ratio groups and corners valid for the op."""
from fractions import Fraction

import numpy as np
import pytest
import torch

import rescale_ext
from rescale_ext.reference import dst_length, source_taps
from fitgap.config import ConfigError
from fitgap.plan import PlanSpec, first_clean, layout, make_plan, max_window, source_extent
from fitgap.ratios import ratios_from_config

SPECS = [
    PlanSpec([Fraction(3, 2), Fraction(4, 3), Fraction(5, 4), Fraction(7, 4)], patch=16, images=8),
    PlanSpec([Fraction(2, 3), Fraction(3, 4), Fraction(5, 3)], patch=9, images=12, images_per_ratio=3,
             phases_per_image=3, patches_per_phase=3),
    PlanSpec(ratios_from_config({"range": [1.0, 2.0], "max_denominator": 8}), patch=32, images=16),
    PlanSpec([Fraction(3, 2)], patch=8, images=6, patches_per_phase=1),
]


@pytest.mark.parametrize("spec", SPECS)
def test_plan_invariants(spec):
    for seed in range(20):
        plan = make_plan(spec, np.random.default_rng(seed))
        assert len(plan.windows) == spec.images
        assert plan.corners.shape[0] == spec.images * spec.patches_per_image
        slot, y0, x0 = plan.corners.T
        p, q = plan.ratios[slot, 0], plan.ratios[slot, 1]
        labels = plan.labels
        # label equality <=> same ratio and corners congruent mod q
        same_label = labels[:, None] == labels[None, :]
        same_class = ((plan.ratio_index[slot][:, None] == plan.ratio_index[slot][None, :])
                      & ((y0 % q)[:, None] == (y0 % q)[None, :])
                      & ((x0 % q)[:, None] == (x0 % q)[None, :]))
        assert np.array_equal(same_label, same_class)
        # every anchor has a positive
        np.fill_diagonal(same_label, False)
        assert same_label.any(axis=1).all()
        # every image carries more than one phase
        for s in range(spec.images):
            m = slot == s
            assert len({(a % q[m][0], b % q[m][0]) for a, b in zip(y0[m], x0[m])}) >= 2
        # every ratio used appears in >= 2 images
        counts = np.bincount(plan.ratio_index, minlength=len(spec.ratios))
        assert ((counts == 0) | (counts >= 2)).all()
        # corners valid for the op, and the op accepts them
        for s in range(spec.images):
            m = slot == s
            hd = dst_length(int(plan.windows[s]), int(p[m][0]), int(q[m][0]))
            assert (y0[m] >= 0).all() and (y0[m] + spec.patch <= hd).all()
            assert (x0[m] >= 0).all() and (x0[m] + spec.patch <= hd).all()
        windows = [np.zeros((w, w, 3), np.uint8) for w in plan.windows]
        pixels, offsets, sizes = rescale_ext.pack_windows(windows)
        out = rescale_ext.rescale_gather(pixels, offsets, sizes, torch.from_numpy(plan.ratios),
                                         torch.from_numpy(plan.corners), spec.patch)
        assert out.shape[0] == plan.corners.shape[0]


@pytest.mark.parametrize("spec", SPECS)
def test_patches_avoid_clamped_rows(spec):
    plan = make_plan(spec, np.random.default_rng(0))
    for (s, y0, x0) in plan.corners:
        p, q = plan.ratios[s]
        n = int(plan.windows[s])
        for start in (y0, x0):
            idx = torch.arange(start, start + spec.patch)
            i0, i1, _, _ = source_taps(idx, int(p), int(q), n)
            assert ((2 * idx + 1) * int(p) - int(q) >= 0).all()
            assert (i1 == i0 + 1).all()


def test_plan_is_deterministic():
    a = make_plan(SPECS[0], np.random.default_rng(5))
    b = make_plan(SPECS[0], np.random.default_rng(5))
    assert np.array_equal(a.corners, b.corners) and np.array_equal(a.labels, b.labels)


def test_source_extent_and_first_clean():
    assert first_clean(3, 2) == 0 and first_clean(2, 3) == 1 and first_clean(1, 4) == 2
    for p, q in [(3, 2), (2, 3), (7, 4), (4, 7)]:
        for d in (5, 17, 40):
            n = source_extent(d, p, q)
            assert dst_length(n, p, q) >= d
            i0, i1, _, _ = source_taps(torch.tensor([d - 1]), p, q, n)
            assert int(i1) == int(i0) + 1


@pytest.mark.parametrize("kwargs,key", [
    (dict(images_per_ratio=1), "images_per_ratio"),
    (dict(phases_per_image=1), "phases_per_image"),
    (dict(phases_per_image=5), "phases_per_image"),  # q = 2 has 4 phases
    (dict(patches_per_phase=5), "patches_per_phase"),  # grid 2 has 4 positions
    (dict(images=7), "images_per_ratio"),
])
def test_bad_specs_are_refused(kwargs, key):
    base = dict(ratios=[Fraction(3, 2), Fraction(4, 3)], patch=8, images=8)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=key):
        PlanSpec(**base).check()


def test_max_window_grows_with_patch():
    small = PlanSpec([Fraction(3, 2), Fraction(15, 8)], patch=32, images=4)
    big = PlanSpec([Fraction(3, 2), Fraction(15, 8)], patch=128, images=4)
    assert max_window(big) > max_window(small) >= 32 * 15 // 8
    base, side = layout(big, Fraction(15, 8))
    assert base == 0 and dst_length(side, 15, 8) >= 128 + 7 + 8
