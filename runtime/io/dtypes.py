"""Weight dtypes: safetensors' dtype strings, and the dtype argument of `checkpoint.load_tensors`
(None, a dtype or name, or {name prefix: dtype})."""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch

__all__ = ["parse_dtype", "recommended_dtypes", "DtypeSpec"]

# safetensors dtype strings -> (torch dtype, bytes per element)
_ST_DTYPES = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = (getattr(torch, _attr), 1)

# Weights can be stored in these and converted to any of them on load.
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

DtypeSpec = Union[None, str, torch.dtype, Mapping[str, Union[None, str, torch.dtype]]]


def parse_dtype(dtype) -> Optional[torch.dtype]:
    """None (keep the stored dtype), a torch dtype, or a name ("bf16", "float16", ...).
    Only float32 / float16 / bfloat16 are supported; anything else is a ValueError."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype!r}: use one of bfloat16, float16, float32")
        return _DTYPE_NAMES[key]
    if isinstance(dtype, torch.dtype):
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"unsupported dtype {dtype}: use one of torch.bfloat16, torch.float16, torch.float32")
        return dtype
    raise ValueError(f"dtype must be a torch dtype, a name or None, got {type(dtype).__name__} {dtype!r}")


def recommended_dtypes(compute_dtype) -> dict[str, Optional[torch.dtype]]:
    """Per-prefix dtypes for `load_tensors`: everything in `compute_dtype` except Token2Wav,
    which runs in fp32 (its flow matching and vocoder are precision-sensitive; transformers also
    forces it to float)."""
    return {"": parse_dtype(compute_dtype), "token2wav.": torch.float32}


def _dtype_for(name: str, spec: DtypeSpec) -> Optional[torch.dtype]:
    if not isinstance(spec, Mapping):
        return parse_dtype(spec)
    best, best_len = None, -1
    for prefix, value in spec.items():
        if not isinstance(prefix, str):
            raise ValueError(f"dtype mapping keys must be name prefixes (str), got {prefix!r}")
        if name.startswith(prefix) and len(prefix) > best_len:
            best, best_len = value, len(prefix)
    return parse_dtype(best)
