"""RoPE settings: `RopeParameters` and `_read_rope`, which folds both spellings of config.json
(2025 `rope_scaling` + `rope_theta`, 5.x `rope_parameters`) into one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .sections import _Section

# RoPE types our kernels implement. "mrope" is the Qwen2-VL-era name of the same math as
# "default" (sections come from mrope_section), so it is normalised to "default".
_TEXT_ROPE_TYPES = ("default",)


@dataclass
class RopeParameters(_Section):
    """Normalised RoPE settings (the 5.x `rope_parameters` dict)."""

    rope_type: str = "default"
    rope_theta: float = 1_000_000.0
    mrope_section: Optional[list[int]] = None
    extra: dict = field(default_factory=dict)

    def _postprocess_dict(self, out, style):
        if out.get("mrope_section") is None:
            out.pop("mrope_section")
        return out


def _read_rope(d: dict, path: str, default_theta: float, default_mrope: Optional[list[int]]) -> dict:
    """Fold `rope_scaling`/`rope_theta`/`rope_parameters` into one `rope_parameters` dict, with
    transformers' precedence (rope_scaling, then rope_parameters; theta from the dict, then the
    top-level key, then the default)."""
    scaling = d.pop("rope_scaling", None)
    params = d.pop("rope_parameters", None)
    theta = d.pop("rope_theta", None)
    for key, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}.{key}: expected an object, got {type(value).__name__} {value!r:.80}")
    rp = dict(scaling or params or {})
    if theta is not None:
        rp.setdefault("rope_theta", theta)
    rp.setdefault("rope_theta", default_theta)
    rp.setdefault("rope_type", rp.get("type", "default"))
    if rp.get("type") == rp["rope_type"]:
        del rp["type"]  # the legacy duplicate; to_dict("2025") writes it back
    if default_mrope is not None:
        rp.setdefault("mrope_section", list(default_mrope))
    d["rope_parameters"] = rp
    return d
