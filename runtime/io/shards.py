"""safetensors shard headers: tensor names, dtypes, shapes and byte ranges, read and checked
against the file size without reading tensor data."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from .dtypes import _ST_DTYPES

__all__ = ["TensorInfo", "read_header"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shard: str  # file name inside the checkpoint directory
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string, e.g. "BF16"
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header without reading tensor data."""
    if not path.is_file():
        raise ValueError(f"weight shard {path} is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} does not fit the file size {size}")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"weight shard {path} is corrupt or not a safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"weight shard {path} is corrupt: its header is not a JSON object")
    data_size = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            itemsize = _ST_DTYPES[dtype][1] if dtype in _ST_DTYPES else None
            if not all(isinstance(s, int) and s >= 0 for s in shape) or not 0 <= start <= end:
                raise ValueError("bad shape or offsets")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"weight shard {path} is corrupt: bad header entry for {name!r} ({e})") from None
        if end > data_size:
            raise ValueError(
                f"weight shard {path} is truncated or corrupt: {name!r} ends at byte {end} "
                f"but the data section has {data_size} bytes"
            )
        if itemsize is not None and math.prod(shape) * itemsize != end - start:
            raise ValueError(f"weight shard {path} is corrupt: {name!r} has {end - start} bytes for shape {list(shape)} {dtype}")
        out[name] = TensorInfo(name, path.name, shape, dtype, end - start)
    return out
