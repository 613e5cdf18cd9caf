"""Builds the compiled extension with ninja, without importing torch.

Why not torch.utils.cpp_extension: pip builds in an isolated environment where importing torch
would install a multi-GB CUDA wheel, and the CPU torch wheel cannot compile torch's CUDA headers.
So the C++ CPU twin (`omni_kernels._C`) and the CUDA module (`omni_kernels._cuda`) take raw
pointers/integers and depend only on pybind11 (+ the CUDA runtime for the latter).

The CUDA module is built when nvcc is found (CUDA_HOME, then PATH) unless OMNI_KERNELS_NO_CUDA=1;
a machine without nvcc installs the CPU twin only.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
CUDA_ARCHS = ("80", "90")


def find_nvcc():
    if os.environ.get("OMNI_KERNELS_NO_CUDA") == "1":
        return None
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


class NinjaExtension(Extension):
    def __init__(self, name, sources, cuda=False):
        super().__init__(name, sources=[])
        self.ninja_sources = [str(ROOT / s) for s in sources]
        self.cuda = cuda


class NinjaBuildExt(build_ext):
    def build_extension(self, ext):
        import pybind11

        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(self.build_temp).resolve() / ext.name
        tmp.mkdir(parents=True, exist_ok=True)
        includes = f"-I{pybind11.get_include()} -I{sysconfig.get_paths()['include']} -I{ROOT / 'csrc'}"
        cxx = os.environ.get("CXX", "c++")
        lines = [
            f"cxxflags = -O3 -std=c++17 -fPIC -fvisibility=hidden {includes}",
            "rule cxx",
            f"  command = {cxx} -MMD -MF $out.d $cxxflags -c $in -o $out",
            "  depfile = $out.d",
        ]
        if ext.cuda:
            nvcc = find_nvcc()
            gencode = " ".join(f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS)
            lines += [
                f"nvccflags = -O3 -std=c++17 -Xcompiler -fPIC -Xcompiler -fvisibility=hidden {gencode} {includes}",
                "rule nvcc",
                f"  command = {nvcc} $nvccflags --generate-dependencies-with-compile --dependency-output $out.d -c $in -o $out",
                "  depfile = $out.d",
                "rule link",
                f"  command = {nvcc} -shared $in -o $out -lcudart",
            ]
        else:
            lines += ["rule link", f"  command = {cxx} -shared $in -o $out"]
        objects = []
        for src in ext.ninja_sources:
            obj = tmp / (Path(src).name + ".o")
            rule = "nvcc" if src.endswith(".cu") else "cxx"
            lines.append(f"build {obj}: {rule} {src}")
            objects.append(str(obj))
        lines.append(f"build {out}: link {' '.join(objects)}")
        (tmp / "build.ninja").write_text("\n".join(lines) + "\n")
        ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
        subprocess.check_call([ninja, "-C", str(tmp)])


def extensions():
    exts = [NinjaExtension("omni_kernels._C", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp")))]
    if find_nvcc():
        exts.append(NinjaExtension("omni_kernels._cuda", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu")), cuda=True))
    else:
        print("omni-kernels: nvcc not found; building the CPU extension only", file=sys.stderr)
    return exts


setup(
    packages=find_packages(include=["omni_kernels", "omni_kernels.*"])
    + ["omni_runtime"]
    + ["omni_runtime." + p for p in find_packages(where="runtime")],
    package_dir={"omni_runtime": "runtime"},
    ext_modules=extensions(),
    cmdclass={"build_ext": NinjaBuildExt},
)
