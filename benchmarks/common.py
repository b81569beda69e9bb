"""Timing and table helpers shared by the benchmarks."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], device: str = "cpu", repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds per call of fn()."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_interleaved(fns: Dict[str, Callable[[], object]], device: str = "cpu", repeat: int = 7,
                     warmup: int = 2, flush_mib: int = 0) -> Dict[str, float]:
    """Median seconds per call of each fn, timed round-robin so that a transient slow spell of the
    machine hits every path alike instead of one (the order rotates every round).

    flush_mib > 0 (CPU): before every timed call, a buffer of that size is rewritten, so every path
    starts with its inputs out of the caches, as windows fresh from a loader worker are. Without it,
    the path timed right after another path's large buffers found its inputs evicted while the next
    found them cached: on sparse inputs the op's first ISA row ran at a third of its speed."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    flush = torch.zeros(flush_mib << 20, dtype=torch.uint8) if flush_mib > 0 and device == "cpu" else None
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeat):
        for k in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[k]
            if flush is not None:
                flush.add_(1)
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def print_table(headers: Sequence[str], rows: List[Sequence[object]], title: str = "") -> str:
    """Print and return a Markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), printed above every benchmark table."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
