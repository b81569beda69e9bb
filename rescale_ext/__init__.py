"""rescale_ext: batched bilinear rescaling + periodic patch gathering in one op.

`rescale_gather` turns packed uint8 HWC windows into normalised patches of their rescaled images,
cut at given destination corners, without materialising any full rescaled image. The compiled
kernels (C++ always, CUDA when built) live in `rescale_ext._C`; without it the package falls back,
with a warning, to the pure-PyTorch reference in `rescale_ext.reference`.
"""
import glob
import os
import warnings

import torch  # noqa: F401  (_C links against torch's shared libraries: they must be loaded first)

_HERE = os.path.dirname(os.path.abspath(__file__))
_BUILT = sorted(glob.glob(os.path.join(_HERE, "_C*.so")) + glob.glob(os.path.join(_HERE, "_C*.pyd")))

if _BUILT:
    try:
        from . import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)
    except ImportError as exc:
        # A compiled module that does not load (an ABI or torch-version mismatch, a missing library)
        # must not fall back silently to the slow reference.
        raise ImportError(f"rescale_ext: the compiled module {_BUILT[0]} exists but does not load: {exc}. "
                          "Rebuild it against the installed torch with `pip install --no-build-isolation -e .` "
                          "(or `make build`).") from exc
    HAVE_COMPILED = True
else:
    HAVE_COMPILED = False
    warnings.warn(
        f"rescale_ext._C is not built (no compiled module in {_HERE}); rescale_gather runs on the slow "
        "pure-PyTorch reference. Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

from .ops import built_with_cuda, cpu_isa, cpu_isa_paths, rescale_gather  # noqa: E402
from .packing import pack_windows  # noqa: E402
from .reference import dst_length, source_taps  # noqa: E402

__all__ = ["rescale_gather", "built_with_cuda", "cpu_isa", "cpu_isa_paths", "pack_windows", "dst_length", "source_taps",
           "HAVE_COMPILED"]
