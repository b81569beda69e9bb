"""The real-distance score (fine-tuning's `score: distance`): its arithmetic against scikit-learn, its
two-sidedness, and its life in a detector checkpoint (fitted once, resumed, dropped, refused)."""
import os

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from fitgap import checkpoint as ckpt
from fitgap.errors import InputError
from fitgap.models import Detector, RealDistance, build_encoder, has_distance
from fitgap.realdist import QUANTILE, fit_distance

from test_finetune_evaluate import finetune_args, make_tree, pretrained, run  # noqa: F401 (a fixture)


MIX = np.random.default_rng(99).normal(size=(12, 12))


def _reals(n, seed=0):
    """n rows of one correlated Gaussian (the same for every seed)."""
    return np.random.default_rng(seed).normal(size=(n, 12)) @ MIX


def test_the_logit_is_the_log_mahalanobis_distance_of_ledoit_wolf_centred_on_held_out_reals():
    train, held = _reals(200), _reals(60, seed=1)
    module, info = fit_distance(train, held)
    lw = LedoitWolf().fit(train)
    logd = 0.5 * np.log(lw.mahalanobis(held))
    assert info["centred_on"] == "held-out reals" and info["reals"] == 200 and info["heldout_reals"] == 60
    assert abs(float(module.center) - np.quantile(logd, QUANTILE)) < 1e-5
    assert abs(float(module.scale) - logd.std()) < 1e-5
    x = _reals(30, seed=5) * 1.5
    want = (0.5 * np.log(lw.mahalanobis(x)) - np.quantile(logd, QUANTILE)) / logd.std()
    got = module(torch.from_numpy(x).float()).numpy()
    assert np.abs(got - want).max() < 1e-3
    # logit 0 is where the held-out reals' 95th percentile lies
    assert abs(float((module(torch.from_numpy(held).float()) > 0).float().mean()) - (1 - QUANTILE)) <= 0.02


def test_fakes_on_either_side_of_the_reals_score_above_them_where_a_linear_head_splits_them():
    module, _ = fit_distance(_reals(300), _reals(50, seed=2))
    reals = torch.from_numpy(_reals(100, seed=3)).float()
    direction = torch.zeros(12)
    direction[0] = 6.0 * float(reals[:, 0].std())
    above, below = reals + direction, reals - direction  # two generator families, opposite traces
    for fakes in (above, below):  # both far above the reals: logit 0 is the reals' 95th percentile
        assert module(fakes).median() > 1.0 and module(reals).median() < 0
    # a head fitted on the first family ranks the second below the reals
    head = direction
    assert (below @ head).mean() < (reals @ head).mean() < (above @ head).mean()


def test_float32_under_autocast_and_too_few_reals_refused():
    train = _reals(50)
    module, _ = fit_distance(train, None)
    x = torch.from_numpy(train[:8]).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module(x.bfloat16())
    assert got.dtype == torch.float32
    assert torch.allclose(got, module(x.bfloat16().float()), atol=1e-5)
    with pytest.raises(InputError, match="at least 10 real training images"):
        fit_distance(train[:9], None)
    # fewer held-out reals than needed: centred on the training reals, and said so
    assert fit_distance(train, train[:3])[1]["centred_on"] == "training reals"


def test_a_detector_with_a_distance_answers_with_it_and_without_with_its_head():
    torch.manual_seed(0)
    enc = build_encoder("test_resnet")
    det = Detector(enc).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        head = det(x)
        det.distance = RealDistance(enc.num_features)
        dist = det(x)
        f = enc(x)
    assert torch.allclose(head, det.classifier(f).squeeze(1))
    assert torch.allclose(dist, 0.5 * torch.log((f * f).sum(1)))


@pytest.fixture(scope="module")
def bigger_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bench16"))
    make_tree(root, subsets=("a",), n=16)
    return root


def test_finetune_fits_the_distance_into_best_pt_once_and_evaluate_reads_it(bigger_tree, pretrained, tmp_path):
    from fitgap.detector import load_detector

    args = finetune_args(bigger_tree, str(tmp_path), "d", pretrained, "score=distance")
    r = run(args)
    assert "best.pt: score distance fitted on 13 real training images" in r.stdout, r.stdout[-1500:]
    best = tmp_path / "d" / "best.pt"
    saved = torch.load(best, weights_only=True)
    assert saved["config"]["score"] == "distance" and saved["distance_fit"]["heldout_reals"] == 3
    assert saved["distance_fit"]["centred_on"] == "training reals"  # 3 held-out reals are too few
    det, _ = load_detector(str(best), "cpu")
    assert det.distance is not None
    assert not torch.equal(det.distance.whiten, torch.eye(det.distance.whiten.shape[0]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(det(x), det.distance(det.encoder(x)))
    # a resumed run finds it fitted and leaves it as it is
    r = run(args)
    assert "fitted earlier" in r.stdout
    again = torch.load(best, weights_only=True)
    assert all(torch.equal(again["model"][k], saved["model"][k]) for k in saved["model"])
    # evaluate scores with the distance: the mean logit of its scores is the distance's
    out = tmp_path / "ev"
    run(["evaluate.py", "--ckpt", str(best), "--bench", "folder", "--root", bigger_tree, "--out", str(out),
         "--device", "cpu", "--size", "32"])
    assert (out / "results.json").exists()
    # the same run with score: head drops the distance from best.pt
    r = run(args[:-1] + ["score=head"])
    head = torch.load(best, weights_only=True)
    assert head["config"]["score"] == "head" and not has_distance(head["model"])
    det, _ = load_detector(str(best), "cpu")
    assert det.distance is None


def test_a_distance_checkpoint_without_its_fit_is_refused(tmp_path):
    from fitgap.detector import load_detector

    torch.manual_seed(0)
    det = Detector(build_encoder("test_resnet"))
    cfg = {"model": {"backbone": "test_resnet", "pretrained": False, "weights": None}, "score": "distance",
           "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}, "patch": 16, "eval": {"size": 32}}
    ckpt.atomic_save({"model": det.state_dict(), "config": cfg, "kind": "detector"}, str(tmp_path / "best.pt"))
    with pytest.raises(InputError, match="holds no fitted distance"):
        load_detector(str(tmp_path / "best.pt"), "cpu")


def test_bad_score_and_too_few_reals_are_refused_before_any_work(bigger_tree, pretrained, tmp_path):
    r = run(finetune_args(bigger_tree, str(tmp_path), "bad", pretrained, "score=distanse"), check=False)
    assert r.returncode == 2 and "score" in r.stderr and "distanse" in r.stderr, r.stderr[-1500:]
    small = tmp_path / "small"
    make_tree(str(small), subsets=("a",), n=6)
    r = run(finetune_args(str(small), str(tmp_path), "few", pretrained, "score=distance"), check=False)
    assert r.returncode == 2 and "score: distance" in r.stderr and "at least 10" in r.stderr, r.stderr[-1500:]
    assert not os.path.exists(tmp_path / "few")


def test_reals_smaller_than_the_crop_are_left_out_and_too_few_usable_ones_are_named(tmp_path):
    from PIL import Image

    from fitgap.realdist import fit_detector_distance

    torch.manual_seed(0)
    det = Detector(build_encoder("test_resnet"))
    items = []
    rng = np.random.default_rng(0)
    for i in range(14):  # 9 usable reals at 32 px, 5 too small, 2 fakes (never used)
        side = 40 if i < 9 else 20
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        items.append((path, 0))
    items += [(items[0][0], 1), (items[1][0], 1)]
    with pytest.raises(InputError, match="9 of the training split's 14 real images could be read at 32 px"):
        fit_detector_distance(det, items, [], 32, [0.5] * 3, [0.25] * 3, "cpu")
    assert det.distance is None
    for i in range(14, 17):  # one more usable real makes 10: fitted, the small ones counted as left out
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        items.append((path, 0))
    info = fit_detector_distance(det, items, [], 32, [0.5] * 3, [0.25] * 3, "cpu")
    assert info["reals"] == 12 and info["left_out"] == 5 and info["centred_on"] == "training reals"
    assert det.distance is not None and det.training  # the mode it came in is restored
