"""`omni-run`: one Thinker turn from the command line (text, audio, images, video in; streamed text out).

    omni-run --prompt "What do you hear?" --audio clip.wav --json
    omni-run --checkpoint Qwen2.5-Omni-7B --device cuda --image cat.jpg --prompt "Describe it."
    python -m omni_runtime.cli --prompt-ids 1,2,3 --max-new-tokens 8

Without --checkpoint it runs the embedded tiny checkpoint (written on first use into
$OMNI_RUNTIME_CACHE, default ~/.cache/omni_runtime): RANDOM weights -- the words are meaningless --
but the real compute path (chat template, audio/vision encoders, TMRoPE, paged KV cache, sampling).

Output: the answer streamed to stdout as it is generated, a summary line on stderr; with --json one
JSON object on stdout instead (generated ids, text, finish reason, prompt tokens, timings). Timings:
load_s (opening and loading the checkpoint), prepare_s (media decoding, features, encoders, prompt
build; with --stream-audio: everything before the end of the audio, its chunks prefilled as they
arrive), ttft_s (time to first token, counted from when all input is available: the start of the
turn, or with --stream-audio the end of the audio), decode_tokens_per_s (tokens after the first /
their time), tokens_per_s (all generated tokens / time from when all input is available).

Bad input (missing files, an unsupported dtype, a prompt longer than the context, NaN or empty
audio, a zero-size image, ...) prints `omni-run: error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = ["main", "build_parser"]

PROG = "omni-run"
DEFAULT_PROMPT = "Hello! Who are you?"
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run one Qwen2.5-Omni Thinker turn: text, audio, images and video in, streamed text out.",
        epilog="Without --checkpoint the embedded tiny checkpoint is used (random weights: meaningless words, "
               "real compute path).")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory in the official layout "
                   "(default: the embedded tiny checkpoint, written on first use)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help=f"the user's text (default {DEFAULT_PROMPT!r} when no "
                        "media is given)")
    prompt.add_argument("--prompt-ids", metavar="IDS", help="raw prompt token ids, comma separated (no chat "
                        "template; a single <|AUDIO|>/<|IMAGE|>/<|VIDEO|> id per media item is expanded)")
    p.add_argument("--system", metavar="TEXT", help="system prompt (default: Qwen2.5-Omni's)")
    p.add_argument("--audio", metavar="FILE", action="append", default=[], help="audio file (repeatable)")
    p.add_argument("--image", metavar="FILE", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--video", metavar="FILE", action="append", default=[], help="video file, sampled at 2 fps "
                   "(repeatable)")
    p.add_argument("--use-audio-in-video", action="store_true", help="also feed each video's soundtrack, "
                   "interleaved with its frames in 2-second chunks")
    p.add_argument("--stream-audio", action="store_true", help="feed the (one) --audio in 2-second chunks, each "
                   "encoded and prefilled as it arrives; ttft is then measured from the end of the audio")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (the default unless a sampling "
                   "option is given)")
    p.add_argument("--temperature", type=float, metavar="T", help="sample with this temperature")
    p.add_argument("--top-k", type=int, metavar="K", help="sample from the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set with probability >= P")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the sampling generator")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                   help="weights and compute dtype (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--max-model-len", type=int, metavar="N", help="context length (default: the config's "
                   "max_position_embeddings)")
    p.add_argument("--json", action="store_true", help="print one JSON object (ids, text, timings) instead of "
                   "streamed text")
    p.add_argument("--quiet", action="store_true", help="no progress line or notices on stderr")
    return p


def _err(msg: str) -> None:
    sys.stderr.write(f"{PROG}: error: {msg}\n")


def _note(args, msg: str) -> None:
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {msg}\n")
        sys.stderr.flush()


def _sampling(args):
    from .engine.sampling import SamplingParams

    sampling = any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    if args.greedy and sampling:
        raise UsageError("--greedy cannot be combined with --temperature / --top-k / --top-p")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    kw = dict(max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty, seed=args.seed)
    if sampling:
        kw.update(do_sample=True, temperature=1.0 if args.temperature is None else args.temperature,
                  top_k=0 if args.top_k is None else args.top_k, top_p=1.0 if args.top_p is None else args.top_p)
    try:
        return SamplingParams(**kw)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _prompt_ids(text: str) -> list[int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--prompt-ids must be integers separated by commas, got {text!r}") from None
    if not ids:
        raise UsageError("--prompt-ids is empty")
    return ids


def _check_files(args) -> None:
    for flag, files in (("--audio", args.audio), ("--image", args.image), ("--video", args.video)):
        for f in files:
            path = Path(f)
            if not path.exists():
                raise UsageError(f"{flag} file not found: {f}")
            if path.is_dir():
                raise UsageError(f"{flag} {f} is a directory, not a file")
            if path.stat().st_size == 0:
                raise UsageError(f"{flag} file {f} is empty (0 bytes)")
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise UsageError(f"checkpoint directory not found: {args.checkpoint}")
    if args.use_audio_in_video and not args.video:
        raise UsageError("--use-audio-in-video needs a --video")
    if args.stream_audio and len(args.audio) != 1:
        raise UsageError(f"--stream-audio streams exactly one --audio file, got {len(args.audio)}")
    if args.max_model_len is not None and args.max_model_len < 1:
        raise UsageError(f"--max-model-len must be >= 1, got {args.max_model_len}")


def _run(args) -> dict:
    import torch

    from .io import tiny_checkpoint
    from .media.audio import load_audio
    from .io.chat import OMNI_SYSTEM_PROMPT
    from .io.checkpoint import ProgressLine
    from .thinker.thinker import STREAM_CHUNK_SECONDS, Thinker

    _check_files(args)
    params = _sampling(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"invalid --device {device!r}") from None
    dtype = args.dtype or ("bf16" if dev.type == "cuda" else "fp32")
    prompt_ids = _prompt_ids(args.prompt_ids) if args.prompt_ids is not None else None
    prompt = args.prompt
    if prompt_ids is None and prompt is None and not (args.audio or args.image or args.video):
        prompt = DEFAULT_PROMPT

    t_start = time.perf_counter()
    timings: dict = {}
    path = args.checkpoint
    if path is None:
        cached = tiny_checkpoint.default_checkpoint_dir(create=False)
        if not (cached / "config.json").is_file():
            _note(args, f"writing the embedded tiny checkpoint to {cached} (first use)")
        t0 = time.perf_counter()
        path = tiny_checkpoint.default_checkpoint_dir()
        timings["checkpoint_write_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine_kwargs = {"max_model_len": args.max_model_len} if args.max_model_len else {}
    thinker = Thinker.from_checkpoint(path, device=device, dtype=dtype,
                                      progress=None if args.quiet else ProgressLine("loading thinker"),
                                      engine_kwargs=engine_kwargs)
    timings["load_s"] = time.perf_counter() - t0
    if thinker.note:
        _note(args, f"note: {path}: {thinker.note}")
    limit = thinker.thinker_config.text_config.max_position_embeddings
    if args.max_model_len and args.max_model_len > limit:
        raise UsageError(f"--max-model-len {args.max_model_len} exceeds the model's max_position_embeddings {limit}")
    params = thinker.sampling_params(params)
    if prompt_ids is None and prompt is not None and not thinker.tokenizer.has_text:
        raise UsageError(f"{path} has no tokenizer.json: give the prompt as --prompt-ids")
    system = args.system if args.system is not None else OMNI_SYSTEM_PROMPT
    conversation = prompt_ids if prompt_ids is not None else prompt
    media = dict(images=list(args.image), videos=list(args.video), use_audio_in_video=args.use_audio_in_video)
    block = 16

    def size_engine(prompt_tokens: int) -> None:
        # a KV cache for this one turn (prompt + answer), not the whole context
        need = min(prompt_tokens + params.max_new_tokens, thinker.max_model_len)
        thinker.engine_kwargs.update(block_size=block, num_blocks=-(-need // block) + 1, max_num_seqs=1)

    events = []
    stream_info = None
    t_turn = time.perf_counter()
    if args.stream_audio:
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
    for ev in gen:
        events.append(ev)
        seq = ev.seq
        if ev.text:
            text_parts.append(ev.text)
            if not args.json:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
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
        "prompt_tokens": seq.num_prompt_tokens,
        "generated_ids": list(seq.output_ids),
        "generated_tokens": n,
        "text": "".join(text_parts),
        "finish_reason": seq.finish_reason,
        "timings": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in timings.items()},
    }
    if stream_info is not None:
        result["stream_audio"] = stream_info
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 with argparse's message
    try:
        result = _run(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        _err(str(e).strip() or type(e).__name__)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(result, allow_nan=False, default=_json_default) + "\n")
    else:
        if result["text"] and not result["text"].endswith("\n"):
            sys.stdout.write("\n")
        t = result["timings"]
        rate = t.get("decode_tokens_per_s")
        _note(args, f"{result['generated_tokens']} tokens ({result['finish_reason']}), prompt "
                    f"{result['prompt_tokens']} tokens; load {t['load_s']:.2f} s, ttft {t['ttft_s'] * 1e3:.1f} ms, "
                    + (f"{rate:.1f} tokens/s" if rate else "decode n/a")
                    + (f"; ids {result['generated_ids']}" if not result["text"] else ""))
    sys.stdout.flush()
    return 0


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


if __name__ == "__main__":
    sys.exit(main())
