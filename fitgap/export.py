"""Export a detector to ONNX, with its preprocessing inside the graph and described in the metadata.

    python -m fitgap.export --ckpt runs/finetune/best.pt --out detector.onnx

The graph takes what `fitgap.detect` gives the model: uint8 RGB crops [N, 3, S, S] cut at native
resolution (one centre crop, or tiles; N is dynamic), normalises them with the checkpoint's mean/std
and returns one logit per crop; an image's logit is the mean over its crops, P(fake) = sigmoid(logit /
T). The metadata (`fitgap.*` keys) names the crop size, the mean/std, the input, the checkpoint and,
when a calibration.json is beside the checkpoint (or given), the temperature and thresholds, so a
runtime that is not Python can reproduce `fitgap detect`'s answer.

    python -m fitgap.detect --onnx detector.onnx photo.jpg     # the same verdicts through onnxruntime
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from .detector import MAX_CROPS, crop_size, load_detector, mean_logits
from .errors import InputError, MissingInput

INPUT, OUTPUT = "crops", "logit"


class WithPreprocessing(nn.Module):
    """uint8 crops -> the float normalisation detect applies (fitgap.evaldata.normalize_uint8) -> logit."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, crops):
        return self.model((crops.float() / 255.0 - self.mean) / self.std)


def metadata(cfg: Dict[str, Any], ckpt: str, size: int, calibration: Optional[Dict[str, Any]]) -> Dict[str, str]:
    n = cfg["normalize"]
    meta = {"fitgap.input": f"uint8 RGB crops [N, 3, {size}, {size}] at native resolution (never resized): one "
                            "centre crop, or non-overlapping tiles covering the image (the last ones aligned to "
                            "the border); an image's logit is the mean over its crops",
            "fitgap.output": "logit per crop; P(fake) = sigmoid(mean logit / temperature)",
            "fitgap.crop_size": str(size), "fitgap.mean": json.dumps(n["mean"]), "fitgap.std": json.dumps(n["std"]),
            "fitgap.encoder": json.dumps(cfg["model"]), "fitgap.checkpoint": os.path.abspath(ckpt),
            "fitgap.score": cfg.get("score", "head")}
    if calibration is not None:
        meta["fitgap.calibration"] = json.dumps({k: calibration.get(k) for k in ("temperature", "thresholds",
                                                                                  "targets")})
    return meta


def export(ckpt: str, out: str, size: Optional[int] = None, calibration: Optional[Dict[str, Any]] = None,
           opset: int = 18) -> Dict[str, str]:
    """Write the ONNX file (atomically) and return its metadata."""
    import onnx

    from .files import atomic_write

    model, cfg = load_detector(ckpt, "cpu")
    size = crop_size(size, cfg)
    wrapped = WithPreprocessing(model, cfg["normalize"]["mean"], cfg["normalize"]["std"]).eval()
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    tmp = out + ".export-tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (example,), tmp, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},), dynamo=True,
                          opset_version=opset, verbose=False)
    try:
        graph = onnx.load(tmp)
        meta = metadata(cfg, ckpt, size, calibration)
        for k, v in meta.items():
            graph.metadata_props.add(key=k, value=v)
        onnx.checker.check_model(graph)
        atomic_write(out, lambda f: f.write(graph.SerializeToString()))
    finally:
        for leftover in (tmp, tmp + ".data"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return meta


class OnnxDetector:
    """An exported detector in onnxruntime: mean logit per image from uint8 crops, as
    fitgap.detector.score_logits gives it; `.size`, `.calibration` from the file's metadata."""

    def __init__(self, path: str):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise MissingInput(f"--onnx: {path!r} does not exist")
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any file onnxruntime cannot load
            raise InputError(f"--onnx: {path} is not a loadable ONNX model ({type(exc).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "fitgap.crop_size" not in meta:
            raise InputError(f"--onnx: {path} was not written by fitgap.export (no fitgap.crop_size metadata)")
        self.meta = meta
        self.size = int(meta["fitgap.crop_size"])
        self.calibration = json.loads(meta["fitgap.calibration"]) if "fitgap.calibration" in meta else None
        self.encoder = json.loads(meta.get("fitgap.encoder", "{}"))
        self.score = meta.get("fitgap.score", "head")  # what the logit is (models.SCORES)

    def __call__(self, crops: List[torch.Tensor], max_crops: int = MAX_CROPS) -> List[float]:
        def forward(x):
            return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x.numpy())})[0].reshape(-1).tolist()

        return mean_logits(crops, forward, max_crops)


def main(argv=None):
    from .cli import run_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a detector checkpoint (finetune.py's best.pt)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--size", type=int, default=None, help="crop size in px (default: the checkpoint's)")
    p.add_argument("--calibration", default=None,
                   help="calibration.json to embed (default: the one beside the checkpoint, if any; 'none': no)")
    args = p.parse_args(argv)

    def go():
        from .calibration import find_calibration

        meta = export(args.ckpt, args.out, args.size, find_calibration(args.calibration, args.ckpt))
        print(f"written {args.out}: input {meta['fitgap.input'].split(':')[0]}; "
              f"{'calibration embedded' if 'fitgap.calibration' in meta else 'no calibration'}", flush=True)
        return meta

    return run_main(go)


if __name__ == "__main__":
    main()
