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
   `OMNI_SYSTEM_PROMPT`), tokenized, each placeholder expanded (`placeholders.expand_placeholder_ids`:
   audio ((L - 1)//2 + 1 - 2)//2 + 1 tokens for L mel frames, image/video t*h*w/4, audio-in-video
   interleaved in 2-second chunks);
3. inputs_embeds = token embeddings, then -- as transformers' forward -- the audio tower's output
   for all audios (standalone and video soundtracks, in order of appearance) written into the
   `<|AUDIO|>` rows in order (`masked_scatter`), the vision encoder's output for all images into
   the `<|IMAGE|>` rows, for all videos into the `<|VIDEO|>` rows;
4. TMRoPE positions (3, L) and the rope delta from `omni_kernels.rope_index` with the same
   audio_seqlens, grids and second_per_grids (transformers' `get_rope_index`).

`generate(...)` runs that prompt through the `Engine` (paged KV cache, fused TMRoPE prefill,
paged decode, device sampling) and streams `TokenEvent`s with incrementally detokenized text.

Streaming audio input (`stream_audio`): the prompt up to the streamed audio's `<|audio_bos|>` is
prefilled at once; then every pushed piece of samples goes through `StreamingMel` (the exact STFT
frames of the offline features) and `AudioEncoderStream`, and each complete 2-second chunk
(200 mel frames -> 50 audio tokens; chunks never attend to each other in the audio tower, so a
chunk's tokens are final once its frames are) is appended with `Engine.extend_prompt` and
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
  the final max g >= m (see `streaming_mel.StreamingMel`). So streamed features equal the offline ones
  exactly unless a log-mel bin emitted early lies more than 8 (80 dB) below a louder part that
  arrives later; then it comes out lower by at most (g - m) / 4. After `finish()`,
  `session.mel_max_deviation` is that largest difference, computed exactly (0.0 means the streamed
  prompt is bit-for-bit the offline one: e.g. speech whose loudest frame is in the first chunk,
  or no bin that far below the maximum). Tokens already prefilled are not revised.
- Audio beyond the checkpoint's chunk_length (`media_options.audio_max_seconds`; 300 s for the
  published model) is dropped, as the offline processor does.
- The streamed audio must be a standalone audio item (not a video's soundtrack).
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from ..engine import Engine, SamplingParams, TokenEvent
from ..io import checkpoint as _ckpt
from ..io import layout
from ..io.chat import OMNI_SYSTEM_PROMPT
from ..io.placeholders import PlaceholderIds
from ..media.audio import SAMPLE_RATE
from ..media.image import image_kwargs_from_preprocessor_config
from ..media.options import MediaOptions
from ..models.audio_encoder import AudioEncoder
from ..models.thinker_lm import ThinkerLM
from ..models.vision_encoder import VisionEncoder
from .items import PreparedPrompt
from .processor import PromptProcessor
from .streaming import AudioStreamSession

__all__ = ["Thinker", "PreparedPrompt", "AudioStreamSession", "STREAM_CHUNK_SECONDS"]

STREAM_CHUNK_SECONDS = 2.0  # the audio tower's attention chunk: 2 * n_window = 200 mel frames


class Thinker(PromptProcessor):
    """AudioEncoder + VisionEncoder + ThinkerLM of one checkpoint, with its tokenizer, chat template,
    stop ids, media options and an `Engine`. Build with `from_checkpoint`. One Thinker serves any
    number of concurrent `generate` / `stream_audio` callers (threads or asyncio tasks): they share
    its engine, which batches them (engine_kwargs max_num_seqs, default 8)."""

    def __init__(self, config, audio_tower: AudioEncoder, visual: VisionEncoder, lm: ThinkerLM, tokenizer,
                 stop_token_ids: Sequence[int] = (), *, path: Optional[Path] = None, note: Optional[str] = None,
                 preprocessor_config: Optional[dict] = None, engine_kwargs: Optional[dict] = None,
                 media_options=None):
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
        # Images and video frames: the checkpoint's mean / std, the vision config's patching (the
        # encoder cannot take anything else); the pixel bounds come from media_options only.
        self.pixel_kwargs = {**{k: v for k, v in image_kwargs.items() if k in ("image_mean", "image_std")}, **sizes}
        # audio chunk length and pixel bounds from the checkpoint, then the caller's overrides
        self.media_options = self.resolve_media_options(media_options,
                                                        MediaOptions.from_preprocessor_config(preprocessor_config))
        self.skip_special_tokens = True
        self.engine_kwargs = dict(engine_kwargs or {})
        self._engine: Optional[Engine] = None
        self._engine_lock = threading.Lock()
        self.load_seconds: Optional[float] = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path=None, device="cpu", dtype=None, progress=None, *,
                        engine_kwargs: Optional[dict] = None, media_options=None) -> "Thinker":
        """Load the Thinker of a checkpoint directory (default: the embedded tiny checkpoint,
        written on first use). dtype: "bf16" / "fp16" / "fp32" / a torch dtype / None (as stored).
        progress: True for a progress line on stderr, or a callback(bytes_done, bytes_total).
        engine_kwargs go to the `Engine` (max_model_len, num_blocks, max_num_seqs, cuda_graphs, ...).
        media_options: a `MediaOptions` or a dict of overrides of the checkpoint's
        preprocessor_config.json (audio_max_seconds, image/video min/max pixels, video_fps).
        Raises ValueError for a missing / corrupt checkpoint, mismatched tensors, a bad dtype or
        device."""
        t0 = time.perf_counter()
        if path is None:
            from ..io.tiny_cache import default_checkpoint_dir

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
                      preprocessor_config=pre, engine_kwargs=engine_kwargs, media_options=media_options)
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
    def engine(self) -> Engine:
        """The Engine (created on first use from `engine_kwargs`)."""
        if self._engine is None:
            with self._engine_lock:  # two first callers at once must not build two engines
                if self._engine is None:
                    self._engine = Engine(self.lm, **self.engine_kwargs)
        return self._engine

    @staticmethod
    def resolve_media_options(options, base: MediaOptions) -> MediaOptions:
        """None -> base; a MediaOptions as it is; a dict -> base with those fields replaced."""
        if options is None:
            return base
        if isinstance(options, MediaOptions):
            return options
        if isinstance(options, dict):
            return base.replace(**options)
        raise ValueError(f"media_options must be a MediaOptions or a dict of overrides, got {type(options).__name__}")

    def sampling_params(self, params: Optional[SamplingParams] = None, max_new_tokens: Optional[int] = None,
                        **kwargs) -> SamplingParams:
        """SamplingParams with the checkpoint's stop ids (when none are set and ignore_eos is off).
        Default: greedy, 128 tokens."""
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
    def prepare(self, conversation=None, *, audios=(), images=(), videos=(), use_audio_in_video: bool = False,
                system_prompt: Optional[str] = OMNI_SYSTEM_PROMPT, media_options=None) -> PreparedPrompt:
        """A conversation -> `PreparedPrompt` (see the module docstring).

        conversation: a prompt text (one user turn: the audios, images and videos, then the text),
        chat messages ({"role", "content"}; media items {"type": "audio"|"image"|"video", KIND: value}
        take their value from the item or, when it has none, from the next entry of audios / images /
        videos), or token ids (used as they are, no template; each single <|AUDIO|>/<|IMAGE|>/<|VIDEO|>
        id takes the next media entry and is expanded). Audio: a path, a 16 kHz waveform, or
        (waveform, sample_rate). Image: a path, a PIL image, an array / tensor. Video: a path (decoded
        at 2 fps; its soundtrack read when use_audio_in_video), frames (T, H, W, 3) at 2 fps,
        (frames, fps) or (frames, fps, 16 kHz soundtrack). system_prompt: the system turn put first
        when the messages have none (None: the template's own "You are a helpful assistant.").
        media_options: this request's MediaOptions, or a dict of overrides of the Thinker's."""
        timings: dict = {}
        t0 = time.perf_counter()
        raw, media = self._layout(conversation, audios, images, videos, system_prompt)
        aiv = bool(use_audio_in_video)
        self._load_media(media, aiv, timings, self.resolve_media_options(media_options, self.media_options))
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
                 keep_hidden_states: bool = False, return_logits: bool = False, media_options=None,
                 sink=None) -> Iterator[TokenEvent]:
        """Stream the answer to a conversation (arguments as `prepare`, or a `prepared` prompt):
        one `TokenEvent` per generated token (token_id, newly decoded text, finished flag); the
        finished `Sequence` is `event.seq` (output_ids, text, timings, and hidden states / logits
        when asked for). sink: called with each step's `StepRows` (hidden states and input
        embeddings as they are computed -- what the Talker consumes). Leaving the loop early
        aborts the request. Safe to call from several threads at once on one Thinker."""
        if prepared is not None and (conversation is not None or audios or images or videos):
            raise ValueError("pass either a conversation (and media) or prepared=, not both")
        if prepared is None:
            prepared = self.prepare(conversation, audios=audios, images=images, videos=videos,
                                    use_audio_in_video=use_audio_in_video, system_prompt=system_prompt,
                                    media_options=media_options)
        params = self.sampling_params(params, max_new_tokens)
        seq = self.engine.add_request(**prepared.request(), params=params, detokenizer=self._detokenizer(),
                                      keep_hidden_states=keep_hidden_states, return_logits=return_logits, sink=sink)
        return self.engine.stream(seq)

    def stream_audio(self, conversation=None, *, sample_rate=SAMPLE_RATE, audios=(), images=(), videos=(),
                     use_audio_in_video: bool = False, system_prompt: Optional[str] = OMNI_SYSTEM_PROMPT,
                     params: Optional[SamplingParams] = None, max_new_tokens: Optional[int] = None,
                     keep_hidden_states: bool = False, return_logits: bool = False,
                     media_options=None) -> "AudioStreamSession":
        """Start a turn whose audio arrives while it is prefilled (see the module docstring). Use it
        as a context manager (`with thinker.stream_audio(...) as session:`): leaving the block, or
        dropping the session, without finishing frees its request, so an abandoned or failed
        session never holds up anyone else.

        The streamed audio's place: for a prompt text, first in the user turn (then the other
        audios, images, videos, then the text -- the layout `prepare` gives with the audio first
        in `audios`); in messages, the item {"type": "audio", "stream": True}; in prompt ids, the
        first <|AUDIO|> id. The prompt before it is prefilled now."""
        return AudioStreamSession(self, conversation, sample_rate=sample_rate, audios=audios, images=images,
                                  videos=videos, use_audio_in_video=use_audio_in_video, system_prompt=system_prompt,
                                  params=self.sampling_params(params, max_new_tokens),
                                  keep_hidden_states=keep_hidden_states, return_logits=return_logits,
                                  media_options=self.resolve_media_options(media_options, self.media_options))
