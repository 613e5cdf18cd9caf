"""The Talker (omni_runtime.talker) against transformers' `Qwen2_5OmniForConditionalGeneration.generate`
on the same checkpoint: greedy codes identical for 64 steps for text, audio, image and
audio-in-video prompts.

Checkpoints: the "tiny" preset and "7b-ratios" (the 7B talker's ratios: 12 query / 4 KV heads of
head_dim 128 over hidden 896, mrope [16, 24, 24], codec vocabulary 8448 over a DiT table of 8193
rows), Thinker and Talker weights re-drawn at unit scale with the stop ids unreachable
(`helpers.sharpen_checkpoint`), so the Thinker writes all its tokens and the Talker all 64 codes.
transformers runs its whole `generate` (greedy thinker, `talker_do_sample=False` -- which keeps the
repetition penalty 1.05 and the codec-bos suppression); its codes are taken where they enter
`token2wav` (the DiT is not run: 7b-ratios codes beyond its table would raise there).

transformers 5.24 needs one fix for this (`keep_talker_attention_mask`): its `generate` drops an
all-ones attention_mask before the first forward (an optimisation), but the Talker's forward builds
its TMRoPE positions (rope_index over the text track, the talker's rope delta) and adds the codec
pad / bos embeddings into the last two prompt rows only when it receives a mask -- so a batch-1
`generate` silently runs the Talker with plain 0..L-1 positions and without the codec pad / bos
rows. We follow the model as released (transformers 4.57.3 passes the mask, and a padded batch in
5.24 takes the same path); the fix hands the Talker its all-ones mask again.
Ours: the Thinker's request hands its rows to `TalkerInputs` (sink), the Talker starts after the
Thinker finished ("offline"), or while it runs, fed row by row (`row_by_row`): both equal.
"""
import pytest
import torch

from helpers import keep_talker_attention_mask, sharpen_checkpoint
from omni_runtime.engine.sampling import SamplingParams
from omni_runtime.io.checkpoint import open_checkpoint
from omni_runtime.talker import Talker, TalkerInputs
from omni_runtime.thinker.thinker import Thinker

transformers = pytest.importorskip("transformers")

CODES = 64
ENGINE = dict(max_model_len=512, num_blocks=96, block_size=16)

WAV = (0.3 * torch.sin(torch.arange(16000 * 2) / 16000 * 2 * torch.pi * 440)).numpy()
IMAGE = torch.Generator().manual_seed(0)
IMAGE = torch.randint(0, 256, (56, 84, 3), generator=IMAGE, dtype=torch.uint8).numpy()
_FRAMES = torch.randint(0, 256, (4, 56, 56, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy()
CASES = {
    "text": dict(conversation="Hello world, are you a helpful assistant?"),
    "audio": dict(conversation="What is this sound?", audios=[WAV]),
    "image": dict(conversation="Describe it.", images=[IMAGE]),
    # 4 frames at 2 fps with a 2 s soundtrack: video and audio rows interleaved, both zeroed
    "audio_in_video": dict(conversation="Describe.", videos=[(_FRAMES, 2.0, WAV)], use_audio_in_video=True),
}


class Pair:
    def __init__(self, src, tmp, new_tokens):
        self.path, self.stops = sharpen_checkpoint(src, tmp / "sharp", prefixes=("thinker.", "talker."))
        self.new_tokens = new_tokens
        # small videos: the processor's 128*28*28 minimum would upscale every test frame
        self.thinker = Thinker.from_checkpoint(self.path, dtype="fp32", engine_kwargs=ENGINE,
                                               media_options=dict(video_min_pixels=28 * 28 * 4,
                                                                  video_max_pixels=28 * 28 * 16))
        ckpt = open_checkpoint(self.path)
        self.talker = Talker.from_checkpoint(ckpt, dtype=torch.float32, engine_kwargs=ENGINE)
        self.speakers = {n: ckpt.speaker(n) for n in ("Chelsie", "Ethan")}
        self.hf = keep_talker_attention_mask(transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
            str(self.path), dtype=torch.float32, attn_implementation="sdpa").eval())

    def params(self):
        return SamplingParams(max_new_tokens=self.new_tokens, stop_token_ids=tuple(self.stops))

    def inputs(self, prep, speaker):
        return TalkerInputs(prep, self.talker.lm, self.thinker.lm.embed, self.speakers[speaker].bos_token,
                            self.thinker.thinker_config.vision_config.spatial_merge_size)

    def offline(self, prep, speaker="Chelsie"):
        """Thinker to the end, then the Talker."""
        inputs = self.inputs(prep, speaker)
        for ev in self.thinker.generate(prepared=prep, params=self.params(), sink=inputs.sink):
            inputs.add_reply_token(ev.token_id)
        inputs.thinker_finished()
        seq = self.talker.start(inputs, self.talker.sampling_params(greedy=True, max_new_tokens=CODES))
        return [ev.token_id for ev in self.talker.engine.stream(seq)]

    def row_by_row(self, prep, speaker="Chelsie"):
        """Both engines stepped in turn, the Talker twice per Thinker step: it starts after the
        Thinker's first reply row and soon runs ahead, so it must wait for rows."""
        inputs = self.inputs(prep, speaker)
        th = self.thinker.engine.add_request(**prep.request(), params=self.params(), sink=inputs.sink)
        ta, waits = None, 0
        while not (ta is not None and ta.finished):
            while th.events:
                inputs.add_reply_token(th.events.popleft().token_id)
            if th.finished and not inputs.finished:
                inputs.thinker_finished()
            if ta is None and inputs.prompt_ready:
                ta = self.talker.start(inputs, self.talker.sampling_params(greedy=True, max_new_tokens=CODES))
            if not th.finished:
                self.thinker.engine.step()
            for _ in range(2 if ta is not None else 0):
                waits += not self.talker.engine.step()
        assert th.finished
        return ta.output_ids, waits

    @torch.no_grad()
    def reference(self, prep, speaker="Chelsie"):
        got = {}

        def capture(code, conditioning, reference_mel, **kw):
            got["codes"] = code[0].tolist()
            return torch.zeros(1)

        ids = torch.tensor([prep.ids])
        kw = {}
        if prep.mels:
            m = prep.mels[0]
            kw.update(input_features=m[None].cpu(), feature_attention_mask=torch.ones(1, m.shape[1], dtype=torch.long))
        if prep.pixel_values is not None:
            kw.update(thinker_pixel_values=prep.pixel_values, image_grid_thw=prep.image_grid_thw)
        if prep.pixel_values_videos is not None:
            kw.update(thinker_pixel_values_videos=prep.pixel_values_videos, video_grid_thw=prep.video_grid_thw,
                      video_second_per_grid=prep.video_second_per_grid, use_audio_in_video=prep.use_audio_in_video)
        cfg = self.talker.config
        self.hf.token2wav.forward = capture
        self.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw, speaker=speaker,
                         thinker_max_new_tokens=self.new_tokens, thinker_do_sample=False,
                         thinker_eos_token_id=self.stops, talker_do_sample=False, talker_max_new_tokens=CODES,
                         talker_eos_token_id=[cfg.tts_codec_pad_token_id, cfg.tts_codec_end_token_id])
        return got["codes"]


@pytest.fixture(scope="module")
def tiny(tiny_ckpt, tmp_path_factory, hf):
    return Pair(tiny_ckpt, tmp_path_factory.mktemp("talker_tiny"), new_tokens=12)


@pytest.fixture(scope="module")
def big(tiny_7b_ckpt, tmp_path_factory, hf):
    return Pair(tiny_7b_ckpt, tmp_path_factory.mktemp("talker_7b"), new_tokens=12)


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_codes_equal_transformers(tiny, case, one_thread):
    prep = tiny.thinker.prepare(**CASES[case])
    ours = tiny.offline(prep)
    assert len(ours) == CODES
    assert ours == tiny.reference(prep)


@pytest.mark.parametrize("case", ["text", "audio", "image"])
def test_greedy_codes_equal_transformers_7b_ratios(big, case, one_thread):
    prep = big.thinker.prepare(**CASES[case])
    ours = big.offline(prep, speaker="Ethan")
    assert len(ours) == CODES
    # codes beyond the DiT's table occur with this vocabulary: they are the Talker's to emit
    assert ours == big.reference(prep, speaker="Ethan")


def test_row_by_row_equals_offline(tiny, one_thread):
    prep = tiny.thinker.prepare(**CASES["audio"])
    codes, waits = tiny.row_by_row(prep)
    assert codes == tiny.offline(prep)
    assert waits > 0  # the Talker really was ahead of the Thinker and waited for its rows


def test_the_speaker_enters_through_its_bos_row(tiny, one_thread):
    """The speaker's text bos embedding is prompt row P (P = Thinker prompt length): the two
    speakers' Talker prompts differ there and nowhere else (their voices differ in Token2Wav)."""
    prep = tiny.thinker.prepare(**CASES["text"])
    prompts = []
    for name in ("Chelsie", "Ethan"):
        inputs = tiny.inputs(prep, name)
        for ev in tiny.thinker.generate(prepared=prep, params=tiny.params(), sink=inputs.sink):
            inputs.add_reply_token(ev.token_id)
        prompts.append(inputs.prompt())
    a, b = (p.inputs_embeds for p in prompts)
    differs = (a != b).any(1).nonzero().flatten().tolist()
    assert differs == [len(prep.ids)]
    assert torch.equal(prompts[0].positions, prompts[1].positions) and prompts[0].ids == prompts[1].ids


def test_prompt_not_ready_is_an_error(tiny):
    prep = tiny.thinker.prepare(**CASES["text"])
    with pytest.raises(ValueError, match="not ready"):
        tiny.talker.start(tiny.inputs(prep, "Chelsie"))
