"""Packing of HWC uint8 windows into the flat buffer that rescale_gather reads."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch


def pack_windows(windows: Sequence, pin_memory: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack uint8 [H, W, 3] arrays or tensors into (pixels uint8 [total], offsets [B], sizes [B, 2])."""
    sizes = torch.empty((len(windows), 2), dtype=torch.int64)
    offsets = torch.empty(len(windows), dtype=torch.int64)
    total = 0
    for i, w in enumerate(windows):
        if w.ndim != 3 or w.shape[2] != 3:
            raise ValueError(f"pack_windows: window {i} must be [H, W, 3], got {tuple(w.shape)}")
        if (w.dtype != np.uint8) if isinstance(w, np.ndarray) else (w.dtype != torch.uint8):
            raise TypeError(f"pack_windows: window {i} must be uint8, got {w.dtype}")
        sizes[i, 0], sizes[i, 1] = int(w.shape[0]), int(w.shape[1])
        offsets[i] = total
        total += int(w.shape[0]) * int(w.shape[1]) * 3
    pixels = torch.empty(total, dtype=torch.uint8, pin_memory=pin_memory)
    for i, w in enumerate(windows):
        o, n = int(offsets[i]), int(sizes[i, 0] * sizes[i, 1] * 3)
        if isinstance(w, np.ndarray):  # copied through numpy: read-only arrays (PIL's) are fine
            pixels[o:o + n].numpy()[:] = w.reshape(-1)
        else:
            pixels[o:o + n] = w.contiguous().reshape(-1)
    return pixels, offsets, sizes
