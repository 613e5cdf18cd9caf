"""Qwen2.5-Omni configuration as plain dataclasses (no transformers import).

Field names mirror the keys of the published `config.json` (and transformers 5.24's config
classes); defaults equal transformers 5.24's `configuration_qwen2_5_omni.py` defaults, which are
the 7B values for the Thinker. Two transformers defaults are *not* the 7B values and are kept as
transformers has them, so that a config.json that omits them builds the same model here as there:
the vision `hidden_size` (3584; the 7B checkpoint says 1280) and the talker widths (3584 wide,
28 layers/heads; the 7B talker is 896 wide, 24 layers, 12 heads).

Both RoPE spellings are read:
- published 2025 style: `"rope_scaling": {"mrope_section": [...], "type"/"rope_type": ...}` plus
  a top-level `"rope_theta"`;
- transformers 5.x style: `"rope_parameters": {"rope_type", "rope_theta", "mrope_section"}`.
When both are present `rope_scaling` wins, as in transformers' `convert_rope_params_to_dict`.

Unknown keys are kept (per section) in `extra` and written back by `to_dict`. Wrong types and
inconsistent values raise `ValueError` naming the dotted field path.

Modules: `sections` (the shared `_Section` machinery and type coercion), `rope`, `decoders`
(Thinker LLM, Talker), `encoders` (audio, vision), `token2wav` (DiT, BigVGAN), `omni` (Thinker,
the whole config, `load`). Import the names from this package.
"""
from .decoders import TalkerConfig, TextConfig
from .encoders import AudioEncoderConfig, VisionEncoderConfig
from .omni import OmniConfig, ThinkerConfig, load
from .rope import RopeParameters
from .token2wav import BigVGANConfig, DiTConfig, Token2WavConfig

__all__ = [
    "RopeParameters",
    "AudioEncoderConfig",
    "VisionEncoderConfig",
    "TextConfig",
    "ThinkerConfig",
    "TalkerConfig",
    "DiTConfig",
    "BigVGANConfig",
    "Token2WavConfig",
    "OmniConfig",
    "load",
]
