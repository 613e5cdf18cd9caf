"""omni-run's arguments: the parser and every check that needs no model. Imports argparse, math and
os only, so `--help` and argument errors never load torch (~1.2 s)."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = ["build_parser", "check_args", "media_overrides", "UsageError", "PROG", "DEFAULT_PROMPT", "DTYPES",
           "MEDIA_OPTIONS", "GREEDY_TEMPERATURE"]

PROG = "omni-run"
DEFAULT_PROMPT = "Hello! Who are you?"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Temperatures below this decode greedily, as vLLM's _SAMPLING_EPS (dividing logits by ~0 overflows).
GREEDY_TEMPERATURE = 1e-5
# MediaOptions field -> command-line option
MEDIA_OPTIONS = {
    "image_min_pixels": "--image-min-pixels",
    "image_max_pixels": "--image-max-pixels",
    "video_min_pixels": "--video-min-pixels",
    "video_max_pixels": "--video-max-pixels",
    "video_fps": "--video-fps",
    "video_max_frames": "--video-max-frames",
    "audio_max_seconds": "--audio-max-seconds",
}


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


# ---- argument types: argparse turns their ArgumentTypeError into "argument --x: ..." (exit 2)


def _text(value: str) -> str:
    # Non-UTF-8 argv bytes arrive as lone surrogates (PEP 383 surrogateescape); nothing downstream
    # (tokenizer, stdout) can encode them, so refuse them here, naming the option.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start:e.end].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(f"is not valid UTF-8 text (bytes {bad!r} at character {e.start}); "
                                         "pass UTF-8 encoded text") from None
    return value


def _number(value: str, kind):
    try:
        return kind(_text(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                         f"got {value!r}") from None


def _positive_int(value: str) -> int:
    n = _number(value, int)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return n


def _pixels(value: str) -> int:
    """A positive pixel count; products like 768*28*28 (as Qwen's docs write them) are accepted."""
    parts = _text(value).replace(" ", "").split("*")
    try:
        n = math.prod(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer pixel count (e.g. 401408 or 512*28*28), "
                                         f"got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive pixel count, got {value!r}")
    return n


def _positive_float(value: str) -> float:
    x = _number(value, float)
    if not 0 < x < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value!r}")
    return x


def _seconds(value: str) -> float:
    try:
        return _positive_float(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value!r} (use "
                                         "--keep-all-audio to keep audio of any length)") from None


def _float(value: str) -> float:
    return _number(value, float)


def _int(value: str) -> int:
    return _number(value, int)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run one Qwen2.5-Omni Thinker turn: text, audio, images and video in, streamed text out.",
        epilog="Without --checkpoint the embedded tiny checkpoint is used (random weights: meaningless words, "
               "real compute path), written on first use into $OMNI_RUNTIME_CACHE (default "
               "~/.cache/omni_runtime). Exit status: 0 done, 2 bad input, 130 interrupted, 141 output pipe "
               "closed early (e.g. piped into `head`).")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory in the official layout "
                   "(default: the embedded tiny checkpoint, written on first use)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", type=_text, help=f"the user's text (default {DEFAULT_PROMPT!r} "
                        "when no media is given)")
    prompt.add_argument("--prompt-ids", metavar="IDS", type=_text, help="raw prompt token ids, comma separated (no "
                        "chat template; a single <|AUDIO|>/<|IMAGE|>/<|VIDEO|> id per media item is expanded)")
    p.add_argument("--system", metavar="TEXT", type=_text, help="system prompt (default: Qwen2.5-Omni's)")
    p.add_argument("--audio", metavar="FILE", action="append", default=[], help="audio file (repeatable)")
    p.add_argument("--image", metavar="FILE", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--video", metavar="FILE", action="append", default=[], help="video file, sampled at 2 fps "
                   "unless --video-fps (repeatable)")
    p.add_argument("--use-audio-in-video", action="store_true", help="also feed each video's soundtrack, "
                   "interleaved with its frames in 2-second chunks")
    p.add_argument("--stream-audio", action="store_true", help="feed the (one) --audio in 2-second chunks, each "
                   "encoded and prefilled as it arrives; ttft is then measured from the end of the audio")

    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=_int, default=128, metavar="N")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-turn token: exactly "
                   "--max-new-tokens tokens (fixed-length outputs for benchmarks)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the default unless a sampling "
                   "option is given)")
    g.add_argument("--temperature", type=_float, metavar="T", help="sample with this temperature; 0 means greedy "
                   "(as vLLM and OpenAI's API)")
    g.add_argument("--top-k", type=_int, metavar="K", help="sample from the K most likely tokens")
    g.add_argument("--top-p", type=_float, metavar="P", help="sample from the smallest set with probability >= P")
    g.add_argument("--repetition-penalty", type=_float, default=1.0, metavar="R")
    g.add_argument("--seed", type=_int, metavar="S", help="seed of the sampling generator")

    sp = p.add_argument_group("speech", "Answer in speech too: the Talker turns the answer into codec codes while "
                              "the Thinker writes it, Token2Wav streams them into 24 kHz packets.")
    sp.add_argument("--speak", action="store_true", help="speak the answer: write it to --out as 24 kHz PCM16 and "
                    "print a latency table (time to first text token / audio packet, real-time factor, codes/s, "
                    "DiT and vocoder ms per chunk)")
    sp.add_argument("--speaker", type=_text, metavar="NAME", help="voice from the checkpoint's spk_dict.pt "
                    "(default Chelsie)")
    sp.add_argument("--out", type=_text, metavar="FILE", default="reply.wav", help="where --speak writes the "
                    "waveform (default reply.wav)")
    sp.add_argument("--talker-greedy", action="store_true", help="argmax codes instead of the official talker "
                    "sampling (top-k 40, top-p 0.8, temperature 0.9, repetition penalty 1.05)")
    sp.add_argument("--max-codes", type=_positive_int, metavar="N", default=4096, help="at most N codec codes "
                    "(50 per second of speech; default 4096)")
    m = p.add_argument_group("media sizes", "Override the checkpoint's preprocessor_config.json (and "
                             "qwen-omni-utils' video defaults). Pixel counts may be written as products, "
                             "e.g. 512*28*28.")
    m.add_argument("--image-min-pixels", type=_pixels, metavar="PX", help="smallest image size in pixels after "
                   "resizing (default: the checkpoint's min_pixels, 3136 = 4*28*28 published)")
    m.add_argument("--image-max-pixels", type=_pixels, metavar="PX", help="largest image size in pixels after "
                   "resizing (default: the checkpoint's max_pixels, 12845056 = 16384*28*28 published)")
    m.add_argument("--video-min-pixels", type=_pixels, metavar="PX", help="smallest video frame size in pixels "
                   "(default 100352 = 128*28*28)")
    m.add_argument("--video-max-pixels", type=_pixels, metavar="PX", help="largest video frame size in pixels "
                   "(default 602112 = 768*28*28)")
    m.add_argument("--video-fps", type=_positive_float, metavar="FPS", help="frames sampled per second of video "
                   "(default 2)")
    m.add_argument("--video-max-frames", type=_positive_int, metavar="N", help="at most N sampled frames per video "
                   "(default 768)")
    audio = m.add_mutually_exclusive_group()
    audio.add_argument("--audio-max-seconds", type=_seconds, metavar="S", help="drop audio beyond S seconds "
                       "(default: the checkpoint's chunk_length, 300 s published)")
    audio.add_argument("--keep-all-audio", action="store_true", help="keep audio of any length")

    r = p.add_argument_group("runtime")
    r.add_argument("--device", type=_text, default=None, help="cpu, cuda, cuda:1, ... (default: cuda when "
                   "available)")
    r.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights and compute dtype (default: bf16 on cuda, fp32 on cpu)")
    r.add_argument("--max-model-len", type=_int, metavar="N", help="context length (default: the config's "
                   "max_position_embeddings)")
    r.add_argument("--no-cuda-graphs", action="store_true", help="run the decode step eagerly on CUDA "
                   "(default: captured as CUDA graphs; no effect on CPU)")
    r.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for torch (default: "
                   "$OMNI_RUNTIME_THREADS, else $OMP_NUM_THREADS, else one per two usable CPUs; see "
                   "omni_runtime.threads)")
    p.add_argument("--json", action="store_true", help="print one JSON object (ids, text, timings) instead of "
                   "streamed text")
    p.add_argument("--quiet", action="store_true", help="no progress line or notices on stderr")
    return p


def is_greedy_temperature(t) -> bool:
    return t is not None and t < GREEDY_TEMPERATURE


def check_args(args) -> None:
    """Every check that needs neither torch nor the checkpoint; raises UsageError."""
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    t = args.temperature
    if t is not None and not (0 <= t < math.inf):
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {t}")
    if args.greedy and ((t is not None and not is_greedy_temperature(t)) or args.top_k is not None
                        or args.top_p is not None):
        raise UsageError("--greedy cannot be combined with --temperature / --top-k / --top-p")
    if args.top_k is not None and args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0 < args.repetition_penalty < math.inf:
        raise UsageError(f"--repetition-penalty must be a positive finite number (1 = off), got "
                         f"{args.repetition_penalty}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.max_model_len is not None and args.max_model_len < 1:
        raise UsageError(f"--max-model-len must be >= 1, got {args.max_model_len}")
    for kind in ("image", "video"):
        lo, hi = getattr(args, f"{kind}_min_pixels"), getattr(args, f"{kind}_max_pixels")
        if lo is not None and hi is not None and lo > hi:
            raise UsageError(f"--{kind}-min-pixels ({lo}) must not exceed --{kind}-max-pixels ({hi})")
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
    if not args.speak and (args.speaker is not None or args.talker_greedy or args.out != "reply.wav"
                           or args.max_codes != 4096):
        raise UsageError("--speaker / --out / --talker-greedy / --max-codes need --speak")
    if args.speak and args.stream_audio:
        raise UsageError("--speak cannot be combined with --stream-audio yet: give the audio as a file (--audio)")
    if args.speak:
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"--out {args.out} is a directory, not a file")
        if not out.parent.is_dir():
            raise UsageError(f"--out {args.out}: directory {out.parent} does not exist")
        if out.suffix.lower() != ".wav":
            raise UsageError(f"--out {args.out} must end in .wav (24 kHz PCM16 WAV)")
    if args.stream_audio and len(args.audio) != 1:
        raise UsageError(f"--stream-audio streams exactly one --audio file, got {len(args.audio)}")
    if args.prompt_ids is not None:
        args.prompt_ids = prompt_ids(args.prompt_ids)


def prompt_ids(text: str) -> list[int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--prompt-ids must be integers separated by commas, got {text!r}") from None
    if not ids:
        raise UsageError("--prompt-ids is empty")
    return ids


def media_overrides(args) -> dict:
    """The media options the user gave, as `MediaOptions.replace` keyword arguments ({} if none)."""
    out = {field: getattr(args, field) for field in MEDIA_OPTIONS if getattr(args, field) is not None}
    if args.keep_all_audio:
        out["keep_all_audio"] = True
    return out


def check_media(overrides: dict, checkpoint: os.PathLike) -> None:
    """Check the overrides against the checkpoint's own media options (e.g. --image-max-pixels
    below its min_pixels); raises UsageError naming the options. Imports the media modules
    (torch), so it runs only when media options are given."""
    import json

    from ..media.options import MediaOptions

    pre_path = Path(checkpoint) / "preprocessor_config.json"
    try:
        pre = json.loads(pre_path.read_text())
        base = MediaOptions.from_preprocessor_config(pre)
    except (OSError, ValueError):
        base = MediaOptions()  # the Thinker reports an unreadable config itself
        pre_path = None
    for kind in ("image", "video"):
        lo_f, hi_f = f"{kind}_min_pixels", f"{kind}_max_pixels"
        lo, hi = overrides.get(lo_f, getattr(base, lo_f)), overrides.get(hi_f, getattr(base, hi_f))
        if lo > hi:  # one of the two is the checkpoint's (both given: check_args)
            source = str(pre_path) if pre_path is not None and kind == "image" else "the defaults"
            if hi_f in overrides:
                raise UsageError(f"{MEDIA_OPTIONS[hi_f]} {hi} is below {lo_f} {lo} of {source}; give "
                                 f"{MEDIA_OPTIONS[lo_f]} too")
            raise UsageError(f"{MEDIA_OPTIONS[lo_f]} {lo} is above {hi_f} {hi} of {source}; give "
                             f"{MEDIA_OPTIONS[hi_f]} too")
    try:
        base.replace(**overrides)
    except ValueError as e:
        msg = str(e)
        for field, flag in MEDIA_OPTIONS.items():
            msg = msg.replace(field, flag)
        raise UsageError(msg) from None
