"""The whole config.json: `ThinkerConfig` (encoders + LLM + multimodal token ids), `OmniConfig`
and `load`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .decoders import TalkerConfig, TextConfig
from .encoders import AudioEncoderConfig, VisionEncoderConfig
from .sections import _positive, _Section
from .token2wav import BigVGANConfig, DiTConfig, Token2WavConfig


@dataclass
class ThinkerConfig(_Section):
    """thinker_config: audio + vision encoders and the LLM, plus the multimodal token ids."""

    _aliases: ClassVar[dict[str, str]] = {
        "image_token_id": "image_token_index",
        "video_token_id": "video_token_index",
        "audio_token_id": "audio_token_index",
    }

    audio_config: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    vision_config: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    text_config: TextConfig = field(default_factory=TextConfig)
    audio_token_index: int = 151646
    image_token_index: int = 151655
    video_token_index: int = 151656
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    audio_start_token_id: int = 151647
    audio_end_token_id: int = 151648
    user_token_id: int = 872
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    # Not transformers fields, but in the published config.json and read by transformers'
    # get_rope_index (it fails without vision_start_token_id when images are present).
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    extra: dict = field(default_factory=dict)

    @property
    def image_token_id(self) -> int:
        return self.image_token_index

    @property
    def video_token_id(self) -> int:
        return self.video_token_index

    @property
    def audio_token_id(self) -> int:
        return self.audio_token_index

    def token_ids(self) -> dict[str, int]:
        return {
            "audio": self.audio_token_index,
            "image": self.image_token_index,
            "video": self.video_token_index,
            "audio_start": self.audio_start_token_id,
            "audio_end": self.audio_end_token_id,
            "vision_start": self.vision_start_token_id,
            "vision_end": self.vision_end_token_id,
        }

    def check_token_ids(self, path="config.thinker_config") -> None:
        """Multimodal ids must index the embedding table. Not part of parsing: transformers
        accepts (and text-only prompts run with) tiny test configs that keep the 7B ids."""
        vocab = self.text_config.vocab_size
        for name, value in self.token_ids().items():
            if not 0 <= value < vocab:
                key = {"audio": "audio_token_index", "image": "image_token_index", "video": "video_token_index"}.get(
                    name, f"{name}_token_id"
                )
                raise ValueError(f"{path}.{key} = {value} is outside the vocabulary (text_config.vocab_size = {vocab})")

    def validate(self, path="config"):
        _positive(self, path, "position_id_per_seconds", "seconds_per_chunk")
        ids = self.token_ids()
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"{path}: multimodal token ids must be distinct, got {ids}")
        hidden = self.text_config.hidden_size
        if self.audio_config.output_dim != hidden:
            raise ValueError(
                f"{path}.audio_config.output_dim ({self.audio_config.output_dim}) must equal "
                f"{path}.text_config.hidden_size ({hidden})"
            )
        if self.vision_config.out_hidden_size != hidden:
            raise ValueError(
                f"{path}.vision_config.out_hidden_size ({self.vision_config.out_hidden_size}) must equal "
                f"{path}.text_config.hidden_size ({hidden})"
            )

@dataclass
class OmniConfig(_Section):
    """The whole Qwen2.5-Omni config.json."""

    thinker_config: ThinkerConfig = field(default_factory=ThinkerConfig)
    talker_config: TalkerConfig = field(default_factory=TalkerConfig)
    token2wav_config: Token2WavConfig = field(default_factory=Token2WavConfig)
    enable_audio_output: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def _preprocess(cls, d, path):
        model_type = d.get("model_type", "qwen2_5_omni")
        if model_type != "qwen2_5_omni":
            raise ValueError(f"{path}.model_type must be 'qwen2_5_omni', got {model_type!r}")
        return d

    def validate(self, path="config"):
        thinker_hidden = self.thinker_config.text_config.hidden_size
        if self.enable_audio_output:
            if self.talker_config.embedding_size != thinker_hidden:
                # The talker consumes thinker hidden states and thinker token embeddings.
                raise ValueError(
                    f"{path}.talker_config.embedding_size ({self.talker_config.embedding_size}) must equal "
                    f"thinker_config.text_config.hidden_size ({thinker_hidden})"
                )

    def check_token_ids(self, path="config") -> None:
        """Token ids that must index embedding tables: the Thinker's multimodal ids and the
        Talker's tts_text_* ids (looked up in the Thinker's embedding). Call before running
        multimodal prompts or speech output; parsing alone accepts them (see ThinkerConfig)."""
        self.thinker_config.check_token_ids(f"{path}.thinker_config")
        if self.enable_audio_output:
            vocab = self.thinker_config.text_config.vocab_size
            for name in ("tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id"):
                value = getattr(self.talker_config, name)
                if not 0 <= value < vocab:
                    raise ValueError(
                        f"{path}.talker_config.{name} = {value} must be a Thinker token id "
                        f"(thinker_config.text_config.vocab_size = {vocab})"
                    )

    def _postprocess_dict(self, out, style):
        # Key order of a real config.json: architectures/model_type first.
        head = {"architectures": ["Qwen2_5OmniForConditionalGeneration"], "model_type": "qwen2_5_omni"}
        for key in head:
            if key in self.extra:
                head[key] = self.extra[key]
        return {**head, **out}

    @property
    def thinker(self) -> ThinkerConfig:
        return self.thinker_config

    @property
    def text(self) -> TextConfig:
        return self.thinker_config.text_config

    @property
    def talker(self) -> TalkerConfig:
        return self.talker_config

    @property
    def dit(self) -> DiTConfig:
        return self.token2wav_config.dit_config

    @property
    def bigvgan(self) -> BigVGANConfig:
        return self.token2wav_config.bigvgan_config

    def save(self, path, style: str = "2025") -> Path:
        """Write config.json (to `path`, or into it when it is a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps(self.to_dict(style), indent=2, sort_keys=False) + "\n")
        return path


def load(path) -> OmniConfig:
    """Read a config.json (or the config.json inside a checkpoint directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return OmniConfig.from_dict(data, "config")
