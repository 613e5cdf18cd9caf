"""Access to the compiled extension (`_C`, always built; `_cuda`, built where nvcc exists)."""
from . import _C  # noqa: F401  (the CPU twin is always part of the install)

try:
    from . import _cuda
except ImportError as exc:  # built without nvcc, or the CUDA runtime library is missing
    _cuda = None
    _cuda_import_error = str(exc)
else:
    _cuda_import_error = ""


def cuda_extension_available() -> bool:
    return _cuda is not None


def cuda_device_status() -> tuple[int, str]:
    """(number of CUDA devices, reason when 0) as the CUDA extension sees them."""
    if _cuda is None:
        return 0, f"CUDA extension not built or not importable: {_cuda_import_error}"
    count, reason = _cuda.device_status()
    return int(count), str(reason)


def require_cuda_extension(op: str):
    """The CUDA module, or a RuntimeError saying why an op that got CUDA tensors cannot run."""
    if _cuda is None:
        raise RuntimeError(
            f"{op} got CUDA tensors but omni_kernels._cuda is not available ({_cuda_import_error or 'not built'}); "
            "reinstall on a machine with nvcc on PATH: pip install -e . --no-build-isolation"
        )
    return _cuda
