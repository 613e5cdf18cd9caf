"""One shared Thinker, many users: concurrent `generate` calls from threads equal their solo runs,
and a stream session that fails or is abandoned never blocks anyone else."""
import gc
import threading

import numpy as np
import pytest

from omni_runtime.engine import SamplingParams
from omni_runtime.thinker.thinker import Thinker

PARAMS = SamplingParams(max_new_tokens=10, ignore_eos=True)
PROMPTS = ["Hello there.", "What is two plus two?", "Describe a cat.", "Say something long and winding."]


@pytest.fixture(scope="module")
def thinker(tiny_ckpt):
    return Thinker.from_checkpoint(tiny_ckpt, engine_kwargs=dict(max_model_len=512, num_blocks=96))


@pytest.fixture(scope="module")
def solo(thinker):
    return {p: [ev.token_id for ev in thinker.generate(p, params=PARAMS)] for p in PROMPTS}


def test_concurrent_generate_calls_on_one_thinker(thinker, solo, one_thread):
    out = {}

    def user(prompt):
        out[prompt] = [ev.token_id for ev in thinker.generate(prompt, params=PARAMS)]

    threads = [threading.Thread(target=user, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert out == solo
    assert not thinker.engine.has_unfinished


def test_a_failed_stream_session_does_not_wedge_the_thinker(thinker, solo, one_thread):
    session = thinker.stream_audio("Transcribe.", params=PARAMS)
    with pytest.raises(ValueError):
        session.push("abc")  # not audio
    # the broken session is still open and waiting: others go on
    assert [ev.token_id for ev in thinker.generate(PROMPTS[0], params=PARAMS)] == solo[PROMPTS[0]]
    session.abort()
    assert not thinker.engine.has_unfinished


def test_abandoned_sessions_are_reclaimed(thinker, solo, one_thread):
    engine = thinker.engine
    session = thinker.stream_audio("Transcribe.", params=PARAMS)
    session.push(np.zeros(16000, dtype=np.float32))
    assert [ev.token_id for ev in thinker.generate(PROMPTS[1], params=PARAMS)] == solo[PROMPTS[1]]
    seq = session.seq
    del session
    gc.collect()
    assert seq.finished and seq.finish_reason == "abort"
    assert engine.block_manager.num_free_blocks == engine.kv_cache.num_blocks
    with thinker.stream_audio("Transcribe.", params=PARAMS) as s:
        s.push(np.zeros(8000, dtype=np.float32))
    assert s.seq.finished and not engine.has_unfinished  # leaving the block without finish() aborts it


def test_sessions_waiting_for_audio_do_not_hold_up_the_queue(tiny_ckpt, one_thread):
    """Blocks held by sessions waiting for their next chunk are lent to queued requests
    (the waiting ones are preempted and recomputed when their audio arrives)."""
    th = Thinker.from_checkpoint(tiny_ckpt, engine_kwargs=dict(max_model_len=256, num_blocks=16, max_num_seqs=4))
    sessions = [th.stream_audio("Transcribe.", params=SamplingParams(max_new_tokens=4)) for _ in range(2)]
    ids = [ev.token_id for ev in th.generate("Hello.", params=SamplingParams(max_new_tokens=4, ignore_eos=True))]
    assert len(ids) == 4 and th.engine.scheduler.num_preemptions > 0  # an idle session lent its blocks
    for s in sessions:
        s.push(np.zeros(32000, dtype=np.float32))
        assert len(list(s.finish())) >= 1
    assert not th.engine.has_unfinished
