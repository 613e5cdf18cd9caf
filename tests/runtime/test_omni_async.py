"""The asyncio API (`Omni.stream`): the same events as the iterator API, several streams on one
loop, bad requests, and every way of leaving a stream early freeing its requests."""
import asyncio
import time

import pytest
import torch

from helpers import all_freed, assert_same_turn
from omni_runtime.engine.sampling import SamplingParams
from omni_runtime.engine.sequence import TokenEvent
from omni_runtime.omni import AudioEvent, OmniStream, TurnResult

PROMPTS = ["Hello world, are you a helpful assistant?", "What is the capital of the moon?", "Sing.",
           "Count to ten.", "Why is the sky blue?", "Tell me a story about a cat.", "Hi", "Translate: good night"]


def _kwargs(omni, sharp, i):
    return dict(params=SamplingParams(max_new_tokens=10, stop_token_ids=tuple(sharp[1])),
                speaker=("Chelsie", "Ethan")[i % 2], seed=i,
                talker_params=omni.talker.sampling_params(seed=i, max_new_tokens=30))


async def _collect(stream: OmniStream) -> list:
    return [ev async for ev in stream]


def test_stream_equals_generate(omni, sharp, one_thread):
    kw = _kwargs(omni, sharp, 0)
    sync = list(omni.generate(PROMPTS[0], **kw))
    events = asyncio.run(_collect(omni.stream(PROMPTS[0], **kw)))
    assert [type(e) for e in events] == [type(e) for e in sync]
    assert isinstance(events[-1], TurnResult) and any(isinstance(e, AudioEvent) for e in events)
    assert_same_turn(events[-1], sync[-1])
    stamps = [e.t for e in events[:-1]]
    assert all(isinstance(e, (TokenEvent, AudioEvent)) for e in events[:-1])
    assert stamps == sorted(stamps)  # delivered in the order they became ready
    assert all_freed(omni)


def test_concurrent_streams_on_one_loop_equal_their_solo_runs(omni, sharp, one_thread):
    """8 turns at once: their Thinker and Talker rows batch, their chunks decode in shared batches."""
    solo = [list(omni.generate(p, **_kwargs(omni, sharp, i)))[-1] for i, p in enumerate(PROMPTS)]

    async def main():
        return await asyncio.gather(*(_collect(omni.stream(p, **_kwargs(omni, sharp, i)))
                                      for i, p in enumerate(PROMPTS)))

    runs = asyncio.run(main())
    for events, ref in zip(runs, solo):
        assert_same_turn(events[-1], ref)
    assert max(b for events in runs for b in events[-1].timings["codec_batch"]) > 1
    assert all_freed(omni)


def test_the_loop_keeps_running_while_a_turn_steps(omni, sharp, one_thread):
    """The turn runs off the loop: a ticker on the same loop keeps ticking throughout."""
    ticks = []

    async def ticker(stop):
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        events = await _collect(omni.stream(PROMPTS[0], **_kwargs(omni, sharp, 0)))
        stop.set()
        await task
        return events

    events = asyncio.run(main())
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    turn_s = events[-1].timings["end"]
    assert len(ticks) >= 3 and max(gaps) < max(0.5, turn_s / 2)


@pytest.mark.parametrize("how", ["break", "aclose", "cancel", "exception"])
def test_leaving_a_stream_early_frees_its_requests(omni, sharp, how, one_thread):
    kw = dict(_kwargs(omni, sharp, 0), params=SamplingParams(max_new_tokens=40, ignore_eos=True))

    async def consume(stream):
        async for ev in stream:
            if isinstance(ev, TokenEvent):
                if how == "exception":
                    raise KeyError("consumer failed")
                if how != "cancel":
                    return

    async def main():
        if how == "break":
            await consume(omni.stream(PROMPTS[0], **kw))  # dropped: collected, its __del__ stops it
        elif how == "aclose":
            stream = omni.stream(PROMPTS[0], **kw)
            await consume(stream)
            await stream.aclose()
            assert all_freed(omni)  # aclose returns once the requests are freed
        elif how == "exception":
            with pytest.raises(KeyError):
                async with omni.stream(PROMPTS[0], **kw) as stream:
                    await consume(stream)
            assert all_freed(omni)
        else:
            task = asyncio.create_task(consume(omni.stream(PROMPTS[0], **kw)))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        deadline = time.perf_counter() + 30
        while not all_freed(omni) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert all_freed(omni)
    # and the Omni serves the next turn as before
    assert_same_turn(list(omni.generate(PROMPTS[1], **_kwargs(omni, sharp, 1)))[-1],
                      asyncio.run(_collect(omni.stream(PROMPTS[1], **_kwargs(omni, sharp, 1))))[-1])


def test_a_bad_request_raises_from_the_first_step(omni, sharp):
    async def first(stream):
        return await stream.__anext__()

    with pytest.raises(ValueError, match="unknown speaker 'Nobody'"):
        asyncio.run(first(omni.stream(PROMPTS[0], speaker="Nobody")))
    with pytest.raises(ValueError, match="noise="):
        asyncio.run(first(omni.stream(PROMPTS[0], noise=torch.zeros(1, 2, 80))))
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        asyncio.run(first(omni.stream(PROMPTS[0], audios=["/no/such/file.wav"])))
    assert all_freed(omni)
