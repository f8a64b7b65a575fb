"""Builds vaekernels and its C++ CPU extension ``vaekernels._C`` (csrc/) with torch's cpp_extension.

    pip install --no-build-isolation .        # or -e . ; needs torch, ninja and a C++ compiler
    python setup.py build_ext --inplace       # the extension only, next to the sources

Environment variables (build time; read by vaekernels/envs.py, loaded here by path):
    VAEKERNELS_CPU_ARCH   value of -march for the extension (default "native": a from-source build
                          runs where it was built; e.g. "x86-64-v3" for a portable one, "" for none)
    VAEKERNELS_BUILD_EXT  "0" installs the pure-Python package without the extension
"""
import importlib.util
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    with open(os.path.join(HERE, "vaekernels", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def envs():
    spec = importlib.util.spec_from_file_location("vaekernels_envs", os.path.join(HERE, "vaekernels", "envs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extensions():
    if not envs().build_ext():
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    arch = envs().cpu_arch()
    # -fopenmp: at::parallel_for is inlined into our code and threads through OpenMP, as libtorch does;
    # -g0: Python's default -g doubles the compile time of these ATen-heavy sources
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-unknown-pragmas"] + ([f"-march={arch}"] if arch else [])
    sources = sorted(os.path.join("csrc", f) for f in os.listdir(os.path.join(HERE, "csrc")) if f.endswith(".cpp"))
    ext = CppExtension("vaekernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(
    name="vaekernels",
    version=version(),
    description="Fused kernels for video VAEs (Wan2.1, Wan2.2): Triton on CUDA, C++ on CPU, PyTorch fallback",
    packages=find_packages(include=["vaekernels", "vaekernels.*", "python_ref"]),
    package_data={"vaekernels": ["data/*.safetensors"]},  # the demo's trained model (vaekernels/demo.py)
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "safetensors", "tqdm"],
    # the command line's video files; diffusers for FastAutoencoderKLWan / accelerate(pipe)
    extras_require={"video": ["av", "pillow"], "diffusers": ["diffusers"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
