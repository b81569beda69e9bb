"""rescale_ext: batched bilinear rescaling + periodic patch gathering in one op.

`rescale_gather` turns packed uint8 HWC windows into normalised patches of their rescaled images,
cut at given destination corners, without materialising any full rescaled image. The compiled
kernels (C++ always, CUDA when built) live in `rescale_ext._C`; without it the package falls back,
with a warning, to the pure-PyTorch reference in `rescale_ext.reference`.
"""
import warnings

try:
    from . import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
    HAVE_COMPILED = True
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    HAVE_COMPILED = False
    warnings.warn(
        f"rescale_ext._C is not built ({exc}); rescale_gather runs on the slow pure-PyTorch "
        "reference. Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

from .ops import built_with_cuda, rescale_gather  # noqa: E402
from .packing import pack_windows  # noqa: E402
from .reference import dst_length, source_taps  # noqa: E402

__all__ = ["rescale_gather", "built_with_cuda", "pack_windows", "dst_length", "source_taps",
           "HAVE_COMPILED"]
