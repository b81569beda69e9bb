"""Reproducible runs on one machine: seeds, deterministic kernels, a fixed thread count, seeded
DataLoader workers.

The same command on the same machine gives the same numbers. Another machine may not: CPUs with
AVX-512 and AVX2 take different float paths in torch (and so do GPUs of other kinds), and a different
thread count changes the order of float reductions; `train.threads` fixes the latter.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch


def seed_everything(seed: int, threads: Optional[int] = None, deterministic: bool = True) -> None:
    """Python, numpy and torch seeds; `threads` CPU threads (None: torch's default); deterministic
    algorithms where torch has them (a warning, not an error, where it has none)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy and random follow the worker's torch seed (which the loader's
    own generator sets), so workers draw the same numbers in every run."""
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def loader_seeding(seed: int, rank: int = 0) -> Dict[str, Any]:
    """DataLoader keyword arguments that make worker seeds a function of (seed, rank) alone."""
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + rank)
    return {"generator": g, "worker_init_fn": seed_worker}
