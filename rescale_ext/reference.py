"""Pure-PyTorch reference of rescale_gather: F.interpolate of each whole window + slicing.

Slow and memory hungry (every window is rescaled in full, in float64), but obviously right: the tests
compare the compiled kernels with it, and the package falls back to it when `_C` is missing.
"""
from __future__ import annotations

from math import gcd
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

MAX_Q = 1024  # largest reduced denominator the kernels accept (see csrc/rescale_coords.h)
MAX_P = 1 << 20


def dst_length(n: int, p: int, q: int) -> int:
    """Destination length of a source length `n` rescaled by src/dst = p/q."""
    return (n * q) // p


def source_taps(dst: torch.Tensor, p: int, q: int, src_len: int):
    """Exact taps of destination indices `dst`: (lower index, upper index, weight of the upper tap).

    x_src = (x_dst + 0.5) * p / q - 0.5, clamped below at 0; the upper tap is clamped to src_len - 1.
    The weight is returned as the integer numerator over 2q and as a float64 fraction.
    """
    dst = torch.as_tensor(dst, dtype=torch.int64)
    num = (2 * dst + 1) * p - q
    num = num.clamp(min=0)
    i0 = torch.div(num, 2 * q, rounding_mode="floor")
    w1 = num - i0 * 2 * q
    i1 = torch.where(i0 < src_len - 1, i0 + 1, i0)
    return i0, i1, w1, w1.double() / (2 * q)


def _pad_length(n: int, p: int, q: int) -> int:
    """Rows (or columns) of edge padding so that torch interpolates along this dimension.

    torch skips the interpolation along a dimension whose output length equals its input length,
    whatever scale_factor says; when enlarging slightly (p < q) this happens for n < p / (q - p).
    Padding at least one row also covers torch's floating-point output size, which can fall one short
    of the exact floor(n*q/p). Padded rows only ever serve as the (already clamped) upper tap, so the
    values inside the exact destination image are unchanged.
    """
    k = 1
    while p != q and dst_length(n + k, p, q) == n + k:
        k += 1
    return k


def rescale_window(window: torch.Tensor, p: int, q: int) -> torch.Tensor:
    """Rescale one uint8 HWC window by src/dst = p/q: float64 [3, H*q//p, W*q//p] on the 0..255 scale.

    F.interpolate is given scale_factor=q/p (not an output size), so that its source coordinates use
    the ratio p/q itself; see `_pad_length` for the edge padding that keeps torch honest.
    """
    h, w = int(window.shape[0]), int(window.shape[1])
    x = window.permute(2, 0, 1).unsqueeze(0).to(torch.float64)
    x = F.pad(x, (0, _pad_length(w, p, q), 0, _pad_length(h, p, q)), mode="replicate")
    y = F.interpolate(x, scale_factor=(q / p, q / p), mode="bilinear", align_corners=False,
                      antialias=False, recompute_scale_factor=False)
    return y[0, :, : dst_length(h, p, q), : dst_length(w, p, q)]


def quantize_exact(values: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, halves up. Exact values are multiples of 1/(4 q^2) >= 2.4e-7,
    so nudging by 1e-9 turns float64 ties computed a hair low back into ties without moving others."""
    return torch.floor(values + 0.5 + 1e-9).clamp(0, 255)


def _fail(exc, msg):
    raise exc(f"rescale_gather: {msg}")


def check_args(pixels, offsets, sizes, ratios, corners, patch, mean, std):
    """The checks of the compiled kernels, in Python (same arguments named)."""
    if pixels.dtype != torch.uint8:
        _fail(TypeError, f"pixels must be uint8, got {pixels.dtype}")
    if pixels.dim() != 1:
        _fail(ValueError, f"pixels must be 1-D (packed HWC windows), got {pixels.dim()} dimensions")
    if not pixels.is_contiguous():
        _fail(ValueError, "pixels must be contiguous")
    for name, t, shape in (("offsets", offsets, (-1,)), ("sizes", sizes, (-1, 2)),
                           ("ratios", ratios, (-1, 2)), ("corners", corners, (-1, 3))):
        if t.dtype != torch.int64:
            _fail(TypeError, f"{name} must be int64, got {t.dtype}")
        if t.dim() != len(shape) or (len(shape) == 2 and t.shape[1] != shape[1]):
            _fail(ValueError, f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    nwin = offsets.shape[0]
    for name, t in (("sizes", sizes), ("ratios", ratios)):
        if t.shape[0] != nwin:
            _fail(ValueError, f"{name} has {t.shape[0]} rows but offsets has {nwin} windows")
    if patch <= 0:
        _fail(ValueError, f"patch must be positive, got {patch}")
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) != 3:
            _fail(ValueError, f"{name} must have 3 values, got {len(v)}")
    if std is not None and any(s == 0 for s in std):
        _fail(ValueError, f"std must be non-zero, got {list(std)}")
    total = pixels.numel()
    win = []
    for b, (o, (h, w), (p, q)) in enumerate(zip(offsets.tolist(), sizes.tolist(), ratios.tolist())):
        if h <= 0 or w <= 0:
            _fail(ValueError, f"sizes[{b}] = ({h}, {w}) must be positive")
        if p <= 0 or q <= 0:
            _fail(ValueError, f"ratios[{b}] = ({p}, {q}): p and q must be positive")
        g = gcd(p, q)
        p, q = p // g, q // g
        if q > MAX_Q or p > MAX_P:
            _fail(ValueError, f"ratios[{b}] = {p}/{q} (reduced): q must be <= {MAX_Q}")
        if o < 0 or o + h * w * 3 > total:
            _fail(ValueError, f"window {b} (offsets[{b}] = {o}, size {h}x{w}x3) runs past the end "
                              f"of pixels ({total} bytes)")
        win.append((p, q, dst_length(h, p, q), dst_length(w, p, q)))
    for i, (b, y0, x0) in enumerate(corners.tolist()):
        if not 0 <= b < nwin:
            _fail(ValueError, f"corners[{i}] names window {b}, but there are {nwin} windows")
        p, q, hd, wd = win[b]
        if y0 < 0 or x0 < 0 or y0 + patch > hd or x0 + patch > wd:
            _fail(ValueError, f"corners[{i}] = ({b}, {y0}, {x0}): a {patch}x{patch} patch does not "
                              f"fit in the {hd}x{wd} destination image of window {b}")
    return win


def rescale_gather_reference(
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
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Same contract as `rescale_ext.rescale_gather`, computed window by window with F.interpolate."""
    device = pixels.device
    meta = [t.cpu() for t in (offsets, sizes, ratios, corners)]
    win = check_args(pixels, *meta, patch, mean, std)
    offsets, sizes, ratios, corners = meta
    flat = pixels.cpu()
    n = corners.shape[0]
    out = torch.empty((n, 3, patch, patch), dtype=compute_dtype)
    cache = {}
    for i, (b, y0, x0) in enumerate(corners.tolist()):
        if b not in cache:
            h, w = sizes[b].tolist()
            o = int(offsets[b])
            window = flat[o:o + h * w * 3].view(h, w, 3)
            cache[b] = rescale_window(window, win[b][0], win[b][1]).to(compute_dtype)
        out[i] = cache[b][:, y0:y0 + patch, x0:x0 + patch]
    if quantize:
        out = quantize_exact(out)
    if mean is not None:
        out = out - torch.tensor(mean, dtype=compute_dtype).view(1, 3, 1, 1)
    if std is not None:
        out = out / torch.tensor(std, dtype=compute_dtype).view(1, 3, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return out.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
