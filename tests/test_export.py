"""ONNX export: the graph gives PyTorch's logits, carries its preprocessing, and detect answers the same."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from imaging import detector_ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
onnxruntime = pytest.importorskip("onnxruntime")  # a listed requirement: present wherever `make test` ran


@pytest.mark.parametrize("backbone,size,highpass,trace,distance", [
    ("resnet10t", 64, True, 0, False), ("test_resnet", 32, False, 0, False), ("fitgap_phase_stats12", 48, True, 0, False),
    ("resnet10t", 64, True, 16, False),
    ("resnet10t", 64, True, 0, True)])  # the demo's encoder, its logit the distance from the training reals
def test_onnx_logits_equal_pytorch_on_any_batch(tmp_path, backbone, size, highpass, trace, distance):
    from fitgap.evaldata import normalize_uint8
    from fitgap.export import OnnxDetector, export
    from fitgap.models import min_input_side, min_side_for_config

    det, cfg = detector_ckpt(tmp_path / "best.pt", backbone, size, highpass=highpass, highpass_both=bool(trace),
                             trace_features=trace, distance=distance)
    assert (det.distance is not None) == distance
    assert min_side_for_config(cfg["model"]) == min_input_side(det.encoder) == (18 if trace else 12 if "phase" in backbone else 1)
    meta = export(str(tmp_path / "best.pt"), str(tmp_path / "d.onnx"))
    assert meta["fitgap.crop_size"] == str(size) and json.loads(meta["fitgap.mean"]) == cfg["normalize"]["mean"]
    onnx = OnnxDetector(str(tmp_path / "d.onnx"))
    assert onnx.size == size and onnx.calibration is None and onnx.encoder["backbone"] == backbone
    for n in (1, 3, 7):  # a dynamic batch
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        got = onnx.session.run(["logit"], {"crops": x.numpy()})[0].reshape(-1)
        with torch.no_grad():
            want = det(normalize_uint8(x, cfg["normalize"]["mean"], cfg["normalize"]["std"])).numpy()
        assert np.abs(got - want).max() <= 1e-4, (n, np.abs(got - want).max())
    assert not os.path.exists(tmp_path / "d.onnx.export-tmp")


def test_detect_answers_the_same_from_the_checkpoint_and_the_onnx_file(tmp_path):
    detector_ckpt(tmp_path / "best.pt", "resnet10t", 32, highpass=True)
    (tmp_path / "calibration.json").write_text(json.dumps(
        {"temperature": 1.7, "thresholds": {"fake": 0.55, "real": 0.45}, "targets": {"fpr": 0.01, "fnr": 0.05}}))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    assert "calibration embedded" in cli("fitgap.export", "--ckpt", str(tmp_path / "best.pt"), "--out",
                                         str(tmp_path / "d.onnx"))
    a = [json.loads(x) for x in cli("fitgap.detect", "--ckpt", str(tmp_path / "best.pt"), str(imgs), "--json",
                                     "--device", "cpu").splitlines()]
    b = [json.loads(x) for x in cli("fitgap.detect", "--onnx", str(tmp_path / "d.onnx"), str(imgs),
                                     "--json").splitlines()]
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x["path"] == y["path"] and x["verdict"] == y["verdict"] and x["calibrated"] and y["calibrated"]
        assert abs(x["p_fake"] - y["p_fake"]) < 1e-5 and abs(x["p_calibrated"] - y["p_calibrated"]) < 1e-5
        assert all(abs(x["consistency"][k] - y["consistency"][k]) < 1e-5 for k in x["consistency"])


def test_checkpoint_and_onnx_say_what_their_logit_is(tmp_path):
    from fitgap.detect import load_scoring
    from fitgap.export import export

    for distance in (False, True):
        ck, ox = tmp_path / f"{distance}.pt", tmp_path / f"{distance}.onnx"
        detector_ckpt(ck, "test_resnet", 32, distance=distance)
        export(str(ck), str(ox))
        want = "distance" if distance else "head"
        from_ckpt = load_scoring(str(ck), None, "none", None, "cpu")
        from_onnx = load_scoring(None, str(ox), "none", None)
        assert from_ckpt.about["score"] == from_onnx.about["score"] == want
        crops = [torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)]
        assert abs(from_ckpt.logits_fn(crops)[0] - from_onnx.logits_fn(crops)[0]) < 1e-4
