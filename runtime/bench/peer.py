"""The peer: transformers' `Qwen2_5OmniForConditionalGeneration.generate` on the same checkpoint,
in the same process, one request at a time (it has no concurrency).

It gets the very tensors our preprocessing made (prompt ids, log-mel features, video pixels and
grids), so it skips feature extraction that our timings include. Fixed lengths as ours: a greedy
Thinker with min_new_tokens = max_new_tokens = T, the official Talker sampling with
min_new_tokens = max_new_tokens = N and, where the Talker's vocabulary is larger than the codec's
table (the 7B's 8448 codes), those beyond it banned (transformers' DiT raises an IndexError on
them). Its text tokens and codes are timed with streamers; its audio is one waveform when generate
returns, which is therefore its first (and only) audio packet.

transformers 5.x's `generate` drops the all-ones attention mask, and its Talker then skips its
TMRoPE positions and codec pad / bos rows: the mask is handed back (`keep_talker_attention_mask`),
as in `benchmarks/bench_speech.py` and the parity tests, so both run the model as released.
"""
from __future__ import annotations

import logging
import time

import torch

from .load import MemoryMeter, RequestRecord, Workload

__all__ = ["TransformersPeer", "keep_talker_attention_mask", "hf_inputs"]


def keep_talker_attention_mask(model):
    """Give transformers' Talker back the all-ones attention_mask its 5.x `generate` drops: the
    Talker's forward builds its TMRoPE positions and adds the codec pad / bos rows only when it gets
    a mask, so without it a batch-1 `generate` silently runs plain positions without them (4.57.3,
    the version the weights were released with, passes the mask; see tests/runtime/test_talker.py).
    Returns the model."""
    talker = model.talker
    prepare = talker.prepare_inputs_for_generation

    def with_mask(input_ids, inputs_embeds=None, **kwargs):
        out = prepare(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if out.get("attention_mask") is None:
            out["attention_mask"] = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return out

    talker.prepare_inputs_for_generation = with_mask
    return model


def hf_inputs(prepared, device) -> dict:
    """`generate` keyword arguments for a PreparedPrompt: ids, mask, features, pixels, grids."""
    ids = torch.tensor([prepared.ids], device=device)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if prepared.mels:
        frames = max(m.shape[1] for m in prepared.mels)
        feats = torch.zeros(len(prepared.mels), prepared.mels[0].shape[0], frames)
        mask = torch.zeros(len(prepared.mels), frames, dtype=torch.long)
        for i, m in enumerate(prepared.mels):
            feats[i, :, :m.shape[1]] = m.cpu()
            mask[i, :m.shape[1]] = 1
        kw.update(input_features=feats.to(device), feature_attention_mask=mask.to(device))
    if prepared.pixel_values is not None:
        kw.update(thinker_pixel_values=prepared.pixel_values.to(device),
                  image_grid_thw=prepared.image_grid_thw.to(device))
    if prepared.pixel_values_videos is not None:
        kw.update(thinker_pixel_values_videos=prepared.pixel_values_videos.to(device),
                  video_grid_thw=prepared.video_grid_thw.to(device),
                  video_second_per_grid=prepared.video_second_per_grid.to(device))
    kw["use_audio_in_video"] = bool(prepared.use_audio_in_video)
    return kw


class _Clock:
    """A generate streamer that notes when each new token arrives (its first put is the prompt)."""

    def __init__(self, times: list):
        self.times, self._prompt_seen = times, False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        now = time.perf_counter()
        self.times.extend([now] * max(1, int(value.numel())))

    def end(self) -> None:
        pass


class TransformersPeer:
    name = "transformers"

    def __init__(self, path, device: torch.device, dtype: torch.dtype):
        import transformers

        # the tiny and random checkpoints keep token ids transformers warns about on every build
        logging.getLogger("transformers").setLevel(logging.ERROR)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.version = transformers.__version__
        self.device = device
        t0 = time.perf_counter()
        model = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
            str(path), dtype=dtype, attn_implementation="sdpa")
        self.model = model.to(device).eval()
        self.model.token2wav.float()  # as its generate does: Token2Wav runs in fp32
        keep_talker_attention_mask(self.model)
        self.load_s = time.perf_counter() - t0
        cfg = self.model.config
        talker = cfg.talker_config
        self.stop_codes = [talker.tts_codec_pad_token_id, talker.tts_codec_end_token_id]
        table = cfg.token2wav_config.dit_config.num_embeds + 1  # codes 0..num_embeds
        self.banned = list(range(table, talker.vocab_size))
        self._processors = self._ban(self.banned) if self.banned else None

    @staticmethod
    def _ban(ids):
        from transformers import LogitsProcessor, LogitsProcessorList

        class BanCodes(LogitsProcessor):  # its own type: generate already makes a SuppressTokens one
            def __call__(self, input_ids, scores):
                scores[:, ids] = -float("inf")
                return scores

        return LogitsProcessorList([BanCodes()])

    def run(self, prepared, work: Workload, seed: int, index: int = 0) -> RequestRecord:
        kw = hf_inputs(prepared, self.device)
        if self._processors is not None:
            kw["talker_logits_processor"] = self._processors
        if work.speaker is not None:
            kw["speaker"] = work.speaker
        torch.manual_seed(seed)  # its Talker samples, and its DiT draws its noise, from the global generator
        rec = RequestRecord(index, time.perf_counter())
        rec.start = rec.prepared = rec.arrival
        rec.prompt_tokens = len(prepared.ids)
        with torch.no_grad():
            _, wav = self.model.generate(
                **kw, thinker_max_new_tokens=work.text_tokens, thinker_min_new_tokens=work.text_tokens,
                thinker_do_sample=False, thinker_streamer=_Clock(rec.text_t),
                talker_max_new_tokens=work.codes, talker_min_new_tokens=work.codes,
                talker_eos_token_id=self.stop_codes, talker_streamer=_Clock(rec.code_t))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        rec.end = time.perf_counter()
        wav = wav.reshape(-1)
        rec.codes = len(rec.code_t)
        rec.audio_seconds = wav.numel() / 24_000
        rec.packets = [{"t": rec.end, "start_sample": 0, "samples": int(wav.numel()), "codes": [0, rec.codes],
                        "dit_ms": None, "vocoder_ms": None}]
        return rec

    def run_all(self, prepared, work: Workload, seed: int, repeats: int, meter: MemoryMeter):
        """A warm-up, then `repeats` timed requests; returns (records, peak memory bytes)."""
        self.run(prepared, Workload(min(work.text_tokens, 4), min(work.codes, 24), work.speaker), seed)
        meter.reset()
        records = [self.run(prepared, work, seed + i, index=i) for i in range(repeats)]
        return records, meter.peak()
