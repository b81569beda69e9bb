"""The demo's steps in a process each against in the demo's own process (`fitgap.demo.sh`).

    make demo                                  # once: the mini-benchmark and runs/demo/finetune/best.pt
    python benchmarks/bench_demo_steps.py      # --repeat 3

`make demo` runs 18 steps (pre-training, the frozen transfer, six fine-tunings and their six
evaluations, the audit, the resampling check, two figures). Run as `python <step>` each one imports
torch, torchvision and timm again before it does any work. Timed here, round-robin in one run, on two
of the demo's own steps: the evaluation of the demo's detector on the mini-benchmark's test split
(`evaluate.py`, six times per demo) and the audit of the mini-benchmark (`-m fitgap.audit`), each as a
subprocess (`python <args>`, as the demo ran them before) and through `fitgap.demo.sh` (in this
process), and, for scale, `python -c "import fitgap.evaluate"` (the imports alone).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, print_table, time_interleaved  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ckpt", default=os.path.join("runs", "demo", "finetune", "best.pt"))
    args = p.parse_args(argv)
    os.chdir(ROOT)
    from fitgap.minibench import DEFAULT_CACHE

    missing = [x for x in (args.ckpt, DEFAULT_CACHE) if not os.path.exists(x)]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found: run `make demo` first (it builds both)")
    import torch

    from fitgap import demo

    out = tempfile.mkdtemp(prefix="bench_demo_steps_")
    steps = {
        "evaluate": ["evaluate.py", "--ckpt", args.ckpt, "--bench", "mini", "--split", "test",
                     "--out", os.path.join(out, "eval"), "--device", "cpu"],
        "audit": ["-m", "fitgap.audit", "--bench", "mini", "--split", "test", "--out", os.path.join(out, "audit"),
                  "--workers", "0"],
    }
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    fns = {"imports alone, subprocess": lambda: subprocess.run(
        [sys.executable, "-c", "import fitgap.evaluate"], check=True, **quiet)}
    for name, cmd in steps.items():
        fns[f"{name}, subprocess"] = lambda cmd=cmd: subprocess.run([sys.executable, *cmd], check=True, **quiet)
        fns[f"{name}, in process"] = lambda cmd=cmd: _quiet(demo.sh, *cmd)  # sh captures the starting state
    t = time_interleaved(fns, repeat=args.repeat, warmup=1)
    print(f"CPU: {cpu_model()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads; median of {args.repeat} round-robin rounds\n")
    rows = [["imports alone (subprocess)", f"{t['imports alone, subprocess']:.2f}", "-", "-", "-"]]
    for name in steps:
        sub, inp = t[f"{name}, subprocess"], t[f"{name}, in process"]
        rows.append([name, f"{sub:.2f}", f"{inp:.2f}", f"{sub - inp:.2f}", f"{sub / inp:.2f}x"])
    print_table(["step", "subprocess s", "in process s", "saved s", "speed-up"], rows,
                "One demo step: its own process vs the demo's process")


def _quiet(fn, *args):
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        fn(*args)


if __name__ == "__main__":
    main()
