"""Peak memory of `evaluate.py --crop tiles` on phone-size photos: tiles in fixed-size chunks vs all
tiles of a batch at once.

    python benchmarks/bench_eval_memory.py            # 20 JPEGs of 3264x2448, crop 128, batch 32

Each configuration runs evaluate.py in its own process (CPU, 1 loader worker) and reports that
process's peak resident memory (its own and its loader worker's, ru_maxrss) and the wall time. The
detector is a randomly initialised resnet10t: memory and time do not depend on its weights.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, print_table  # noqa: E402

MEASURE = r"""
import json, resource, runpy, sys
sys.argv = ["evaluate.py"] + json.loads(sys.argv[1])
try:
    runpy.run_path("evaluate.py", run_name="__main__")
finally:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("PEAK_RSS_KB", own, kids, flush=True)
"""


def photos(folder: str, n: int, size=(3264, 2448)) -> None:
    rng = np.random.default_rng(0)
    for label in ("0_real", "1_fake"):
        os.makedirs(os.path.join(folder, "phone", label), exist_ok=True)
    small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC))
    for i in range(n):
        label = "0_real" if i % 2 == 0 else "1_fake"
        img = np.roll(base, 37 * i, axis=1)
        Image.fromarray(img).save(os.path.join(folder, "phone", label, f"{i:02d}.jpg"), quality=90)


def detector(path: str) -> None:
    from fitgap import checkpoint as ckpt
    from fitgap.models import Detector, build_encoder

    torch.manual_seed(0)
    model = Detector(build_encoder("resnet10t"))
    cfg = {"model": {"backbone": "resnet10t", "pretrained": False, "weights": None, "stem_stride": None,
                     "stem_pool": True, "highpass": False, "proj_hidden": 32, "proj_dim": 16},
           "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "patch": 128,
           "eval": {"size": 128}}
    ckpt.atomic_save({"model": model.state_dict(), "config": cfg, "kind": "detector"}, path)


def measure(args_list):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(args_list)], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    wall = time.perf_counter() - t0
    line = [x for x in r.stdout.splitlines() if x.startswith("PEAK_RSS_KB")]
    if r.returncode != 0 or not line:
        return None, wall, (r.stderr.strip().splitlines() or ["killed"])[-1]
    own, kids = (int(v) for v in line[-1].split()[1:])
    return max(own, kids) / 1024 ** 2, wall, ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_eval_mem_") as tmp:
        photos(os.path.join(tmp, "bench"), args.n)
        ck = os.path.join(tmp, "run", "best.pt")
        detector(ck)
        common = ["--ckpt", ck, "--bench", "folder", "--root", os.path.join(tmp, "bench"), "--crop", "tiles",
                  "--device", "cpu", "--workers", "1", "--no-audit"]
        rows = []
        for label, extra in (("chunks of 64 tiles, batch 32", ["--batch", "32", "--max-crops", "64"]),
                             ("chunks of 64 tiles, batch 1", ["--batch", "1", "--max-crops", "64"]),
                             ("all tiles of a batch at once, batch 1", ["--batch", "1", "--max-crops", "100000"]),
                             ("all tiles of a batch at once, batch 4", ["--batch", "4", "--max-crops", "100000"])):
            peak, wall, err = measure(common + extra + ["--out", os.path.join(tmp, "out", str(len(rows)))])
            rows.append([label, "-" if peak is None else f"{peak:.2f}", f"{wall:.0f}", err])
            print(rows[-1], flush=True)
        print_table(["configuration", "peak RSS (GiB)", "wall (s)", "error"], rows,
                    title=f"evaluate.py --crop tiles on {args.n} JPEGs of 3264x2448 (crop 128: 520 tiles each)")


if __name__ == "__main__":
    main()
