"""Embedding the runtime in another asyncio server, with the asyncio API (`Omni.stream`).

The server here is plain `asyncio.start_server` speaking a line protocol: a client sends one line
(its prompt) and gets the spoken answer back as it is made -- `text <piece>` lines while the Thinker
writes, `audio <start> <samples>` lines (the PCM itself would follow in a real protocol) as packets
are decoded, then `done <finish reason> <seconds of speech>`. Any number of clients at once share
one `Omni`: their turns batch in its engines. A client that hangs up mid-answer makes `drain()`
raise; leaving the `async with` then aborts the turn and frees its KV blocks.

    python examples/embed_asyncio.py                      # the embedded tiny checkpoint (random weights)
    python examples/embed_asyncio.py --checkpoint Qwen2.5-Omni-7B --device cuda --prompt "Tell me a joke."
"""
import argparse
import asyncio

from omni_runtime.engine.sequence import TokenEvent
from omni_runtime.omni import AudioEvent, Omni
from omni_runtime.threads import apply_thread_policy


async def answer(omni, reader, writer, max_tokens, max_codes):
    prompt = (await reader.readline()).decode().strip()
    talker = omni.talker.sampling_params(max_new_tokens=max_codes)
    try:
        async with omni.stream(prompt, speaker="Ethan", max_new_tokens=max_tokens, talker_params=talker) as turn:
            async for ev in turn:  # the turn runs on its own thread: this loop never waits for a model step
                if isinstance(ev, TokenEvent):
                    writer.write(f"text {ev.text!r}\n".encode())
                elif isinstance(ev, AudioEvent):
                    writer.write(f"audio {ev.start_sample} {ev.samples.numel()}\n".encode())
                else:  # the TurnResult, last
                    writer.write(f"done {ev.finish_reason} {ev.audio_seconds:.2f}\n".encode())
                await writer.drain()
    except ConnectionError:
        pass  # the client left: the turn was stopped on leaving the `async with`
    finally:
        writer.close()


async def main(args):
    context = {"max_model_len": args.max_model_len}  # sizes the KV caches (default: the model's whole context)
    omni = Omni.from_checkpoint(args.checkpoint, device=args.device, engine_kwargs=context,
                                talker_engine_kwargs=context)
    server = await asyncio.start_server(lambda r, w: answer(omni, r, w, args.max_tokens, args.max_codes),
                                        "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        # a client, so that the example runs end to end: ask, print the streamed answer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(args.prompt.encode() + b"\n")
        while line := await reader.readline():
            print(line.decode(), end="")
        writer.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt", default="Hello! Who are you?")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-codes", type=int, default=200, help="speech codes at most (50 per second)")
    p.add_argument("--max-model-len", type=int, default=4096, help="context of the Thinker and the Talker")
    apply_thread_policy()
    asyncio.run(main(p.parse_args()))
