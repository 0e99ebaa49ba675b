"""Builds the optional CUDA extension ``bigbird_kernels._C`` when possible or asked.

Environment:
  BIGBIRD_BUILD_CUDA=0   never build it;  =1  build it or fail;  unset: build when torch has CUDA and nvcc exists.
  BIGBIRD_CUDA_ARCHS     arch list, default "8.0;9.0a" (sm_80 portable path, sm_90a Hopper path).
Without the extension the package still works (Triton and reference backends); a GPU machine can
JIT-build it on first use instead (see bigbird_kernels/backends/cuda.py).
Build it with ``pip install --no-build-isolation .`` so setup.py sees the installed torch.
"""

import glob
import os
import sys

from setuptools import find_packages, setup


def cuda_extensions():
    want = os.environ.get("BIGBIRD_BUILD_CUDA", "").strip()
    if want == "0":
        print("bigbird-kernels: BIGBIRD_BUILD_CUDA=0, skipping the CUDA extension", file=sys.stderr)
        return [], {}
    sources = sorted(glob.glob("csrc/*.cu") + glob.glob("csrc/*.cpp"))
    reason = None
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        reason = "torch is not importable in the build environment (use --no-build-isolation)"
    else:
        if torch.version.cuda is None:
            reason = "torch has no CUDA support"
        elif CUDA_HOME is None:
            reason = "nvcc / CUDA_HOME not found"
        elif not sources:
            reason = "no CUDA sources"
    if reason:
        if want == "1":
            raise RuntimeError(f"BIGBIRD_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
        print(f"bigbird-kernels: skipping the CUDA extension ({reason})", file=sys.stderr)
        return [], {}
    archs = os.environ.get("BIGBIRD_CUDA_ARCHS", "8.0;9.0a")
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    ext = CUDAExtension(
        name="bigbird_kernels._C",
        sources=sources,
        # no -std flag: torch's build helper adds the C++ standard its own headers need (c++17 or c++20)
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


# The CUDA sources ship inside the package as bigbird_kernels/csrc/ (wheel and sdist), so an installed
# package can JIT-build them; in a source checkout they stay at the repository root's csrc/.
PACKAGES = find_packages(include=["bigbird_kernels*", "bigbird*"]) + ["bigbird_kernels.csrc"]
PACKAGE_DIR = {"bigbird_kernels.csrc": "csrc"}
PACKAGE_DATA = {
    "bigbird_kernels": ["py.typed"],
    "bigbird": ["py.typed"],
    "bigbird_kernels.csrc": ["*.cu", "*.cuh", "*.cpp", "*.h", "*.hpp"],
}

ext_modules, cmdclass = cuda_extensions()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, package_data=PACKAGE_DATA, ext_modules=ext_modules,
      cmdclass=cmdclass)
