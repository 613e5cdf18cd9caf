"""omni-run's turn: load the Thinker, prepare the prompt, stream the answer. torch and the model
modules are imported here, when a turn runs (never for --help or argument errors); the media
options module and its checks only when media options are given."""
from __future__ import annotations

import sys
import time

from .parser import DEFAULT_PROMPT, UsageError, check_media, is_greedy_temperature, media_overrides

__all__ = ["run_turn"]


def note(args, msg: str) -> None:
    if not args.quiet:
        sys.stderr.write(f"omni-run: {msg}\n")
        sys.stderr.flush()


def _sampling(args):
    from ..engine.sampling import SamplingParams

    greedy_t = is_greedy_temperature(args.temperature)  # temperature 0 = greedy, top-k / top-p moot
    sampling = not greedy_t and any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    kw = dict(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty, seed=args.seed,
              ignore_eos=args.ignore_eos)
    if sampling:
        kw.update(do_sample=True, temperature=1.0 if args.temperature is None else args.temperature,
                  top_k=0 if args.top_k is None else args.top_k, top_p=1.0 if args.top_p is None else args.top_p)
    try:
        return SamplingParams(**kw)
    except ValueError as e:
        raise UsageError(str(e)) from None


def setup(args) -> dict:
    """What every turn needs before loading: thread policy, sampling, device, dtype, checkpoint
    path (the embedded tiny one written on first use), media overrides, the conversation."""
    import torch

    from ..io import tiny_cache
    from ..io.chat import OMNI_SYSTEM_PROMPT
    from ..threads import apply_thread_policy

    threads = apply_thread_policy(args.threads)  # before any compute: OpenMP's pool is sized once used
    params = _sampling(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"invalid --device {device!r}") from None
    dtype = args.dtype or ("bf16" if dev.type == "cuda" else "fp32")
    prompt_ids = args.prompt_ids  # parsed by check_args
    prompt = args.prompt
    if prompt_ids is None and prompt is None and not (args.audio or args.image or args.video):
        prompt = DEFAULT_PROMPT

    t_start = time.perf_counter()
    timings: dict = {}
    path = args.checkpoint
    if path is None:
        cached = tiny_cache.default_checkpoint_dir(create=False)
        if not tiny_cache.is_complete_checkpoint(cached):
            note(args, f"writing the embedded tiny checkpoint to {cached} (first use)")
        t0 = time.perf_counter()
        path = tiny_cache.default_checkpoint_dir()
        timings["checkpoint_write_s"] = time.perf_counter() - t0

    overrides = media_overrides(args)
    media_kw = {}
    if overrides:
        check_media(overrides, path)  # before loading: a bad value fails fast, naming the option
        # a dict of overrides of the checkpoint's options, for the call that processes the media:
        # prepare() (what generate() forwards them to; the CLI sizes the KV cache in between) or
        # stream_audio()
        media_kw["media_options"] = overrides
    engine_kwargs = {"max_model_len": args.max_model_len} if args.max_model_len else {}
    if args.no_cuda_graphs:
        engine_kwargs["cuda_graphs"] = False
    return dict(threads=threads, params=params, dev=dev, device=device, dtype=dtype, path=path, timings=timings,
                t_start=t_start, overrides=overrides, engine_kwargs=engine_kwargs,
                conversation=prompt_ids if prompt_ids is not None else prompt,
                system=args.system if args.system is not None else OMNI_SYSTEM_PROMPT,
                media=dict(images=list(args.image), videos=list(args.video),
                           use_audio_in_video=args.use_audio_in_video, **media_kw))


def check_loaded(args, thinker, path, conversation) -> None:
    limit = thinker.thinker_config.text_config.max_position_embeddings
    if args.max_model_len and args.max_model_len > limit:
        raise UsageError(f"--max-model-len {args.max_model_len} exceeds the model's max_position_embeddings {limit}")
    if isinstance(conversation, str) and not thinker.tokenizer.has_text:
        raise UsageError(f"{path} has no tokenizer.json: give the prompt as --prompt-ids")


def run_turn(args, write_text) -> dict:
    """One turn; `write_text(piece)` gets the answer as it streams (not with --json). Returns the
    result dict (the --json object)."""
    if args.speak:
        from .speak import run_speech_turn

        return run_speech_turn(args, write_text)
    from ..io.progress import ProgressLine
    from ..thinker.thinker import STREAM_CHUNK_SECONDS, Thinker

    c = setup(args)
    threads, dev, dtype, path, timings, t_start = (c[k] for k in ("threads", "dev", "dtype", "path", "timings",
                                                                    "t_start"))
    device, engine_kwargs, overrides = c["device"], c["engine_kwargs"], c["overrides"]
    t0 = time.perf_counter()
    thinker = Thinker.from_checkpoint(path, device=device, dtype=dtype,
                                      progress=None if args.quiet else ProgressLine("loading thinker"),
                                      engine_kwargs=engine_kwargs)
    timings["load_s"] = time.perf_counter() - t0
    if thinker.note:
        note(args, f"note: {path}: {thinker.note}")
    check_loaded(args, thinker, path, c["conversation"])
    params = thinker.sampling_params(c["params"])
    system, conversation, media = c["system"], c["conversation"], c["media"]
    block = 16

    def size_engine(prompt_tokens: int) -> None:
        # a KV cache for this one turn (prompt + answer), not the whole context
        need = min(prompt_tokens + params.max_new_tokens, thinker.max_model_len)
        thinker.engine_kwargs.update(block_size=block, num_blocks=-(-need // block) + 1, max_num_seqs=1)

    stream_info = None
    t_turn = time.perf_counter()
    if args.stream_audio:
        from ..media.audio import load_audio

        wav = load_audio(args.audio[0])
        thinker.engine_kwargs.update(max_num_seqs=1)  # the prompt length is open: room for the context
        session = thinker.stream_audio(conversation, params=params, system_prompt=system, **media)
        piece = int(16000 * STREAM_CHUNK_SECONDS)
        for i in range(0, len(wav), piece):
            session.push(wav[i:i + piece])
        streamed = len(session.chunk_timings)
        gen = session.finish()  # the last partial chunk and the rest of the prompt, then the answer
        t_inputs = session.t_audio_end
        timings["prepare_s"] = t_inputs - t_turn  # decode + stream in + prefill all chunks before the end
        stream_info = {"chunk_seconds": STREAM_CHUNK_SECONDS, "audio_seconds": len(wav) / 16000,
                       "chunks_prefilled_while_streaming": streamed,
                       "chunk_encode_prefill_s": [round(c["encode_s"] + c["prefill_s"], 6)
                                                  for c in session.chunk_timings]}
    else:
        t_inputs = t_turn
        prepared = thinker.prepare(conversation, audios=list(args.audio), system_prompt=system, **media)
        timings["prepare_s"] = time.perf_counter() - t_turn
        size_engine(prepared.num_tokens)
        gen = thinker.generate(prepared=prepared, params=params)
    seq = None
    text_parts = []
    try:
        for ev in gen:
            seq = ev.seq
            if ev.text:
                text_parts.append(ev.text)
                write_text(ev.text)
    finally:
        # A closed stdout (BrokenPipeError) or ^C ends the turn here: closing the generator aborts
        # the engine's sequence at once instead of whenever the generator is garbage collected.
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    t_end = time.perf_counter()
    if stream_info is not None:
        stream_info["mel_max_deviation"] = session.mel_max_deviation
    n = len(seq.output_ids)
    t_first = seq.t_first_token
    t_done = seq.t_finished or t_end
    timings.update({
        "ttft_s": t_first - t_inputs,
        "decode_tokens_per_s": (n - 1) / (t_done - t_first) if n > 1 and t_done > t_first else None,
        "tokens_per_s": n / (t_done - t_inputs),
        "total_s": t_end - t_start,
    })
    result = {
        "checkpoint": str(path),
        "note": thinker.note,
        "device": str(dev),
        "dtype": dtype,
        "threads": threads,
        "prompt_tokens": seq.num_prompt_tokens,
        "generated_ids": list(seq.output_ids),
        "generated_tokens": n,
        "text": "".join(text_parts),
        "finish_reason": seq.finish_reason,
        "timings": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in timings.items()},
    }
    if overrides:
        result["media_options"] = overrides
    if stream_info is not None:
        result["stream_audio"] = stream_info
    return result
