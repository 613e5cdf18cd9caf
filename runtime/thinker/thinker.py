"""The user-facing Thinker: audio encoder + vision encoder + the LLM, from one checkpoint directory.

    thinker = Thinker.from_checkpoint("Qwen2.5-Omni-7B", device="cuda", dtype="bf16", progress=True)
    for ev in thinker.generate("What do you hear?", audios=["clip.wav"], max_new_tokens=64):
        print(ev.text, end="", flush=True)

    # streaming audio input: 2-second chunks are encoded and prefilled as they arrive
    session = thinker.stream_audio("Transcribe this.", max_new_tokens=64)
    for piece in microphone:                  # any sizes, e.g. 2 s of samples at a time
        session.push(piece)
    for ev in session.finish():               # closing prompt tokens, then the streamed answer
        print(ev.text, end="", flush=True)

`Thinker.from_checkpoint(path=None)` opens an official-layout checkpoint directory (default: the
embedded tiny checkpoint, RANDOM weights, written on first use by `tiny_checkpoint`) and loads the
`thinker.*` tensors once, straight to the target device and dtype (`checkpoint.load_tensors`, one
progress line over all of them): `thinker.audio_tower.*` -> `AudioEncoder`, `thinker.visual.*` ->
`VisionEncoder`, `thinker.model.*` + `thinker.lm_head.*` -> `ThinkerLM`. The modules are built on
the meta device and adopt the loaded tensors, so the weights are never held twice.

`prepare(...)` turns a conversation into what the LLM consumes, exactly as transformers'
`Qwen2_5OmniProcessor` + `Qwen2_5OmniThinkerForConditionalGeneration.forward` do:

1. media in order of appearance: audio -> 16 kHz waveform (`load_audio`) -> Whisper log-mel
   (`log_mel_features`, on the device); image -> `preprocess_image`; video -> `load_video` (2 fps)
   -> `preprocess_video` (second_per_grid = temporal_patch_size / sample fps) and, with
   `use_audio_in_video`, its soundtrack (`load_audio_track`) -> log-mel;
2. prompt ids: the official chat template (`chat.render_prompt`, default system prompt
   `OMNI_SYSTEM_PROMPT`), tokenized, each placeholder expanded (`chat.expand_placeholder_ids`:
   audio ((L - 1)//2 + 1 - 2)//2 + 1 tokens for L mel frames, image/video t*h*w/4, audio-in-video
   interleaved in 2-second chunks);
3. inputs_embeds = token embeddings, then -- as transformers' forward -- the audio tower's output
   for all audios (standalone and video soundtracks, in order of appearance) written into the
   `<|AUDIO|>` rows in order (`masked_scatter`), the vision encoder's output for all images into
   the `<|IMAGE|>` rows, for all videos into the `<|VIDEO|>` rows;
4. TMRoPE positions (3, L) and the rope delta from `omni_kernels.rope_index` with the same
   audio_seqlens, grids and second_per_grids (transformers' `get_rope_index`).

`generate(...)` runs that prompt through a `ThinkerEngine` (paged KV cache, fused TMRoPE prefill,
paged decode, device sampling) and streams `TokenEvent`s with incrementally detokenized text.

Streaming audio input (`stream_audio`): the prompt up to the streamed audio's `<|audio_bos|>` is
prefilled at once; then every pushed piece of samples goes through `StreamingMel` (the exact STFT
frames of the offline features) and `AudioEncoderStream`, and each complete 2-second chunk
(200 mel frames -> 50 audio tokens; chunks never attend to each other in the audio tower, so a
chunk's tokens are final once its frames are) is appended with `ThinkerEngine.extend_prompt` and
prefilled into the paged cache on top of what is cached (chunked prefill, nothing recomputed).
`finish()` encodes the last partial chunk, appends `<|audio_eos|>` and the rest of the prompt
(positions and rope delta from `rope_index` over the whole prompt, now that the audio length is
known) and streams the answer.

What streaming changes, exactly:
- Latency, not values, from the STFT: mel frame f covers samples [160 f - 200, 160 f + 200), so a
  chunk's last frame needs 40 samples (2.5 ms) of the *next* chunk. Pieces of exactly 2 s release
  chunk k when piece k + 1 arrives (or at `finish()`); smaller pieces release it 2.5 ms after its
  end.
- One value can differ: Whisper's floor `max(x, max_over_the_whole_audio - 8)`. A frame emitted
  before the end is floored with the running max m (over the frames computed so far), offline with
  the final max g >= m (see `audio.StreamingMel`). So streamed features equal the offline ones
  exactly unless a log-mel bin emitted early lies more than 8 (80 dB) below a louder part that
  arrives later; then it comes out lower by at most (g - m) / 4. After `finish()`,
  `session.mel_max_deviation` is that largest difference, computed exactly (0.0 means the streamed
  prompt is bit-for-bit the offline one: e.g. speech whose loudest frame is in the first chunk,
  or no bin that far below the maximum). Tokens already prefilled are not revised.
- Audio beyond 30 s is dropped, as the offline processor truncates at 30 s.
- The streamed audio must be a standalone audio item (not a video's soundtrack).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from omni_kernels import rope_index

from ..io import checkpoint as _ckpt
from ..io import layout
from ..media.audio import SAMPLE_RATE, StreamingMel, load_audio, load_audio_track, log_mel_features
from ..models.audio_encoder import AudioEncoder, AudioEncoderStream
from ..io.chat import OMNI_SYSTEM_PROMPT, PlaceholderIds, expand_placeholder_ids, render_prompt
from ..engine.engine import Sequence as EngineSequence
from ..engine.engine import ThinkerEngine, TokenEvent
from ..engine.sampling import SamplingParams
from ..models.thinker_lm import ThinkerLM
from ..media.vision import image_kwargs_from_preprocessor_config, load_video, preprocess_image, preprocess_video
from ..models.vision_encoder import VisionEncoder

__all__ = ["Thinker", "PreparedPrompt", "AudioStreamSession", "STREAM_CHUNK_SECONDS"]

STREAM_CHUNK_SECONDS = 2.0  # the audio tower's attention chunk: 2 * n_window = 200 mel frames
_KINDS = ("audio", "image", "video")


# ====================================================================================================
# media
# ====================================================================================================
@dataclass
class _Media:
    """One media item in order of appearance. `stream` marks the streamed audio."""

    kind: str
    value: Any = None
    stream: bool = False
    # filled by Thinker._load_media
    mel: Optional[torch.Tensor] = None            # audio, or a video's soundtrack (use_audio_in_video)
    pixel_values: Optional[torch.Tensor] = None   # image / video
    grid: Optional[tuple[int, int, int]] = None
    second_per_grid: Optional[float] = None


def _describe(value) -> str:
    if isinstance(value, (str, os.PathLike)):
        return repr(os.fspath(value))
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


@dataclass
class PreparedPrompt:
    """A conversation ready for the LLM (see the module docstring).

    ids: prompt token ids, placeholders expanded. inputs_embeds (L, hidden): token embeddings with
    the audio/image/video features in the placeholder rows, in the model dtype on its device (a
    text-only prompt is sent to the engine as ids: it embeds them itself and can share their KV
    blocks through prefix caching). positions (3, L) int64 (CPU) and
    rope_delta: TMRoPE. The preprocessing products are kept (what transformers' processor would
    return): `mels` (one (128, L_i) float32 per audio, in order of appearance, video soundtracks
    included), `pixel_values` / `image_grid_thw` (n, 3), `pixel_values_videos` / `video_grid_thw` /
    `video_second_per_grid` (n,), `use_audio_in_video`. `timings`: seconds per stage."""

    ids: list[int]
    inputs_embeds: torch.Tensor
    positions: torch.Tensor
    rope_delta: int
    mels: list[torch.Tensor] = field(default_factory=list)
    pixel_values: Optional[torch.Tensor] = None
    image_grid_thw: Optional[torch.Tensor] = None
    pixel_values_videos: Optional[torch.Tensor] = None
    video_grid_thw: Optional[torch.Tensor] = None
    video_second_per_grid: Optional[torch.Tensor] = None
    use_audio_in_video: bool = False
    timings: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    @property
    def has_media(self) -> bool:
        return bool(self.mels) or self.pixel_values is not None or self.pixel_values_videos is not None

    @property
    def audio_lengths(self) -> list[int]:
        """Mel frames of each audio (the processor's feature_attention_mask.sum(-1))."""
        return [int(m.shape[1]) for m in self.mels]

    def request(self) -> dict:
        """Keyword arguments for `ThinkerEngine.add_request` / items of `ThinkerEngine.generate`
        (ids alone for a text-only prompt: same positions, the engine embeds them)."""
        if not self.has_media:
            return {"prompt_ids": self.ids}
        return {"prompt_ids": self.ids, "inputs_embeds": self.inputs_embeds, "positions": self.positions,
                "rope_delta": self.rope_delta}


# ====================================================================================================
# the Thinker
# ====================================================================================================
class Thinker:
    """AudioEncoder + VisionEncoder + ThinkerLM of one checkpoint, with its tokenizer, chat template,
    stop ids and a `ThinkerEngine`. Build with `from_checkpoint`."""

    def __init__(self, config, audio_tower: AudioEncoder, visual: VisionEncoder, lm: ThinkerLM, tokenizer,
                 stop_token_ids: Sequence[int] = (), *, path: Optional[Path] = None, note: Optional[str] = None,
                 preprocessor_config: Optional[dict] = None, engine_kwargs: Optional[dict] = None):
        self.config = config
        self.thinker_config = config.thinker_config
        self.audio_tower, self.visual, self.lm = audio_tower, visual, lm
        self.tokenizer = tokenizer
        self.stop_token_ids = tuple(stop_token_ids)
        self.path, self.note = path, note
        self.placeholders = PlaceholderIds.from_config(config)
        vc = self.thinker_config.vision_config
        sizes = dict(patch_size=vc.patch_size, merge_size=vc.spatial_merge_size,
                     temporal_patch_size=vc.temporal_patch_size)
        image_kwargs = image_kwargs_from_preprocessor_config(preprocessor_config or {})
        # the vision config decides the patching (the encoder cannot take anything else)
        self.image_kwargs = {**image_kwargs, **sizes}
        self.video_kwargs = {**{k: v for k, v in image_kwargs.items() if k in ("image_mean", "image_std")}, **sizes}
        self.video_fps = 2.0
        self.skip_special_tokens = True
        self.engine_kwargs = dict(engine_kwargs or {})
        self._engine: Optional[ThinkerEngine] = None
        self.load_seconds: Optional[float] = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path=None, device="cpu", dtype=None, progress=None, *,
                        engine_kwargs: Optional[dict] = None) -> "Thinker":
        """Load the Thinker of a checkpoint directory (default: the embedded tiny checkpoint,
        written on first use). dtype: "bf16" / "fp16" / "fp32" / a torch dtype / None (as stored).
        progress: True for a progress line on stderr, or a callback(bytes_done, bytes_total).
        engine_kwargs go to the `ThinkerEngine` (max_model_len, num_blocks, max_num_seqs, ...).
        Raises ValueError for a missing / corrupt checkpoint, mismatched tensors, a bad dtype or
        device."""
        t0 = time.perf_counter()
        if path is None:
            from ..io.tiny_checkpoint import default_checkpoint_dir

            path = default_checkpoint_dir()
        dtype = _ckpt.parse_dtype(dtype)
        ckpt = _ckpt.open_checkpoint(path)
        cfg = ckpt.config
        th = cfg.thinker_config
        if th.tie_word_embeddings:
            raise ValueError("a Thinker with tied embeddings (tie_word_embeddings=True) is not supported")
        expected = {}
        expected.update(layout.audio_tower_tensors(th.audio_config))
        expected.update(layout.visual_tensors(th.vision_config))
        expected.update(layout.thinker_text_tensors(th.text_config, tie_word_embeddings=False))
        if progress is True:
            progress = _ckpt.ProgressLine("loading thinker")
        elif progress is False:
            progress = None
        # one pass over the thinker's tensors: each read once, straight to device / dtype
        tensors = _ckpt.load_tensors(ckpt, prefix="thinker.", device=device, dtype=dtype, expected=expected,
                                     progress=progress)
        audio = AudioEncoder.from_state_dict(
            th.audio_config, {k: tensors.pop(k) for k in list(tensors) if k.startswith("thinker.audio_tower.")})
        visual = VisionEncoder.from_state_dict(
            th.vision_config, {k: tensors.pop(k) for k in list(tensors) if k.startswith("thinker.visual.")})
        lm = ThinkerLM.from_state_dict(th.text_config, tensors)
        pre = {}
        pre_path = Path(path) / "preprocessor_config.json"
        if pre_path.is_file():
            try:
                pre = json.loads(pre_path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{pre_path} cannot be read as JSON: {e}") from None
        tok = ckpt.tokenizer()
        thinker = cls(cfg, audio, visual, lm, tok, ckpt.stop_token_ids(), path=Path(path), note=ckpt.note,
                      preprocessor_config=pre, engine_kwargs=engine_kwargs)
        if tok.has_text:
            try:
                from_tok = PlaceholderIds.from_tokenizer(tok)
            except ValueError:
                from_tok = None
            if from_tok is not None and from_tok != thinker.placeholders:
                raise ValueError(f"the tokenizer's multimodal token ids {from_tok} do not match config.json's "
                                 f"{thinker.placeholders}")
        thinker.load_seconds = time.perf_counter() - t0
        return thinker

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    @property
    def max_model_len(self) -> int:
        if self._engine is not None:
            return self._engine.max_model_len
        limit = self.thinker_config.text_config.max_position_embeddings
        return int(self.engine_kwargs.get("max_model_len") or limit)

    @property
    def engine(self) -> ThinkerEngine:
        """The ThinkerEngine (created on first use from `engine_kwargs`)."""
        if self._engine is None:
            kw = dict(self.engine_kwargs)
            kw.setdefault("max_num_seqs", 1)
            self._engine = ThinkerEngine(self.lm, **kw)
        return self._engine

    def sampling_params(self, params: Optional[SamplingParams] = None, max_new_tokens: Optional[int] = None,
                        **kwargs) -> SamplingParams:
        """SamplingParams with the checkpoint's stop ids (when none are set). Default: greedy, 128 tokens."""
        if params is None:
            kwargs.setdefault("max_new_tokens", 128 if max_new_tokens is None else max_new_tokens)
            kwargs.setdefault("stop_token_ids", self.stop_token_ids)
            return SamplingParams(**kwargs)
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        changes = dict(kwargs)
        if max_new_tokens is not None:
            changes["max_new_tokens"] = max_new_tokens
        if not params.stop_token_ids and "stop_token_ids" not in changes:
            changes["stop_token_ids"] = self.stop_token_ids
        return dataclasses.replace(params, **changes) if changes else params

    # ------------------------------------------------------------------ conversation layout
    def _layout(self, conversation, audios, images, videos, system_prompt, *, stream: bool = False):
        """-> (raw ids with one placeholder per media item, [_Media] in order of appearance)."""
        given = {"audio": _as_list(audios, "audios"), "image": _as_list(images, "images"),
                 "video": _as_list(videos, "videos")}
        used = {k: 0 for k in _KINDS}
        media: list[_Media] = []

        def take(kind, where):
            if used[kind] >= len(given[kind]):
                raise ValueError(f"{where} has more {kind} items than {kind}s were given ({len(given[kind])})")
            used[kind] += 1
            return given[kind][used[kind] - 1]

        if _is_ids(conversation):
            if isinstance(conversation, torch.Tensor):
                conversation = conversation.reshape(-1).tolist()
            ids = self.tokenizer.check_ids(conversation, vocab_size=self.thinker_config.text_config.vocab_size,
                                           what="prompt ids")
            if not ids:
                raise ValueError("prompt ids are empty")
            ph = self.placeholders
            kind_of = {ph.audio: "audio", ph.image: "image", ph.video: "video"}
            streamed = False
            for t in ids:
                kind = kind_of.get(t)
                if kind is None:
                    continue
                if stream and kind == "audio" and not streamed:
                    media.append(_Media("audio", stream=True))
                    streamed = True
                else:
                    media.append(_Media(kind, take(kind, "the prompt ids")))
            if stream and not streamed:
                raise ValueError("stream_audio with prompt ids needs an <|AUDIO|> placeholder id "
                                 f"({self.placeholders.audio}) between <|audio_bos|> and <|audio_eos|>")
        else:
            if conversation is None or isinstance(conversation, str):
                text = conversation or ""
                content = [{"type": "audio", "stream": True}] if stream else []
                content += [{"type": "audio"} for _ in given["audio"]]
                content += [{"type": "image"} for _ in given["image"]]
                content += [{"type": "video"} for _ in given["video"]]
                if text:
                    content.append({"type": "text", "text": text})
                if not content:
                    raise ValueError("the prompt is empty: give a text prompt, prompt ids or media")
                messages = [{"role": "user", "content": content}]
            elif isinstance(conversation, (list, tuple)) and all(isinstance(m, dict) for m in conversation):
                messages = list(conversation)
            else:
                raise ValueError("the conversation must be a prompt text, a list of token ids or a list of "
                                 f"{{'role', 'content'}} messages, got {type(conversation).__name__}")
            text = render_prompt(messages, system_prompt=system_prompt)  # validates the messages
            for i, m in enumerate(messages):
                if isinstance(m["content"], str):
                    continue
                for j, item in enumerate(m["content"]):
                    kind = _item_kind(item)
                    if kind is None:
                        continue
                    where = f"messages[{i}].content[{j}]"
                    if item.get("stream"):
                        if not stream or kind != "audio":
                            raise ValueError(f"{where}: only stream_audio() takes a streamed audio item")
                        if any(x.stream for x in media):
                            raise ValueError(f"{where}: only one audio item can be streamed")
                        media.append(_Media("audio", stream=True))
                        continue
                    value = item.get(kind, item.get(f"{kind}_url"))
                    media.append(_Media(kind, value if value is not None else take(kind, "the messages")))
            if stream and not any(x.stream for x in media):
                raise ValueError('stream_audio with messages needs one item {"type": "audio", "stream": True}')
            ids = self.tokenizer.encode(text)
        for kind in _KINDS:
            if used[kind] != len(given[kind]):
                raise ValueError(f"{len(given[kind])} {kind}s were given but the prompt has places for {used[kind]}")
        return ids, media

    # ------------------------------------------------------------------ media
    def _load_media(self, media: list[_Media], use_audio_in_video: bool, timings: dict) -> None:
        if any(not m.stream for m in media):
            self.config.check_token_ids()
        dev = self.device
        for m in media:
            if m.stream:
                continue
            t0 = time.perf_counter()
            if m.kind == "audio":
                m.mel = log_mel_features(_waveform(m.value), device=dev)
                timings["audio_features_s"] = timings.get("audio_features_s", 0.0) + time.perf_counter() - t0
            elif m.kind == "image":
                pixel_values, grid = preprocess_image(_image(m.value), **self.image_kwargs)
                m.pixel_values, m.grid = pixel_values, tuple(grid[0].tolist())
                timings["image_preprocess_s"] = timings.get("image_preprocess_s", 0.0) + time.perf_counter() - t0
            else:
                frames, fps, audio = _video(m.value, self.video_fps, use_audio_in_video)
                pixel_values, grid, spg = preprocess_video(frames, fps, **self.video_kwargs)
                m.pixel_values, m.grid, m.second_per_grid = pixel_values, tuple(grid[0].tolist()), spg
                if use_audio_in_video:
                    m.mel = log_mel_features(audio, device=dev)
                timings["video_preprocess_s"] = timings.get("video_preprocess_s", 0.0) + time.perf_counter() - t0

    def _expand(self, raw_ids: list[int], media: list[_Media], use_audio_in_video: bool) -> list[int]:
        th = self.thinker_config
        audio_lengths = [int(m.mel.shape[1]) for m in media if m.mel is not None]
        return expand_placeholder_ids(
            raw_ids, self.placeholders, audio_lengths,
            [m.grid for m in media if m.kind == "image"], [m.grid for m in media if m.kind == "video"],
            [m.second_per_grid for m in media if m.kind == "video"], use_audio_in_video,
            merge_size=th.vision_config.spatial_merge_size, position_id_per_seconds=th.position_id_per_seconds,
            seconds_per_chunk=float(th.seconds_per_chunk))

    @torch.no_grad()
    def _embed(self, ids: list[int], media: list[_Media], timings: dict) -> torch.Tensor:
        """Token embeddings with the media features scattered into the placeholder rows, as
        transformers' forward does (audio, then images, then videos; masked_scatter = row order)."""
        dev = self.device
        ids_t = torch.tensor(ids, dtype=torch.long, device=dev)
        embeds = self.lm.embed(ids_t)
        ph = self.placeholders
        mels = [m.mel for m in media if m.mel is not None]
        if mels:
            t0 = time.perf_counter()
            feats, _ = self.audio_tower(mels)
            _scatter(embeds, ids_t == ph.audio, feats, "audio")
            timings["audio_encoder_s"] = timings.get("audio_encoder_s", 0.0) + time.perf_counter() - t0
        for kind, token in (("image", ph.image), ("video", ph.video)):
            items = [m for m in media if m.kind == kind]
            if not items:
                continue
            t0 = time.perf_counter()
            pixel_values = torch.cat([m.pixel_values for m in items]).to(dev)
            grids = torch.tensor([m.grid for m in items], dtype=torch.long)
            feats = self.visual(pixel_values, grids)
            _scatter(embeds, ids_t == token, feats, kind)
            timings["vision_encoder_s"] = timings.get("vision_encoder_s", 0.0) + time.perf_counter() - t0
        return embeds

    def _positions(self, ids: list[int], media: list[_Media], use_audio_in_video: bool):
        """rope_index over `ids` -> ((3, L) int64 CPU, delta)."""
        th = self.thinker_config
        images = [m.grid for m in media if m.kind == "image"]
        videos = [m for m in media if m.kind == "video"]
        lengths = [int(m.mel.shape[1]) for m in media if m.mel is not None]
        pos, delta = rope_index(
            torch.tensor([ids], dtype=torch.long),
            image_grid_thw=torch.tensor(images, dtype=torch.long) if images else None,
            video_grid_thw=torch.tensor([m.grid for m in videos], dtype=torch.long) if videos else None,
            use_audio_in_video=use_audio_in_video,
            audio_seqlens=torch.tensor(lengths, dtype=torch.long) if lengths else None,
            second_per_grids=torch.tensor([m.second_per_grid for m in videos]) if videos else None,
            spatial_merge_size=th.vision_config.spatial_merge_size,
            image_token_id=th.image_token_index, video_token_id=th.video_token_index,
            audio_token_id=th.audio_token_index, vision_start_token_id=th.vision_start_token_id,
            audio_start_token_id=th.audio_start_token_id, position_id_per_seconds=th.position_id_per_seconds,
            seconds_per_chunk=th.seconds_per_chunk)
        return pos[:, 0], int(delta.reshape(-1)[0])

    def _check_length(self, n: int) -> None:
        if n > self.max_model_len:
            raise ValueError(f"the prompt has {n} tokens, more than the context (max_model_len "
                             f"{self.max_model_len})")

    # ------------------------------------------------------------------ prepare / generate
    def prepare(self, conversation=None, *, audios=(), images=(), videos=(), use_audio_in_video: bool = False,
                system_prompt: Optional[str] = OMNI_SYSTEM_PROMPT) -> PreparedPrompt:
        """A conversation -> `PreparedPrompt` (see the module docstring).

        conversation: a prompt text (one user turn: the audios, images and videos, then the text),
        chat messages ({"role", "content"}; media items {"type": "audio"|"image"|"video", KIND: value}
        take their value from the item or, when it has none, from the next entry of audios / images /
        videos), or token ids (used as they are, no template; each single <|AUDIO|>/<|IMAGE|>/<|VIDEO|>
        id takes the next media entry and is expanded). Audio: a path, a 16 kHz waveform, or
        (waveform, sample_rate). Image: a path, a PIL image, an array / tensor. Video: a path (decoded
        at 2 fps; its soundtrack read when use_audio_in_video), frames (T, H, W, 3) at 2 fps,
        (frames, fps) or (frames, fps, 16 kHz soundtrack). system_prompt: the system turn put first
        when the messages have none (None: the template's own "You are a helpful assistant.")."""
        timings: dict = {}
        t0 = time.perf_counter()
        raw, media = self._layout(conversation, audios, images, videos, system_prompt)
        aiv = bool(use_audio_in_video)
        self._load_media(media, aiv, timings)
        ids = self._expand(raw, media, aiv)
        self._check_length(len(ids))
        embeds = self._embed(ids, media, timings)
        positions, delta = self._positions(ids, media, aiv)
        timings["prepare_s"] = time.perf_counter() - t0
        images_ = [m for m in media if m.kind == "image"]
        videos_ = [m for m in media if m.kind == "video"]
        return PreparedPrompt(
            ids=ids, inputs_embeds=embeds, positions=positions, rope_delta=delta,
            mels=[m.mel for m in media if m.mel is not None],
            pixel_values=torch.cat([m.pixel_values for m in images_]) if images_ else None,
            image_grid_thw=torch.tensor([m.grid for m in images_], dtype=torch.long) if images_ else None,
            pixel_values_videos=torch.cat([m.pixel_values for m in videos_]) if videos_ else None,
            video_grid_thw=torch.tensor([m.grid for m in videos_], dtype=torch.long) if videos_ else None,
            video_second_per_grid=torch.tensor([m.second_per_grid for m in videos_]) if videos_ else None,
            use_audio_in_video=aiv, timings=timings)

    def _detokenizer(self):
        """Incremental decoders for the engine; special tokens (<|im_end|>, placeholders) are left
        out of the text, as the official examples decode (skip_special_tokens=True). The ids are
        all in `Sequence.output_ids`."""
        if not self.tokenizer.has_text:
            return None
        return lambda: self.tokenizer.stream(skip_special_tokens=self.skip_special_tokens)

    def generate(self, conversation=None, *, audios=(), images=(), videos=(), use_audio_in_video: bool = False,
                 system_prompt: Optional[str] = OMNI_SYSTEM_PROMPT, prepared: Optional[PreparedPrompt] = None,
                 params: Optional[SamplingParams] = None, max_new_tokens: Optional[int] = None,
                 keep_hidden_states: bool = False, return_logits: bool = False) -> Iterator[TokenEvent]:
        """Stream the answer to a conversation (arguments as `prepare`, or a `prepared` prompt):
        one `TokenEvent` per generated token (token_id, newly decoded text, finished flag); the
        finished `Sequence` is `event.seq` (output_ids, text, timings, and hidden states / logits
        when asked for)."""
        if prepared is not None and (conversation is not None or audios or images or videos):
            raise ValueError("pass either a conversation (and media) or prepared=, not both")
        if prepared is None:
            prepared = self.prepare(conversation, audios=audios, images=images, videos=videos,
                                    use_audio_in_video=use_audio_in_video, system_prompt=system_prompt)
        params = self.sampling_params(params, max_new_tokens)
        request = prepared.request()
        yield from self.engine.generate(request, params, detokenizer=self._detokenizer(),
                                        keep_hidden_states=keep_hidden_states, return_logits=return_logits)

    def stream_audio(self, conversation=None, *, sample_rate=SAMPLE_RATE, audios=(), images=(), videos=(),
                     use_audio_in_video: bool = False, system_prompt: Optional[str] = OMNI_SYSTEM_PROMPT,
                     params: Optional[SamplingParams] = None, max_new_tokens: Optional[int] = None,
                     keep_hidden_states: bool = False, return_logits: bool = False) -> "AudioStreamSession":
        """Start a turn whose audio arrives while it is prefilled (see the module docstring).

        The streamed audio's place: for a prompt text, first in the user turn (then the other
        audios, images, videos, then the text -- the layout `prepare` gives with the audio first
        in `audios`); in messages, the item {"type": "audio", "stream": True}; in prompt ids, the
        first <|AUDIO|> id. The prompt before it is prefilled now."""
        return AudioStreamSession(self, conversation, sample_rate=sample_rate, audios=audios, images=images,
                                  videos=videos, use_audio_in_video=use_audio_in_video, system_prompt=system_prompt,
                                  params=self.sampling_params(params, max_new_tokens),
                                  keep_hidden_states=keep_hidden_states, return_logits=return_logits)


# ====================================================================================================
# streaming audio input
# ====================================================================================================
class AudioStreamSession:
    """One turn with streamed audio input; create with `Thinker.stream_audio`.

    push(samples) -> audio tokens prefilled by this call (0 while a 2-second chunk is incomplete);
    finish() -> iterator of TokenEvents (the rest of the prompt, then the answer).
    Attributes: `seq` (the engine Sequence), `audio_tokens` (streamed audio tokens so far),
    `chunk_timings` (per prefilled chunk: tokens, encode seconds, prefill seconds), after finish
    `mel_max_deviation` (see the module docstring) and `t_audio_end` (perf_counter at finish())."""

    def __init__(self, thinker: Thinker, conversation, *, sample_rate, audios, images, videos, use_audio_in_video,
                 system_prompt, params: SamplingParams, keep_hidden_states: bool, return_logits: bool):
        self.thinker = thinker
        self.engine = thinker.engine
        self.aiv = bool(use_audio_in_video)
        self.timings: dict = {}
        raw, media = thinker._layout(conversation, audios, images, videos, system_prompt, stream=True)
        thinker._load_media(media, self.aiv, self.timings)
        ph = thinker.placeholders
        k = next(i for i, m in enumerate(media) if m.stream)
        # the streamed audio's placeholder in the raw ids: the (number of placeholders before it)-th one
        kinds = {ph.audio, ph.image, ph.video}
        slots = [i for i, t in enumerate(raw) if t in kinds]
        p = slots[k]
        if p == 0 or raw[p - 1] != ph.audio_bos or p + 1 >= len(raw) or raw[p + 1] != ph.audio_eos:
            raise ValueError("the streamed audio placeholder must sit between <|audio_bos|> and <|audio_eos|>")
        self._before, self._after = media[:k], media[k + 1:]
        self.prefix_ids = thinker._expand(raw[:p], self._before, self.aiv)
        self.suffix_ids = thinker._expand(raw[p + 1:], self._after, self.aiv)
        thinker._check_length(len(self.prefix_ids) + len(self.suffix_ids))
        # Prefix positions: positions run left to right, so the prefix's do not depend on what
        # follows; rope_index needs a closed audio segment, so close it with a one-token stand-in.
        # The streamed tokens then sit at bos + 1, bos + 2, ... (TMRoPE's audio rule) -- passed
        # explicitly: after an audio-in-video segment the next id is eos + 1, not max + 1.
        n = len(self.prefix_ids)
        stand_in = _Media("audio", stream=True, mel=torch.empty(0, 3))  # 3 mel frames -> 1 token
        pos, _ = thinker._positions(self.prefix_ids + [ph.audio, ph.audio_eos], [*self._before, stand_in], self.aiv)
        positions = pos[:, :n]
        self._audio_base = int(pos[0, n])
        embeds = thinker._embed(self.prefix_ids, self._before, self.timings)
        self.mel = StreamingMel(sample_rate, device=thinker.device)
        self.encoder = AudioEncoderStream(thinker.audio_tower)
        self.audio_tokens = 0
        self.chunk_timings: list[dict] = []
        self.mel_max_deviation: Optional[float] = None
        self.t_audio_end: Optional[float] = None
        self._finished = False
        self.params = params
        t0 = time.perf_counter()
        self.seq: EngineSequence = self.engine.add_request(
            self.prefix_ids, params, inputs_embeds=embeds, positions=positions, prompt_complete=False,
            keep_hidden_states=keep_hidden_states, return_logits=return_logits,
            detokenizer=thinker._detokenizer())
        self._drain()
        self.timings["prefix_prefill_s"] = time.perf_counter() - t0

    def _drain(self) -> None:
        """Prefill everything pending for this sequence (chunked prefill onto the cache)."""
        with torch.no_grad():
            while self.seq.num_pending and not self.seq.finished:
                self.engine.step()
                if self.engine.last_step is None:
                    raise RuntimeError(f"the engine cannot prefill {self.seq!r}")

    def _append_audio(self, tokens: torch.Tensor, t_encode: float) -> int:
        n = int(tokens.shape[0])
        if n == 0:
            return 0
        t0 = time.perf_counter()
        positions = (self._audio_base + self.audio_tokens + torch.arange(n)).expand(3, n)
        self.engine.extend_prompt(self.seq, [self.thinker.placeholders.audio] * n, inputs_embeds=tokens,
                                  positions=positions)
        self._drain()
        self.audio_tokens += n
        self.chunk_timings.append({"tokens": n, "encode_s": t_encode, "prefill_s": time.perf_counter() - t0})
        return n

    @torch.no_grad()
    def push(self, samples) -> int:
        """Add audio samples (1-D, at the session's sample_rate; any piece size). Every 2-second
        chunk completed by them is encoded and prefilled now; returns its audio tokens."""
        if self._finished:
            raise ValueError("push() after finish()")
        t0 = time.perf_counter()
        frames = self.mel.push(samples)
        tokens = self.encoder.push(frames) if frames.shape[1] else None
        if tokens is None:
            return 0
        return self._append_audio(tokens, time.perf_counter() - t0)

    def finish(self) -> Iterator[TokenEvent]:
        """End of audio: the last partial chunk, `<|audio_eos|>` and the rest of the prompt are
        prefilled, then the answer streams. Returns an iterator of TokenEvents."""
        if self._finished:
            raise ValueError("finish() called twice")
        self._finished = True
        self.t_audio_end = time.perf_counter()
        try:
            self._close_prompt()
        except BaseException:
            self.abort()
            raise
        return self._events()

    @torch.no_grad()
    def _close_prompt(self) -> None:
        t0 = time.perf_counter()
        frames = self.mel.finish()
        self.mel_max_deviation = self.mel.max_deviation
        tokens = self.encoder.push(frames) if frames.shape[1] else None
        last = self.encoder.finish()
        tokens = last if tokens is None else torch.cat([tokens, last])
        self._append_audio(tokens, time.perf_counter() - t0)
        th = self.thinker
        stream_media = _Media("audio", stream=True, mel=torch.empty(0, self.mel.emitted))
        media = [*self._before, stream_media, *self._after]
        ids = self.prefix_ids + [th.placeholders.audio] * self.audio_tokens + self.suffix_ids
        th._check_length(len(ids))
        positions, delta = th._positions(ids, media, self.aiv)
        start = len(ids) - len(self.suffix_ids)
        streamed = positions[:, len(self.prefix_ids):start]
        if not torch.equal(streamed, (self._audio_base + torch.arange(self.audio_tokens)).expand(3, -1)):
            raise RuntimeError("internal error: the streamed audio positions differ from rope_index's")
        embeds = th._embed(self.suffix_ids, self._after, self.timings)
        self.engine.extend_prompt(self.seq, self.suffix_ids, inputs_embeds=embeds,
                                  positions=positions[:, start:], prompt_complete=True, rope_delta=delta)

    def _events(self) -> Iterator[TokenEvent]:
        seq = self.seq
        try:
            while not seq.finished:
                with torch.no_grad():
                    events = self.engine.step()
                if self.engine.last_step is None:
                    raise RuntimeError(f"the engine cannot make progress on {seq!r}")
                for ev in events:
                    if ev.seq is seq:
                        yield ev
        finally:
            if not seq.finished:
                self.engine.abort(seq)

    def abort(self) -> None:
        self._finished = True
        if not self.seq.finished:
            self.engine.abort(self.seq)


# ====================================================================================================
# helpers
# ====================================================================================================
def _as_list(x, name: str) -> list:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike, torch.Tensor)) or not isinstance(x, (list, tuple)):
        raise ValueError(f"{name} must be a list (one entry per item), got {_describe(x)}")
    return list(x)


def _is_ids(x) -> bool:
    if isinstance(x, torch.Tensor):
        return not x.is_floating_point() and x.dim() <= 2
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) for t in x)


def _item_kind(item: dict) -> Optional[str]:
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind == "audio" or "audio" in item or "audio_url" in item:
        return "audio"
    if kind == "video" or "video" in item:
        return "video"
    return None


def _check_file(value, what: str) -> str:
    path = os.fspath(value)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} file {path} is empty (0 bytes)")
    return path


def _waveform(value) -> torch.Tensor:
    if isinstance(value, (str, os.PathLike)):
        return load_audio(_check_file(value, "audio"))
    if isinstance(value, tuple) and len(value) == 2:
        return load_audio(value[0], sample_rate=value[1])
    if value is None:
        raise ValueError("an audio item has no data")
    return load_audio(value)


def _image(value):
    if isinstance(value, (str, os.PathLike)):
        path = _check_file(value, "image")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                return im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
    if value is None:
        raise ValueError("an image item has no data")
    return value


def _video(value, default_fps: float, need_audio: bool):
    """-> (frames, fps, soundtrack waveform or None)."""
    audio = None
    if isinstance(value, (str, os.PathLike)):
        path = _check_file(value, "video")
        frames, fps = load_video(path, fps=default_fps)
        if need_audio:
            audio = load_audio_track(path)
        return frames, fps, audio
    fps = default_fps
    if isinstance(value, dict):
        frames, fps = value.get("frames"), value.get("fps", default_fps)
        audio = value.get("audio")
        if audio is not None and value.get("audio_sample_rate") not in (None, SAMPLE_RATE):
            audio = (audio, value["audio_sample_rate"])
    elif isinstance(value, tuple) and len(value) in (2, 3):
        frames, fps = value[0], value[1]
        audio = value[2] if len(value) == 3 else None
    else:
        frames = value
    if frames is None:
        raise ValueError("a video item has no frames")
    if need_audio:
        if audio is None:
            raise ValueError("use_audio_in_video needs each video's soundtrack: pass a video file, or "
                             "(frames, fps, waveform) / {'frames', 'fps', 'audio'}")
        audio = _waveform(audio)
    return frames, fps, audio


def _scatter(embeds: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor, kind: str) -> None:
    """embeds[mask] = feats in row order (transformers' masked_scatter), counts checked."""
    n = int(mask.sum())
    if n != feats.shape[0]:
        raise ValueError(f"the prompt has {n} {kind} placeholder tokens but the {kind} encoder produced "
                         f"{feats.shape[0]} {kind} features")
    embeds[mask] = feats.to(embeds.dtype)
