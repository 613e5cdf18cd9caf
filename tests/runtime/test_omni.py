"""omni_runtime.omni.Omni: a whole spoken turn (Thinker text + Talker codes + Token2Wav waveform)
against transformers' `Qwen2_5OmniForConditionalGeneration.generate` on the same checkpoint, and
the streamed turn against the non-streamed one.

The checkpoint: the embedded "tiny" preset (its DiT table covers the talker vocabulary, so every
code is decodable) with Thinker and Talker re-drawn at unit scale and stop ids unreachable
(`helpers.sharpen_checkpoint`); greedy Thinker, greedy Talker (`talker_do_sample=False`, which keeps
the 1.05 repetition penalty), the same initial DiT noise (transformers draws
`torch.randn(1, frames, 80)` after `torch.manual_seed(s)`: we pass those numbers as `noise=`).
transformers' Talker gets back the attention mask its 5.x `generate` drops (see test_talker.py).
"""
import json

import pytest
import torch

from helpers import OMNI_ENGINE as ENGINE, assert_same_turn, keep_talker_attention_mask
from omni_runtime.engine.sampling import SamplingParams
from omni_runtime.engine.sequence import TokenEvent
from omni_runtime.omni import AudioEvent, Omni, TurnResult

transformers = pytest.importorskip("transformers")

TOKENS, CODES = 10, 40
PROMPT = "Hello world, are you a helpful assistant?"


def _params(omni, stops):
    return (SamplingParams(max_new_tokens=TOKENS, stop_token_ids=tuple(stops)),
            omni.talker.sampling_params(greedy=True, max_new_tokens=CODES))


def _noise(seed):
    return lambda frames: torch.randn(1, frames, 80, generator=torch.Generator().manual_seed(seed))


def test_whole_generate_equals_transformers(omni, sharp, hf, one_thread):
    path, stops = sharp
    params, talker = _params(omni, stops)
    ours = omni.generate(PROMPT, params=params, talker_params=talker, speaker="Ethan", noise=_noise(7), stream=False)
    assert isinstance(ours, TurnResult) and len(ours.codes) == CODES and ours.dropped_codes == 0

    model = keep_talker_attention_mask(transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="sdpa").eval())
    prep = omni.thinker.prepare(PROMPT)
    ids = torch.tensor([prep.ids])
    cfg = omni.talker.config
    torch.manual_seed(7)  # greedy everywhere: the DiT's randn is the first draw after this
    with torch.no_grad():
        seqs, wav = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), speaker="Ethan",
                                   thinker_max_new_tokens=TOKENS, thinker_do_sample=False, thinker_eos_token_id=stops,
                                   talker_do_sample=False, talker_max_new_tokens=CODES,
                                   talker_eos_token_id=[cfg.tts_codec_pad_token_id, cfg.tts_codec_end_token_id])
    assert ours.token_ids == seqs[0, len(prep.ids):].tolist()
    assert ours.waveform.shape == wav.shape == (CODES * 2 * 240,)
    err = ((ours.waveform - wav).abs().max() / wav.abs().max()).item()
    assert err < 1e-4, err


def test_streamed_turn_equals_non_streamed_in_text_and_codes(omni, sharp, one_thread):
    _, stops = sharp
    params, talker = _params(omni, stops)
    whole = omni.generate(PROMPT, params=params, talker_params=talker, seed=3, stream=False)
    events = list(omni.generate(PROMPT, params=params, talker_params=talker, seed=3))
    result = events[-1]
    assert isinstance(result, TurnResult)
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == whole.token_ids == result.token_ids
    assert result.codes == whole.codes and result.text == whole.text
    packets = [e for e in events if isinstance(e, AudioEvent)]
    assert len(packets) >= 2
    # packets tile the waveform, which has the non-streamed length
    assert [p.start_sample for p in packets] == [sum(q.samples.numel() for q in packets[:i]) for i in range(len(packets))]
    assert result.waveform.shape == whole.waveform.shape
    assert torch.equal(torch.cat([p.samples for p in packets]), result.waveform)
    for key in ("first_text", "first_audio", "end", "rtf", "codes_per_s"):
        assert result.timings[key] is not None
    assert len(result.timings["dit_ms"]) == len(packets)


def test_sampled_talker_is_seeded(omni, sharp, one_thread):
    _, stops = sharp
    params = SamplingParams(max_new_tokens=TOKENS, stop_token_ids=tuple(stops))
    runs = [omni.generate(PROMPT, params=params, seed=s, stream=False,
                          talker_params=omni.talker.sampling_params(seed=s, max_new_tokens=24)) for s in (1, 1, 2)]
    assert runs[0].codes == runs[1].codes and torch.equal(runs[0].waveform, runs[1].waveform)
    assert runs[0].codes != runs[2].codes


def test_codes_outside_the_codec_table_never_reach_it(tiny_7b_ckpt, one_thread):
    """7b-ratios: a codec vocabulary of 8448 over a DiT table of 8193 rows. A Talker that can only
    emit codes beyond the table (all valid ones suppressed): every code is dropped and counted; the
    turn ends with no audio instead of transformers' IndexError."""
    omni = Omni.from_checkpoint(tiny_7b_ckpt, engine_kwargs=ENGINE, talker_engine_kwargs=ENGINE)
    stops = omni.thinker.stop_token_ids
    valid = tuple(range(omni.token2wav.num_codes))
    stop = omni.talker.stop_codes
    talker = omni.talker.sampling_params(greedy=True, max_new_tokens=12,
                                         suppress_token_ids=tuple(c for c in valid if c not in stop))
    assert omni.talker.config.vocab_size > omni.token2wav.num_codes
    result = omni.generate(PROMPT, params=SamplingParams(max_new_tokens=TOKENS, stop_token_ids=tuple(stops)),
                           talker_params=talker, stream=False)
    assert result.codes == [] and result.dropped_codes == 12 and result.waveform.numel() == 0


def test_bad_speech_requests(omni, sharp, tmp_path):
    with pytest.raises(ValueError, match="Chelsie.*Ethan|available"):
        omni.generate(PROMPT, speaker="Nobody", stream=False)
    with pytest.raises(ValueError, match="noise"):
        omni.generate(PROMPT, noise=torch.zeros(1, 2, 80))
    path, _ = sharp
    text_only = tmp_path / "text_only"
    import shutil

    shutil.copytree(path, text_only)
    cfg = json.loads((text_only / "config.json").read_text())
    cfg["enable_audio_output"] = False
    (text_only / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no Talker"):
        Omni.from_checkpoint(text_only, speech=True)
    thinker_only = Omni.from_checkpoint(text_only, engine_kwargs=ENGINE)
    assert not thinker_only.can_speak
    with pytest.raises(ValueError, match="no Talker"):
        thinker_only.generate(PROMPT, speak=True, stream=False)
    text = thinker_only.generate(PROMPT, max_new_tokens=3, stream=False)
    assert text.waveform is None and len(text.token_ids) >= 1


def test_concurrent_turns_equal_their_solo_runs(omni, sharp, one_thread):
    """Two turns at once -- in two threads, and interleaved in one thread (their iterators advanced
    in turn) -- share both engines and give exactly their solo text and codes, and their audio up to
    fp32 rounding (their chunks may decode in one batch)."""
    import threading

    _, stops = sharp
    prompts = [PROMPT, "What is the capital of the moon?"]

    def turn(i):
        params = SamplingParams(max_new_tokens=TOKENS, stop_token_ids=tuple(stops))
        return omni.generate(prompts[i], params=params, speaker=("Chelsie", "Ethan")[i], seed=i,
                             talker_params=omni.talker.sampling_params(seed=i, max_new_tokens=30))

    solo = [list(turn(i))[-1] for i in range(2)]
    threaded = [None, None]

    def run(i):
        threaded[i] = list(turn(i))[-1]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    gens, interleaved = [turn(0), turn(1)], [None, None]
    while any(g is not None for g in gens):
        for i, g in enumerate(gens):
            if g is not None:
                try:
                    ev = next(g)
                    if isinstance(ev, TurnResult):
                        interleaved[i] = ev
                except StopIteration:
                    gens[i] = None
    for got in (threaded, interleaved):
        for a, b in zip(got, solo):
            assert_same_turn(a, b)
    assert omni.thinker.engine.block_manager.num_free_blocks == omni.thinker.engine.kv_cache.num_blocks
    assert omni.talker.engine.block_manager.num_free_blocks == omni.talker.engine.kv_cache.num_blocks


def test_leaving_a_turn_early_frees_both_requests(omni, sharp, one_thread):
    _, stops = sharp
    gen = omni.generate(PROMPT, params=SamplingParams(max_new_tokens=TOKENS, stop_token_ids=tuple(stops)),
                        talker_params=omni.talker.sampling_params(max_new_tokens=CODES))
    for ev in gen:
        if isinstance(ev, AudioEvent):
            break
    gen.close()
    for engine in (omni.thinker.engine, omni.talker.engine):
        assert not engine.has_unfinished
        assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks


def test_speech_is_made_while_the_text_is_written(omni, one_thread):
    """The Talker runs while the Thinker writes: with a 40-token answer, the 24 codes the first
    packet needs (12 + 12 of look-ahead) are all sampled before the answer's last token, so its
    decode starts while the Thinker is still writing. (Whether the packet itself arrives first also
    depends on how fast the Thinker writes: the tiny one writes faster than the DiT decodes.)"""
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    events = list(omni.generate(PROMPT, params=params,
                                talker_params=omni.talker.sampling_params(greedy=True, max_new_tokens=60)))
    result = events[-1]
    text_t = [e.t - events[0].t for e in events if isinstance(e, TokenEvent)]
    packets = [e for e in events if isinstance(e, AudioEvent)]
    assert len(text_t) == 40 and packets
    first_codes_end = packets[0].packet.depends_on[1]
    assert first_codes_end <= 24
    code_t = result.timings["code_t"]
    t0_shift = result.timings["first_text"] - text_t[0]  # code_t counts from the turn's start
    assert code_t[first_codes_end - 1] - t0_shift < text_t[-1]


def test_a_long_prompt_never_stalls_a_speaking_turn(sharp, one_thread):
    """While a new request's long prompt is prefilled (in chunks of STEP_TOKENS), the turn already
    generating gets its row in every step."""
    from omni_runtime.omni.omni import STEP_TOKENS

    path, _ = sharp
    omni = Omni.from_checkpoint(path, engine_kwargs=dict(max_model_len=2048, num_blocks=300, block_size=16))
    engine = omni.thinker.engine
    running = engine.add_request(list(range(20)), SamplingParams(max_new_tokens=30, ignore_eos=True))
    while len(running.output_ids) < 2:
        engine.step()
    long_prompt = engine.add_request([5 + i % 200 for i in range(3 * STEP_TOKENS)], SamplingParams(max_new_tokens=2))
    prefill_steps = 0
    while long_prompt.num_computed < long_prompt.num_prompt_tokens:
        before = len(running.output_ids)
        results = {id(r.seq): r for r in engine.step()}
        assert len(running.output_ids) == before + 1  # a row for the speaking turn, every step
        assert results[id(long_prompt)].num_tokens <= STEP_TOKENS - 1
        prefill_steps += 1
    assert prefill_steps >= 3
    engine.abort(running)
    engine.abort(long_prompt)
