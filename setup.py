"""Build of rescale_ext._C: the C++ kernel always, the CUDA kernel when torch has CUDA and nvcc is found.

Environment switches:
  FORCE_CUDA=1  build the CUDA kernel or fail (a missing toolchain is an error)
  FORCE_CPU=1   never build the CUDA kernel
  DEBUG=1       -O0 -g
  CUDA_HOME     where nvcc lives (torch's own discovery otherwise)
  TORCH_CUDA_ARCH_LIST  e.g. "9.0" for H100/H200
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _nvcc_found():
    return CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))


def want_cuda():
    """CUDA when torch was built with it and nvcc exists; torch.cuda.is_available() is not asked,
    because build hosts often have no GPU."""
    if _flag("FORCE_CPU"):
        return False
    available = torch.version.cuda is not None and _nvcc_found()
    if _flag("FORCE_CUDA") and not available:
        raise RuntimeError(
            "FORCE_CUDA=1 but the CUDA kernel cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r} "
            "(set CUDA_HOME to a directory holding bin/nvcc)")
    return available


def extensions():
    debug = _flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = [os.path.join("csrc", "ops.cpp")]
    macros = []  # torch adds Py_LIMITED_API itself for py_limited_api extensions
    extra = {"cxx": opt + ["-fdiagnostics-color=always"]}
    ext_cls = CppExtension
    if want_cuda():
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        macros.append(("RESCALE_EXT_WITH_CUDA", None))
        extra["nvcc"] = opt + ["-lineinfo"]
        ext_cls = CUDAExtension
        print(f"rescale_ext: building the C++ and CUDA kernels (CUDA_HOME={CUDA_HOME})")
    else:
        print("rescale_ext: building the C++ kernel only (no CUDA toolchain, or FORCE_CPU=1)")
    return [ext_cls("rescale_ext._C", sources, define_macros=macros, extra_compile_args=extra,
                    py_limited_api=True)]


# name, version, dependencies and the `fitgap` console script: pyproject.toml's [project]
setup(
    packages=find_packages(include=["rescale_ext", "rescale_ext.*", "fitgap", "fitgap.*"]),
    package_data={"fitgap": ["web/*.html"]},  # the page of `fitgap serve`
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
