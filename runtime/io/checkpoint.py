"""Open a Qwen2.5-Omni checkpoint directory and load its tensors straight to a device.

A checkpoint directory in the official layout holds `config.json`, the weights (sharded
`model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`, or one
`model.safetensors`), `spk_dict.pt` (the Talker's speakers) and tokenizer files.

`open_checkpoint` reads only metadata: the config, every shard's safetensors *header* (names,
dtypes, shapes, byte ranges, checked against the file size), the speakers and the tokenizer
paths. `load_tensors` then validates the requested tensors against the layout computed from the
config (missing / unexpected / mis-shaped -> one ValueError listing them with their shard) before
reading any data, and reads tensor by tensor with `safetensors.safe_open(..., device=...)`, so
each tensor goes straight to the target device and dtype and host memory never holds more than
one tensor beyond the result (the model is never built twice).
"""
from __future__ import annotations

import json
import math
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

import torch

from . import layout
from ..config import OmniConfig
from ..config import load as load_config
from .tokenizer import Tokenizer

__all__ = [
    "Checkpoint",
    "Speaker",
    "TensorInfo",
    "open_checkpoint",
    "load_tensors",
    "parse_dtype",
    "recommended_dtypes",
    "ProgressLine",
    "format_key_list",
]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SPEAKER_FILE = "spk_dict.pt"

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


def format_key_list(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    if len(keys) > limit:
        shown += f", ... and {len(keys) - limit} more"
    return shown


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shard: str  # file name inside the checkpoint directory
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string, e.g. "BF16"
    nbytes: int


@dataclass
class Speaker:
    """One entry of spk_dict.pt, as transformers' `load_speakers` keeps it: the Talker's text
    bos token id, the speaker embedding `cond` (1, enc_emb_dim) and the reference mel
    `ref_mel` (1, frames, mel_dim) for the DiT's ECAPA encoder (normalised to these shapes)."""

    name: str
    bos_token: int
    cond: torch.Tensor
    ref_mel: torch.Tensor


@dataclass
class Checkpoint:
    path: Path
    config: OmniConfig
    tensors: dict[str, TensorInfo]
    shards: list[str]
    index_file: Optional[Path] = None
    speakers: dict[str, Speaker] = field(default_factory=dict)
    tokenizer_file: Optional[Path] = None
    tokenizer_config: dict = field(default_factory=dict)
    generation_config: dict = field(default_factory=dict)

    @property
    def note(self) -> Optional[str]:
        """The `_omni_runtime_note` of checkpoints written by tiny_checkpoint (random weights)."""
        return self.config.extra.get("_omni_runtime_note")

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.tensors if n.startswith(prefix)]

    def nbytes(self, prefix: str = "") -> int:
        return sum(t.nbytes for n, t in self.tensors.items() if n.startswith(prefix))

    def tokenizer(self) -> Tokenizer:
        """tokenizer.json through `tokenizers` when present, else an ids-only tokenizer."""
        if self.tokenizer_file is not None:
            return Tokenizer.from_file(self.tokenizer_file)
        return Tokenizer.ids_only(vocab_size=self.config.thinker_config.text_config.vocab_size)

    def stop_token_ids(self) -> list[int]:
        """Thinker stop ids: generation_config.json's eos_token_id, else <|im_end|> and
        <|endoftext|> from the tokenizer."""
        eos = self.generation_config.get("eos_token_id")
        if isinstance(eos, int):
            return [eos]
        if isinstance(eos, list) and eos and all(isinstance(e, int) for e in eos):
            return list(eos)
        tok = self.tokenizer()
        ids = [tok.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
        return [i for i in ids if i is not None]

    def speaker(self, name: str) -> Speaker:
        if name not in self.speakers:
            have = ", ".join(sorted(self.speakers)) or "none"
            raise ValueError(f"speaker {name!r} is not in {self.path / SPEAKER_FILE} (available: {have})")
        return self.speakers[name]


# ---- opening ----------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} cannot be read as JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_header(path: Path) -> dict[str, TensorInfo]:
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


def _load_speakers(path: Path, config: OmniConfig) -> dict[str, Speaker]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle error, a zip error, a truncated file...
        raise ValueError(f"speaker file {path} cannot be read: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"speaker file {path} must hold a dict of speakers, got {type(raw).__name__}")
    dit = config.token2wav_config.dit_config
    vocab = config.thinker_config.text_config.vocab_size
    speakers: dict[str, Speaker] = {}
    for name, entry in raw.items():
        where = f"speaker {name!r} in {path}"
        if not isinstance(entry, dict) or not {"bos_token", "cond", "ref_mel"} <= set(entry):
            raise ValueError(f"{where} must be a dict with bos_token, cond and ref_mel")
        bos = entry["bos_token"]
        if isinstance(bos, torch.Tensor) and bos.numel() == 1:
            bos = int(bos.item())
        if isinstance(bos, bool) or not isinstance(bos, int) or not 0 <= bos < vocab:
            raise ValueError(f"{where}: bos_token must be a Thinker token id below {vocab}, got {bos!r}")
        cond, ref = entry["cond"], entry["ref_mel"]
        if not isinstance(cond, torch.Tensor) or cond.numel() != dit.enc_emb_dim:
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ValueError(f"{where}: cond must hold dit_config.enc_emb_dim = {dit.enc_emb_dim} values, got {shape}")
        if not isinstance(ref, torch.Tensor) or ref.dim() not in (2, 3) or ref.shape[-1] != dit.mel_dim or (
            ref.dim() == 3 and ref.shape[0] != 1
        ) or ref.shape[-2] == 0:
            shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise ValueError(f"{where}: ref_mel must be (1, frames, {dit.mel_dim}), got {shape}")
        speakers[name] = Speaker(
            name=name,
            bos_token=bos,
            cond=cond.reshape(1, -1).float(),
            ref_mel=ref.reshape(1, ref.shape[-2], ref.shape[-1]).float(),
        )
    return speakers


def open_checkpoint(path) -> Checkpoint:
    """Read a checkpoint directory's metadata (no tensor data)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint directory not found: {path}")
    config = load_config(path / "config.json")

    index_path = path / INDEX_FILE
    if index_path.is_file():
        index = _read_json(index_path, "weight index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"weight index {index_path} has no weight_map")
        bad = [f for f in weight_map.values() if not isinstance(f, str) or "/" in f or "\\" in f or f.startswith(".")]
        if bad:
            raise ValueError(f"weight index {index_path} names invalid shard files: {format_key_list(map(str, bad), 5)}")
        shards = sorted(set(weight_map.values()))
    elif (path / SINGLE_FILE).is_file():
        index_path, weight_map, shards = None, None, [SINGLE_FILE]
    else:
        raise ValueError(f"checkpoint {path} has neither {INDEX_FILE} nor {SINGLE_FILE}")

    tensors: dict[str, TensorInfo] = {}
    for shard in shards:
        for name, info in _read_header(path / shard).items():
            if name in tensors:
                raise ValueError(f"tensor {name!r} appears in both {tensors[name].shard} and {shard}")
            tensors[name] = info
    if weight_map is not None:
        stray = [n for n, f in weight_map.items() if n not in tensors or tensors[n].shard != f]
        if stray:
            raise ValueError(
                f"weight index {index_path} lists tensors that are not in the shard it names: "
                + ", ".join(f"{n} ({weight_map[n]})" for n in stray[:20])
                + (f", ... and {len(stray) - 20} more" if len(stray) > 20 else "")
            )

    speakers = {}
    if (path / SPEAKER_FILE).is_file():
        speakers = _load_speakers(path / SPEAKER_FILE, config)

    tokenizer_file = path / "tokenizer.json"
    tok_cfg = path / "tokenizer_config.json"
    gen_cfg = path / "generation_config.json"
    return Checkpoint(
        path=path,
        config=config,
        tensors=tensors,
        shards=shards,
        index_file=index_path,
        speakers=speakers,
        tokenizer_file=tokenizer_file if tokenizer_file.is_file() else None,
        tokenizer_config=_read_json(tok_cfg, "tokenizer config") if tok_cfg.is_file() else {},
        generation_config=_read_json(gen_cfg, "generation config") if gen_cfg.is_file() else {},
    )


# ---- loading ----------------------------------------------------------------------------------


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


def _device_arg(device) -> tuple[torch.device, Union[str, int]]:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return torch.device("cuda", index), f"cuda:{index}"
    return dev, str(dev)


def _validate(ckpt: Checkpoint, prefix: str, expected: Mapping[str, tuple], skip_computed_buffers: bool) -> list[str]:
    present = [n for n in ckpt.tensors if n.startswith(prefix)]
    outside = [k for k in expected if not k.startswith(prefix)]
    if outside:
        raise ValueError(f"expected tensors outside the prefix {prefix!r}: {format_key_list(sorted(outside))}")
    missing = sorted(k for k in expected if k not in ckpt.tensors)
    unexpected = sorted(
        n for n in present if n not in expected and not (skip_computed_buffers and layout.is_computed_buffer(n))
    )
    wrong = sorted(
        n for n in expected if n in ckpt.tensors and tuple(ckpt.tensors[n].shape) != tuple(expected[n])
    )
    if missing or unexpected or wrong:
        lines = [f"checkpoint {ckpt.path} does not match the layout of its config.json (prefix {prefix!r}):"]
        if missing:
            where = ", ".join(ckpt.shards)
            lines.append(f"  missing ({len(missing)}, in none of {where}): {format_key_list(missing)}")
        if unexpected:
            items = [f"{n} [{ckpt.tensors[n].shard}]" for n in unexpected]
            lines.append(f"  unexpected ({len(unexpected)}): {format_key_list(items)}")
        if wrong:
            items = [
                f"{n} [{ckpt.tensors[n].shard}] is {list(ckpt.tensors[n].shape)}, expected {list(expected[n])}"
                for n in wrong
            ]
            lines.append(f"  wrong shape ({len(wrong)}): {format_key_list(items)}")
        raise ValueError("\n".join(lines))
    return [n for n in present if n in expected]


def load_tensors(
    ckpt: Checkpoint,
    prefix: str = "",
    device="cpu",
    dtype: DtypeSpec = None,
    expected: Optional[Mapping[str, tuple]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    strip_prefix: bool = False,
    skip_computed_buffers: bool = True,
) -> dict[str, torch.Tensor]:
    """Load every tensor whose name starts with `prefix`, validated against `expected`
    (name -> shape; default: `layout.expected_tensors(ckpt.config)` under `prefix`).

    dtype: None (keep stored), a dtype / name, or {name prefix: dtype} (longest prefix wins,
    e.g. `recommended_dtypes("bf16")` keeps token2wav in fp32). progress(bytes_read, total_bytes)
    is called after each tensor. Returns {name: tensor} (names without `prefix` when
    strip_prefix). Raises ValueError for missing / unexpected / mis-shaped tensors (all listed,
    with shards), unsupported dtypes, bad devices and unreadable shards.
    """
    if not isinstance(ckpt, Checkpoint):
        raise ValueError(f"load_tensors needs a Checkpoint from open_checkpoint, got {type(ckpt).__name__}")
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    if expected is None:
        expected = layout.select(layout.expected_tensors(ckpt.config), prefix)
    elif not isinstance(expected, Mapping):
        raise ValueError(f"expected must be a mapping name -> shape, got {type(expected).__name__}")
    names = _validate(ckpt, prefix, expected, skip_computed_buffers)
    targets = {n: _dtype_for(n, dtype) for n in names}
    for n in names:
        stored = ckpt.tensors[n].dtype
        if stored not in _ST_DTYPES or _ST_DTYPES[stored][0] not in _FLOAT_DTYPES:
            raise ValueError(
                f"tensor {n} in {ckpt.tensors[n].shard} is stored as {stored}; only F32, F16 and BF16 weights are supported"
            )
    dev, dev_arg = _device_arg(device)

    from safetensors import safe_open

    total = sum(ckpt.tensors[n].nbytes for n in names)
    done = 0
    out: dict[str, torch.Tensor] = {}
    by_shard: dict[str, list[str]] = {}
    for n in names:
        by_shard.setdefault(ckpt.tensors[n].shard, []).append(n)
    if progress is not None:
        progress(0, total)
    for shard in sorted(by_shard):
        shard_path = ckpt.path / shard
        try:
            with safe_open(str(shard_path), framework="pt", device=dev_arg) as f:
                for n in by_shard[shard]:
                    t = f.get_tensor(n)
                    if targets[n] is not None and t.dtype != targets[n]:
                        t = t.to(targets[n])
                    out[n[len(prefix):] if strip_prefix else n] = t
                    done += ckpt.tensors[n].nbytes
                    if progress is not None:
                        progress(done, total)
        except ValueError:
            raise
        except Exception as e:  # safetensors' SafetensorError, OSError, CUDA OOM...
            raise ValueError(f"reading weight shard {shard_path} failed: {type(e).__name__}: {e}") from None
    return out


class ProgressLine:
    """A tqdm-free progress callback for `load_tensors`: rewrites one line on a terminal
    ("loading thinker: 42% 3.1/7.4 GB 1.9 GB/s"), prints every 10% otherwise."""

    def __init__(self, label: str = "loading", stream=None, min_interval: float = 0.1):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._t0 = time.perf_counter()
        self._last = -1.0
        self._last_decile = -1
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def format(self, done: int, total: int) -> str:
        frac = done / total if total else 1.0
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        unit, scale = ("GB", 1e9) if total >= 1e9 else ("MB", 1e6)
        return (
            f"{self.label}: {frac * 100:3.0f}% {done / scale:.2f}/{total / scale:.2f} {unit} "
            f"{done / 1e9 / elapsed:.2f} GB/s"
        )

    def __call__(self, done: int, total: int) -> None:
        finished = done >= total
        now = time.perf_counter()
        if self._tty:
            if finished or now - self._last >= self.min_interval:
                self._last = now
                self.stream.write("\r" + self.format(done, total) + ("\n" if finished else ""))
                self.stream.flush()
            return
        decile = 10 if finished else int(10 * done / total) if total else 10
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(self.format(done, total) + "\n")
            self.stream.flush()
