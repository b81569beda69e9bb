"""Calibration: the temperature, the three-way verdict's thresholds, and the metrics beside them."""
import math

import numpy as np
import pytest

from fitgap import calibration as K
from fitgap.metrics import ece


def synthetic(n, temperature, seed):
    """Labels drawn from sigmoid(z / T) for logits z: the NLL-optimal temperature is T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, n)
    y = (rng.random(n) < K.sigmoid(z / temperature)).astype(int)
    return y, z


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_a_known_temperature_is_recovered_within_5_percent(temperature):
    y, z = synthetic(20000, temperature, seed=int(temperature * 10))
    t = K.fit_temperature(y, z)
    assert abs(t / temperature - 1) < 0.05, (t, temperature)
    assert K.nll(y, z, t) <= K.nll(y, z, 1.0) + 1e-12
    # it is the minimum: a little either side is worse
    assert K.nll(y, z, t) < K.nll(y, z, t * 1.1) and K.nll(y, z, t) < K.nll(y, z, t / 1.1)


def test_thresholds_reach_their_targets_exactly_on_the_scores_they_were_fitted_on():
    rng = np.random.default_rng(0)
    p = np.r_[rng.beta(2, 5, 1000), rng.beta(5, 2, 400)]
    y = np.r_[np.zeros(1000, int), np.ones(400, int)]
    th = K.fit_thresholds(y, p, fpr=0.01, fnr=0.05)
    assert (p[y == 0] >= th["fake"]).sum() == 10  # exactly 1% of 1,000 reals called fake
    assert (p[y == 1] <= th["real"]).sum() == 20  # exactly 5% of 400 fakes called real
    s = K.verdict_shares(y, p, th)
    assert s["real"]["fake"] == 0.01 and s["fake"]["real"] == 0.05
    assert abs(sum(s["real"].values()) - 1) < 1e-12 and 0 < s["decided"] < 1 and s["acc_decided"] > 0.9
    # held-out scores of the same distributions: near the targets, not exactly
    q = np.r_[rng.beta(2, 5, 20000), rng.beta(5, 2, 20000)]
    yq = np.r_[np.zeros(20000, int), np.ones(20000, int)]
    sq = K.verdict_shares(yq, q, th)
    assert abs(sq["real"]["fake"] - 0.01) < 0.01 and abs(sq["fake"]["real"] - 0.05) < 0.03
    # ties count against the target: a block of equal scores is all in or all out
    tied = K.fit_thresholds([0] * 10 + [1] * 10, [0.9] * 10 + [0.95] * 10, fpr=0.15, fnr=0.15)
    assert K.verdict(0.9, tied) != "fake" and K.verdict(0.95, tied) != "real"


def test_verdicts_and_their_edges():
    th = {"fake": 0.8, "real": 0.2}
    assert [K.verdict(p, th) for p in (0.0, 0.2, 0.5, 0.8, 1.0)] == ["real", "real", "unsure", "fake", "fake"]
    assert K.verdict(float("nan"), th) is None and K.verdict(None, th) is None
    assert K.verdict(0.5, {"fake": 0.4, "real": 0.6}) == "unsure"  # overlapping thresholds decide nothing there
    with pytest.raises(ValueError, match="real and fake"):
        K.fit_thresholds([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="real and fake"):
        K.fit_temperature([1, 1], [0.1, 0.2])


def test_cllr_and_ece_agree_with_their_definitions():
    y = np.array([0, 0, 1, 1])
    z = np.array([-2.0, 0.5, 1.0, 3.0])
    want = 0.5 * (np.mean([math.log2(1 + math.exp(-1.0)), math.log2(1 + math.exp(-3.0))])
                  + np.mean([math.log2(1 + math.exp(-2.0)), math.log2(1 + math.exp(0.5))]))
    assert abs(K.cllr(y, z) - want) < 1e-12
    assert abs(K.cllr(y, np.zeros(4)) - 1.0) < 1e-12  # uninformative scores cost one bit
    # the project's ECE against scikit-learn's reliability curve (uniform bins, weighted by counts)
    from sklearn.calibration import calibration_curve

    ys, zs = synthetic(5000, 2.0, seed=3)
    p = K.sigmoid(zs)
    frac, mean_p = calibration_curve(ys, p, n_bins=10, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    assert abs(ece(ys, p) - float(np.sum(counts / counts.sum() * np.abs(frac - mean_p)))) < 1e-9
    t = K.fit_temperature(ys, zs)
    assert ece(ys, K.sigmoid(zs / t)) < ece(ys, p) / 2  # calibration removes most of the error


def test_file_ids_tell_whether_two_sets_share_files(tmp_path):
    a = K.file_ids([str(tmp_path / "x.png"), str(tmp_path / "y.png")])
    b = K.file_ids([str(tmp_path / "y.png"), str(tmp_path / "z.png")])
    assert len(a) == 2 and len(set(a) & set(b)) == 1 and all(len(x) == 16 for x in a)


def test_a_verdict_that_moves_under_mild_resampling_is_unsure_with_the_reason():
    from fitgap.detect import judge

    cal = {"temperature": 2.0, "thresholds": {"fake": 0.9, "real": 0.1}}
    steady = judge({"image": 8.0, "bilinear x0.9": 7.5, "bilinear x1.1": 9.0, "jpeg q95": 8.2}, cal)
    assert steady["verdict"] == "fake" and steady["reasons"] == []
    assert abs(steady["p_calibrated"] - float(K.sigmoid(4.0))) < 1e-12
    moved = judge({"image": 8.0, "bilinear x0.9": 7.5, "bilinear x1.1": 1.0, "jpeg q95": 8.2}, cal)
    assert moved["verdict"] == "unsure" and "bilinear x1.1 -> unsure" in moved["reasons"][0]
    raw = judge({"image": 0.3}, None)  # no calibration: 0.5, and it says so
    assert raw["verdict"] == "fake" and raw["p_calibrated"] is None and raw["reasons"][0].startswith("uncalibrated")
