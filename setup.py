"""Build script for gcnprune_fast and its native extension ``gcnprune_fast._C``.

Build switches (environment variables):
  GCNPRUNE_CUDA=0   force a CPU-only build
  GCNPRUNE_CUDA=1   force a CUDA build (fails with a clear message when impossible)
  (unset)           CUDA kernels when a CUDA toolkit and a CUDA build of torch are present
  GCNPRUNE_NATIVE=0 build no extension at all (pure-Python package, reference ops)
  TORCH_CUDA_ARCH_LIST  CUDA architectures (default "9.0" here: H100/H200)

Supported entry points: ``pip install -e . --no-build-isolation``,
``python setup.py build_ext --inplace`` and ``python setup.py develop`` (the latter is
re-routed to pip without build isolation: setuptools >= 80 would otherwise try to
build in an isolated environment that has no torch).
"""
import glob
import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.develop import develop as _develop

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _cuda_include_and_lib_dirs():
    """Header/library folders of the pip CUDA packages (nvidia/cu13/...), where cuBLAS and
    cuSPARSE headers live for CUDA wheels of torch."""
    inc, lib = [], []
    try:
        import nvidia  # namespace package installed with CUDA wheels of torch

        for base in nvidia.__path__:
            for sub in sorted(glob.glob(os.path.join(base, "*"))):
                if os.path.isdir(os.path.join(sub, "include")):
                    inc.append(os.path.join(sub, "include"))
                if os.path.isdir(os.path.join(sub, "lib")):
                    lib.append(os.path.join(sub, "lib"))
    except ImportError:
        pass
    return inc, lib


def _extensions():
    if _env_flag("GCNPRUNE_NATIVE") is False:
        return [], {}
    # Must be set before torch.utils.cpp_extension is imported: it resolves CUDA_HOME at import
    # (and would otherwise guess /usr/local from the nvcc on PATH).
    if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    import torch
    from torch.utils import cpp_extension

    want_cuda = _env_flag("GCNPRUNE_CUDA")
    have_toolkit = cpp_extension.CUDA_HOME is not None and os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    torch_has_cuda = torch.version.cuda is not None
    if want_cuda is True and not (have_toolkit and torch_has_cuda):
        sys.exit(
            "GCNPRUNE_CUDA=1 but a CUDA build is impossible here: "
            f"CUDA toolkit found: {have_toolkit} (CUDA_HOME={cpp_extension.CUDA_HOME}), "
            f"torch built with CUDA: {torch_has_cuda} (torch {torch.__version__}). "
            "Install a CUDA toolkit / CUDA build of torch, or use GCNPRUNE_CUDA=0.")
    use_cuda = have_toolkit and torch_has_cuda if want_cuda is None else want_cuda

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    extra_cflags = ["-O3", "-fopenmp", "-std=c++20"]
    if os.environ.get("CFLAGS") is None:
        extra_cflags.append("-g0")
    # -march=native would make a library that crashes on older CPUs. Hot loops that need
    # AVX2/FMA compile a second copy with __attribute__((target(...))) and pick it at run time
    # (csrc/cpu/simd.h; at::vec::Vectorized alone falls back to scalar code without -mavx2).
    # Headers live in csrc/common/ (any device) and csrc/cpu/, included relative to csrc/.
    extra = {"cxx": extra_cflags}
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    library_dirs = []
    libraries = []
    Ext = cpp_extension.CppExtension
    if use_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        extra["nvcc"] = ["-O3", "--use_fast_math", "-std=c++20", "-lineinfo"]
        define_macros.append(("GCNPRUNE_WITH_CUDA", None))
        inc, lib = _cuda_include_and_lib_dirs()
        include_dirs += inc
        library_dirs += lib
        Ext = cpp_extension.CUDAExtension
    ext = Ext(
        name="gcnprune_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        libraries=libraries,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    print(f"[gcnprune_fast] building native extension: {'CPU + CUDA' if use_cuda else 'CPU only'}")
    return [ext], cmdclass


class develop(_develop):
    """`python setup.py develop` that works with setuptools >= 80.

    Newer setuptools implements develop as `pip install -e . --use-pep517`, which builds in an
    isolated environment without torch. We build in this environment instead."""

    def run(self):
        cmd = [sys.executable, "-m", "pip", "install", "-e", ".", "--no-build-isolation"]
        if getattr(self, "no_deps", False):
            cmd.append("--no-deps")
        if getattr(self, "user", False):
            cmd.append("--user")
        if getattr(self, "prefix", None):
            cmd += ["--prefix", self.prefix]
        subprocess.check_call(cmd, cwd=ROOT)


ext_modules, cmdclass = _extensions()
cmdclass["develop"] = develop

setup(
    name="gcnprune_fast",
    version="0.1.0",
    description="Structured channel pruning for CNNs with graph convolution networks and RL",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(
        os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gcnprune_fast", "gcnprune_fast.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "torch-pruning==1.6.1",
        "numpy",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "pytest-benchmark", "timm"],
        "timm": ["timm"],  # the timm model-zoo sweep (tests/test_timm_zoo.py)
        "bench": ["pytest-benchmark", "torch-geometric"],
        "export": ["onnx", "onnxscript", "onnxruntime"],
        "plots": ["matplotlib"],
    },
    entry_points={"console_scripts": ["gcnprune=gcnprune_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
