"""Typed Python face of `torch.ops.rescale_ext.rescale_gather` and its fake kernel."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import reference

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _compiled() -> bool:
    from . import HAVE_COMPILED

    return HAVE_COMPILED


def built_with_cuda() -> bool:
    """Whether the CUDA kernel was compiled in (independent of whether a GPU is present)."""
    return _compiled() and bool(torch.ops.rescale_ext.built_with_cuda())


def cpu_isa() -> str:
    """The CPU kernel's instruction-set path: "avx512", "avx2" (gathers), "avx2shuf" (AVX2 byte
    shuffles, no gathers: AMD's default without AVX-512) or "scalar" (chosen at load time from the
    CPU's flags; RESCALE_EXT_ISA=scalar|avx2|avx2shuf|avx512 forces one the CPU has); "reference" without
    the compiled module."""
    return str(torch.ops.rescale_ext.cpu_isa()) if _compiled() else "reference"


def cpu_isa_paths() -> list:
    """The paths this CPU can run (for tests and benchmarks), best last."""
    if not _compiled():
        return []
    current, out = cpu_isa(), []
    for name in ("scalar", "avx2", "avx2shuf", "avx512"):
        try:
            torch.ops.rescale_ext._set_cpu_isa(name)
            out.append(name)
        except (RuntimeError, ValueError):
            pass
    torch.ops.rescale_ext._set_cpu_isa(current)
    return out


def rescale_gather(
    pixels: torch.Tensor,
    offsets: torch.Tensor,
    sizes: torch.Tensor,
    ratios: torch.Tensor,
    corners: torch.Tensor,
    patch: int,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    quantize: bool = False,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Rescale packed windows and gather patches of the rescaled images in one call.

    Args:
        pixels: uint8 [total], HWC windows (3 channels) packed one after another.
        offsets: int64 [B], start of each window in `pixels`.
        sizes: int64 [B, 2], (H, W) of each window.
        ratios: int64 [B, 2], (p, q) with src/dst = p/q: p > q shrinks, p < q enlarges. The
            destination image of a window is floor(H*q/p) x floor(W*q/p).
        corners: int64 [N, 3], (window index, y0, x0) of each patch in destination pixels.
        patch: side of the square patches.
        mean, std: 3 values each on the 0..255 scale; output = (value - mean) / std.
        quantize: round every interpolated value to the nearest integer (halves up), as a saved
            rescaled image would hold, before normalising.
        dtype: float32, float16 or bfloat16.
        channels_last: return channels_last memory format.

    Returns:
        [N, 3, patch, patch] tensor of `dtype` on the device of `pixels`. Metadata tensors may be on
        the CPU (no host sync on CUDA) or on the device of `pixels`.
    """
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"rescale_gather: dtype must be one of {_OUT_DTYPES}, got {dtype}")
    mean = None if mean is None else [float(v) for v in mean]
    std = None if std is None else [float(v) for v in std]
    if _compiled():
        return torch.ops.rescale_ext.rescale_gather(
            pixels, offsets, sizes, ratios, corners, int(patch), mean, std, bool(quantize), dtype,
            bool(channels_last))
    return reference.rescale_gather_reference(
        pixels, offsets, sizes, ratios, corners, patch, mean=mean, std=std, quantize=quantize,
        dtype=dtype, channels_last=channels_last)


if _compiled():

    @torch.library.register_fake("rescale_ext::rescale_gather")
    def _rescale_gather_fake(pixels, offsets, sizes, ratios, corners, patch, mean=None, std=None,
                             quantize=False, dtype=None, channels_last=False):
        torch._check(pixels.dtype == torch.uint8, lambda: "rescale_gather: pixels must be uint8")
        torch._check(corners.dim() == 2 and corners.shape[1] == 3,
                     lambda: "rescale_gather: corners must have shape [N, 3]")
        torch._check(patch > 0, lambda: "rescale_gather: patch must be positive")
        dtype = torch.float32 if dtype is None else dtype
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty((corners.shape[0], 3, patch, patch), dtype=dtype, device=pixels.device,
                           memory_format=fmt)
