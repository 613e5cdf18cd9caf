"""One request's Talker inputs, built from the Thinker's rows as the Thinker computes them --
exactly as transformers' `Qwen2_5OmniForConditionalGeneration.generate` builds them after the fact.

Two tracks added row by row (then `thinker_to_talker_proj` inside the Talker):

    text track  : the Thinker's last hidden state + its input embedding per prompt position (the
                  audio/image/video rows' embeddings zeroed), then the Thinker's embedding of the
                  speaker's bos token, then the first reply token's part; per step i >= 1 the part
                  of reply token i (hidden + embedding), past the reply the text eos embedding
                  once and the text pad embedding for ever after;
    codec track : mask tokens under the prompt (ids only: they count for the repetition penalty),
                  the codec pad and codec bos embeddings added into the last two prompt rows, then
                  per step the codec embedding of the previous code.

The Thinker hands out the rows of the tokens it forwards: prompt rows, then reply token k's row in
the step that samples token k + 1 (its last token is never forwarded). So the Talker's prompt is
ready once reply row 0 exists, and its step i is ready once reply row i does -- or the Thinker has
finished, when the eos / pad parts are known. `provide` returns None (not ready) until then, and
the engine schedules everyone else meanwhile.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..engine.sequence import StepRows
from ..thinker.positions import rope_positions

__all__ = ["TalkerInputs", "TalkerPrompt"]


@dataclass
class TalkerPrompt:
    """What `Engine.add_request` takes for the Talker: codec-track ids, the summed embeddings
    (L, embedding_size), TMRoPE positions (3, L) and the rope delta."""

    ids: list[int]
    inputs_embeds: torch.Tensor
    positions: torch.Tensor
    rope_delta: int

    def request(self) -> dict:
        return {"prompt_ids": self.ids, "inputs_embeds": self.inputs_embeds, "positions": self.positions,
                "rope_delta": self.rope_delta}


class TalkerInputs:
    """prepared: the Thinker's PreparedPrompt; talker: the TalkerLM; thinker_embed: the Thinker's
    token embedding (ids -> rows); speaker_bos: the speaker's text bos id. Give `sink` to the
    Thinker's request, call `thinker_finished()` when it ends, and use `prompt()` / `provide`."""

    def __init__(self, prepared, talker, thinker_embed: Callable[[torch.Tensor], torch.Tensor], speaker_bos: int,
                 spatial_merge_size: int):
        cfg = talker.config
        self.config, self.talker = cfg, talker
        self.prepared, self.spatial_merge_size = prepared, spatial_merge_size
        self.num_prompt = len(prepared.ids)
        device, dtype = talker.device, talker.dtype
        media_ids = torch.tensor([cfg.audio_token_index, cfg.image_token_index, cfg.video_token_index])
        # 1 for text rows, 0 for placeholder rows: their embeddings are the encoders' features
        self._text_rows = (~torch.isin(torch.tensor(prepared.ids), media_ids)).to(device, dtype)[:, None]
        special = torch.tensor([speaker_bos, cfg.tts_text_end_token_id, cfg.tts_text_pad_token_id], device=device)
        self._bos, self._eos, self._pad = thinker_embed(special).to(dtype).unbind(0)
        self.speaker_bos = speaker_bos
        self._parts: list[torch.Tensor] = []  # chunks of summed rows, in order
        self._count = 0                       # rows received
        self._rows: Optional[torch.Tensor] = None
        self._lock = threading.Lock()
        self.reply_ids: list[int] = []
        self.finished = False
        self._steps_given = 0                 # decode inputs handed to the Talker so far

    # ------------------------------------------------------------------ from the Thinker
    def sink(self, rows: StepRows) -> None:
        """The Thinker engine's sink: keep hidden + embedding of every row (prompt rows with the
        placeholder rows' embeddings zeroed)."""
        if rows.start != self._count:
            raise RuntimeError(f"Thinker rows arrived out of order: got row {rows.start}, expected {self._count}")
        embeds = rows.inputs_embeds.to(self.talker.dtype)
        n = embeds.shape[0]
        prompt_n = max(0, min(n, self.num_prompt - rows.start))
        if prompt_n:
            embeds = embeds.clone()
            embeds[:prompt_n] *= self._text_rows[rows.start:rows.start + prompt_n]
        part = rows.hidden_states.to(self.talker.dtype) + embeds
        with self._lock:
            self._parts.append(part)
            self._count += n

    def add_reply_token(self, token_id: int) -> None:
        self.reply_ids.append(int(token_id))

    def thinker_finished(self) -> None:
        self.finished = True

    def _all_rows(self) -> torch.Tensor:
        with self._lock:
            if len(self._parts) > 1:
                self._parts = [torch.cat(self._parts)]
            return self._parts[0]

    @property
    def num_reply_rows(self) -> int:
        return max(0, self._count - self.num_prompt)

    # ------------------------------------------------------------------ to the Talker
    @property
    def prompt_ready(self) -> bool:
        return self.num_reply_rows >= 1 and len(self.reply_ids) >= 1

    @property
    def silent(self) -> bool:
        """The Thinker ended before forwarding any reply token (a reply of at most one token):
        there is nothing to speak (transformers fails on such a reply)."""
        return self.finished and self.num_reply_rows == 0

    def prompt(self) -> TalkerPrompt:
        cfg, p = self.config, self.num_prompt
        rows = self._all_rows()
        codec = self.talker.embed(torch.tensor([cfg.tts_codec_pad_token_id, cfg.tts_codec_start_token_id],
                                               device=self.talker.device))
        embeds = torch.cat([rows[:p], (self._bos + codec[0])[None], (rows[p] + codec[1])[None]])
        prep = self.prepared
        text_ids = list(prep.ids) + [self.speaker_bos, self.reply_ids[0]]
        videos = prep.video_grid_thw.tolist() if prep.video_grid_thw is not None else []
        positions, delta = rope_positions(
            text_ids, cfg, spatial_merge_size=self.spatial_merge_size,
            image_grids=prep.image_grid_thw.tolist() if prep.image_grid_thw is not None else [],
            video_grids=videos,
            second_per_grids=prep.video_second_per_grid.tolist() if videos else [],
            audio_lengths=prep.audio_lengths, use_audio_in_video=prep.use_audio_in_video)
        ids = [cfg.tts_codec_mask_token_id] * p + [cfg.tts_codec_pad_token_id, cfg.tts_codec_start_token_id]
        return TalkerPrompt(ids, embeds, positions, delta)

    def text_part(self, step: int) -> Optional[torch.Tensor]:
        """The text-track part of decode step `step` (>= 1): reply row `step`, or eos / pad once the
        reply has ended; None while the Thinker has not produced it yet."""
        reply = self.num_reply_rows
        if step < reply:
            return self._all_rows()[self.num_prompt + step]
        if not self.finished:
            return None
        return self._eos if step == reply else self._pad

    def provide(self, seq, code: int) -> Optional[torch.Tensor]:
        """The Talker engine's input_provider (asked once per generated code, in order): the
        code's codec embedding plus the text part of the step it feeds."""
        part = self.text_part(self._steps_given + 1)
        if part is None:
            return None
        self._steps_given += 1
        return self.talker.embed(torch.tensor([code], device=self.talker.device))[0] + part
