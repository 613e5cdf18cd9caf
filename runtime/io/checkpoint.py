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

The pieces: `shards` (safetensors headers), `speakers` (spk_dict.pt), `dtypes` (the dtype
argument), `progress` (a progress line for loading).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

import torch

from . import layout
from ..config import OmniConfig
from ..config import load as load_config
from .dtypes import _FLOAT_DTYPES, _ST_DTYPES, DtypeSpec, _dtype_for
from .dtypes import parse_dtype  # re-exported: load_tensors' dtype argument
from .progress import ProgressLine  # re-exported: load_tensors' progress callback
from .shards import TensorInfo, read_header
from .speakers import SPEAKER_FILE, Speaker, load_speakers
from .tokenizer import Tokenizer

__all__ = [
    "Checkpoint",
    "open_checkpoint",
    "load_tensors",
    "parse_dtype",
    "ProgressLine",
    "format_key_list",
]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def format_key_list(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    if len(keys) > limit:
        shown += f", ... and {len(keys) - limit} more"
    return shown


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
        for name, info in read_header(path / shard).items():
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
        speakers = load_speakers(path / SPEAKER_FILE, config)

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
