"""The multimodal merge, as transformers' Qwen2_5OmniProcessor + the Thinker's forward do it: a
conversation -> raw ids with one placeholder per media item -> media features -> expanded ids,
embeddings with the features scattered into the placeholder rows, TMRoPE positions.
`Thinker` inherits it; it uses the Thinker's tokenizer, encoders, LM embeddings and media options."""
from __future__ import annotations

import time

import torch

from ..io.chat import item_kind, render_prompt
from ..io.placeholders import expand_placeholder_ids
from ..media.image import preprocess_image
from ..media.mel import log_mel_features
from ..media.options import MediaOptions
from ..media.video import preprocess_video
from .positions import rope_positions
from .items import KINDS, Media, _as_list, _image, _is_ids, _scatter, _video, _waveform

__all__ = ["PromptProcessor"]


class PromptProcessor:
    def _layout(self, conversation, audios, images, videos, system_prompt, *, stream: bool = False):
        """-> (raw ids with one placeholder per media item, [Media] in order of appearance)."""
        given = {"audio": _as_list(audios, "audios"), "image": _as_list(images, "images"),
                 "video": _as_list(videos, "videos")}
        used = {k: 0 for k in KINDS}
        media: list[Media] = []

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
                    media.append(Media("audio", stream=True))
                    streamed = True
                else:
                    media.append(Media(kind, take(kind, "the prompt ids")))
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
                    kind = item_kind(item)
                    if kind not in KINDS:
                        continue
                    where = f"messages[{i}].content[{j}]"
                    if item.get("stream"):
                        if not stream or kind != "audio":
                            raise ValueError(f"{where}: only stream_audio() takes a streamed audio item")
                        if any(x.stream for x in media):
                            raise ValueError(f"{where}: only one audio item can be streamed")
                        media.append(Media("audio", stream=True))
                        continue
                    value = item.get(kind, item.get(f"{kind}_url"))
                    media.append(Media(kind, value if value is not None else take(kind, "the messages")))
            if stream and not any(x.stream for x in media):
                raise ValueError('stream_audio with messages needs one item {"type": "audio", "stream": True}')
            ids = self.tokenizer.encode(text)
        for kind in KINDS:
            if used[kind] != len(given[kind]):
                raise ValueError(f"{len(given[kind])} {kind}s were given but the prompt has places for {used[kind]}")
        return ids, media

    # ------------------------------------------------------------------ media
    def _load_media(self, media: list[Media], use_audio_in_video: bool, timings: dict,
                    options: MediaOptions = None) -> None:
        if any(not m.stream for m in media):
            self.config.check_token_ids()
        dev = self.device
        opts = options or self.media_options
        chunk = opts.audio_max_seconds
        for m in media:
            if m.stream:
                continue
            t0 = time.perf_counter()
            if m.kind == "audio":
                m.mel = log_mel_features(_waveform(m.value), device=dev, chunk_length=chunk)
                timings["audio_features_s"] = timings.get("audio_features_s", 0.0) + time.perf_counter() - t0
            elif m.kind == "image":
                pixel_values, grid = preprocess_image(_image(m.value), **self.pixel_kwargs, **opts.image_kwargs())
                m.pixel_values, m.grid = pixel_values, tuple(grid[0].tolist())
                timings["image_preprocess_s"] = timings.get("image_preprocess_s", 0.0) + time.perf_counter() - t0
            else:
                frames, fps, audio = _video(m.value, opts.video_fps, use_audio_in_video, opts.video_max_frames)
                pixel_values, grid, spg = preprocess_video(frames, fps, **self.pixel_kwargs, **opts.video_kwargs())
                m.pixel_values, m.grid, m.second_per_grid = pixel_values, tuple(grid[0].tolist()), spg
                if use_audio_in_video:
                    m.mel = log_mel_features(audio, device=dev, chunk_length=chunk)
                timings["video_preprocess_s"] = timings.get("video_preprocess_s", 0.0) + time.perf_counter() - t0

    def _expand(self, raw_ids: list[int], media: list[Media], use_audio_in_video: bool) -> list[int]:
        th = self.thinker_config
        audio_lengths = [int(m.mel.shape[1]) for m in media if m.mel is not None]
        return expand_placeholder_ids(
            raw_ids, self.placeholders, audio_lengths,
            [m.grid for m in media if m.kind == "image"], [m.grid for m in media if m.kind == "video"],
            [m.second_per_grid for m in media if m.kind == "video"], use_audio_in_video,
            merge_size=th.vision_config.spatial_merge_size, position_id_per_seconds=th.position_id_per_seconds,
            seconds_per_chunk=float(th.seconds_per_chunk))

    @torch.no_grad()
    def _embed(self, ids: list[int], media: list[Media], timings: dict) -> torch.Tensor:
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

    def _positions(self, ids: list[int], media: list[Media], use_audio_in_video: bool):
        """rope_index over `ids` -> ((3, L) int64 CPU, delta)."""
        th = self.thinker_config
        videos = [m for m in media if m.kind == "video"]
        return rope_positions(ids, th, spatial_merge_size=th.vision_config.spatial_merge_size,
                              image_grids=[m.grid for m in media if m.kind == "image"],
                              video_grids=[m.grid for m in videos],
                              second_per_grids=[m.second_per_grid for m in videos],
                              audio_lengths=[int(m.mel.shape[1]) for m in media if m.mel is not None],
                              use_audio_in_video=use_audio_in_video)

    def _check_length(self, n: int) -> None:
        if n > self.max_model_len:
            raise ValueError(f"the prompt has {n} tokens, more than the context (max_model_len "
                             f"{self.max_model_len})")

    # ------------------------------------------------------------------ prepare / generate
