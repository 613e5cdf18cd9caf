"""OpenAI chat-completions requests -> what `Omni.stream` takes. Everything that needs no decoding is
checked here, before the request waits for a stream; errors are `APIError`s naming the field.

Fields: `model` (this server's model name), `messages` (roles system / developer / user / assistant;
content a string or parts, see `media.py`; media in user messages only), `stream`,
`stream_options.include_usage`, `modalities` (["text"] or ["text", "audio"]) with `audio: {voice,
format}` (voices: the checkpoint's speakers, any case; format "pcm16" streamed, "wav" or "pcm16"
otherwise), `max_completion_tokens` / `max_tokens` (default 128), `temperature` (absent or 0:
greedy, the model's default here; > 0: sampling with `top_p`), `top_p`, `seed` (the sampling and the
speech's noise; absent: a random one), `stop` (text answers only: speech already decoded past a stop
string could not be taken back), `n` (1 only). Fields that would change the answer in ways this
server does not implement (tools, logprobs, JSON formats, penalties, logit bias) are refused; others
(user, metadata, store, ...) are ignored.

Extensions (not OpenAI's): `talker_greedy` (bool: argmax speech codes; default: the server's
--talker-greedy, else the official sampling), `max_audio_codes` (int: at most this many speech codes,
50 per second), `ignore_eos` (bool: fixed lengths, for benchmarks -- exactly max_tokens text tokens
and, with audio, exactly max_audio_codes codes, the stop codes suppressed as omni-bench does),
`use_audio_in_video` (bool: the videos' soundtracks are heard too, as Qwen's processor option).
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Optional

from ..engine.sampling import SamplingParams
from .audio_out import FORMATS, STREAM_FORMATS
from .errors import APIError, invalid
from .media import MediaPart, parse_content_part

__all__ = ["ChatRequest", "parse_chat_request", "ROLES"]

ROLES = ("system", "developer", "user", "assistant")  # developer: OpenAI's newer name for system
MAX_STOPS = 4
# field -> is its value one this server can honour (the default / off)
_UNSUPPORTED = {
    "tools": lambda v: not v, "functions": lambda v: not v, "tool_choice": lambda v: v in (None, "none"),
    "logprobs": lambda v: not v, "top_logprobs": lambda v: not v, "logit_bias": lambda v: not v,
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "prediction": lambda v: v is None, "frequency_penalty": lambda v: not v, "presence_penalty": lambda v: not v,
}
_KINDS = {"int": ((int,), "an integer"), "number": ((int, float), "a number"), "bool": ((bool,), "a boolean"),
          "str": ((str,), "a string"), "list": ((list,), "an array"), "dict": ((dict,), "an object")}


@dataclass
class ChatRequest:
    """A checked request. messages: the runtime's conversation with `MediaPart`s in the media items
    (their values come from `media.decode_media`, then `conversation()`)."""

    messages: list
    media: list
    stream: bool
    include_usage: bool
    speaker: Optional[str]
    audio_format: Optional[str]
    params: SamplingParams
    talker_params: Optional[SamplingParams]
    seed: int
    stop: tuple
    use_audio_in_video: bool

    @property
    def speak(self) -> bool:
        return self.speaker is not None

    def conversation(self) -> list:
        def item(it):
            part = it.get(it["type"])
            return {"type": it["type"], it["type"]: part.value} if isinstance(part, MediaPart) else it

        return [m if isinstance(m["content"], str) else {**m, "content": [item(it) for it in m["content"]]}
                for m in self.messages]

    def stream_kwargs(self) -> dict:
        """`Omni.stream`'s keyword arguments (besides the conversation)."""
        return dict(params=self.params, speak=self.speak, speaker=self.speaker, talker_params=self.talker_params,
                    seed=self.seed, use_audio_in_video=self.use_audio_in_video)


def parse_chat_request(body, omni, options) -> ChatRequest:
    """The JSON body (already parsed) of POST /v1/chat/completions -> a ChatRequest, or an APIError."""
    if not isinstance(body, dict):
        raise invalid(None, "the request body must be a JSON object")
    model = _get(body, "model", "str")
    if model is None:
        raise invalid("model", "'model' is required")
    if model != options.model_name:
        raise APIError(404, f"the model {model!r} does not exist: this server serves {options.model_name!r}",
                       "model", "model_not_found")
    for key, honoured in _UNSUPPORTED.items():
        if not honoured(body.get(key)):
            raise invalid(key, f"'{key}' is not supported by this server", "unsupported_parameter")
    if _get(body, "n", "int") not in (None, 1):
        raise invalid("n", "'n' must be 1: this server returns one choice per request")
    stream = bool(_get(body, "stream", "bool"))
    stream_options = _get(body, "stream_options", "dict")
    if stream_options is not None and not stream:
        raise invalid("stream_options", "'stream_options' is only allowed when 'stream' is true")
    include_usage = bool(_get(stream_options or {}, "include_usage", "bool", "stream_options.include_usage"))
    speaker, audio_format = _audio_output(body, omni, stream)
    messages, media = _messages(body, options)
    seed = _get(body, "seed", "int")
    if seed is not None and not 0 <= seed < 2**63:
        raise invalid("seed", f"'seed' must be in [0, 2**63), got {seed}")
    params = _thinker_params(body, omni, seed)
    talker_params = None if speaker is None else _talker_params(body, omni, options, seed)
    stop = _stop(body, speaker is not None)
    return ChatRequest(messages, media, stream, include_usage, speaker, audio_format, params, talker_params,
                       secrets.randbelow(2**31) if seed is None else seed, stop,
                       bool(_get(body, "use_audio_in_video", "bool")))


def _get(obj: dict, key: str, kind: str, param: Optional[str] = None):
    """obj[key] checked to be of `kind` (JSON null = absent -> None)."""
    param = param or key
    value = obj.get(key)
    if value is None:
        return None
    types, name = _KINDS[kind]
    ok = isinstance(value, types) and (kind == "bool" or not isinstance(value, bool))
    if ok and kind == "number":
        ok = math.isfinite(value)
    if not ok:
        raise invalid(param, f"'{param}' must be {name}, got {_describe(value)}")
    return value


def _describe(value) -> str:
    name = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{name} {text[:40] + '...' if len(text) > 40 else text}"


def _audio_output(body: dict, omni, stream: bool) -> tuple:
    """-> (speaker name, audio format), or (None, None) for a text-only answer."""
    modalities = _get(body, "modalities", "list") or ["text"]
    if "text" not in modalities or not set(modalities) <= {"text", "audio"} or len(set(modalities)) != len(modalities):
        raise invalid("modalities", f"'modalities' must be [\"text\"] or [\"text\", \"audio\"], got {modalities!r}")
    if "audio" not in modalities:
        return None, None
    if not omni.can_speak:
        raise invalid("modalities", "this model answers in text only (its checkpoint has no Talker / Token2Wav "
                                    "weights)")
    audio = _get(body, "audio", "dict")
    if audio is None:
        raise invalid("audio", "audio output (modalities [\"text\", \"audio\"]) needs 'audio': {\"voice\", \"format\"}")
    voice = _get(audio, "voice", "str", "audio.voice")
    voices = {name.lower(): name for name in omni.speakers}
    if voice is None or voice.lower() not in voices:
        raise invalid("audio.voice", f"unknown voice {voice!r}: this model's voices are {', '.join(omni.speakers)}",
                      "invalid_voice")
    fmt = _get(audio, "format", "str", "audio.format")
    allowed = STREAM_FORMATS if stream else FORMATS
    if fmt not in allowed:
        when = " when streaming" if stream else ""
        raise invalid("audio.format", f"'audio.format' must be {' or '.join(map(repr, allowed))}{when}, got {fmt!r}")
    return voices[voice.lower()], fmt


def _messages(body: dict, options) -> tuple:
    messages = _get(body, "messages", "list")
    if not messages:
        raise invalid("messages", "'messages' must be a non-empty array")
    out, media = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, f"'{where}' must be a message object")
        role = _get(m, "role", "str", f"{where}.role")
        if role not in ROLES:
            raise invalid(f"{where}.role", f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}")
        for key in ("audio", "tool_calls", "function_call"):
            if m.get(key):
                raise invalid(f"{where}.{key}", f"'{where}.{key}' is not supported: this server keeps no "
                                                "earlier answers (send the assistant's words as its content)")
        role = "system" if role == "developer" else role
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or not content:
            raise invalid(f"{where}.content", f"'{where}.content' must be a string or a non-empty array of parts")
        items = [parse_content_part(part, f"{where}.content[{j}]", role, options) for j, part in enumerate(content)]
        media += [it[it["type"]] for it in items if it["type"] != "text"]
        out.append({"role": role, "content": items})
    return out, media


def _thinker_params(body: dict, omni, seed: Optional[int]) -> SamplingParams:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, key, "int")
    if max_tokens is not None and max_tokens < 1:
        raise invalid(key, f"'{key}' must be >= 1, got {max_tokens}")
    temperature = _get(body, "temperature", "number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise invalid("temperature", f"'temperature' must be in [0, 2], got {temperature}")
    top_p = _get(body, "top_p", "number")
    if top_p is not None and not 0 < top_p <= 1:
        raise invalid("top_p", f"'top_p' must be in (0, 1], got {top_p}")
    kw = dict(ignore_eos=bool(_get(body, "ignore_eos", "bool")))
    if temperature:  # absent or 0: greedy
        kw.update(do_sample=True, temperature=temperature, top_p=1.0 if top_p is None else top_p, seed=seed)
    return omni.thinker.sampling_params(max_new_tokens=max_tokens, **kw)


def _talker_params(body: dict, omni, options, seed: Optional[int]) -> SamplingParams:
    codes = _get(body, "max_audio_codes", "int")
    if codes is not None and codes < 1:
        raise invalid("max_audio_codes", f"'max_audio_codes' must be >= 1, got {codes}")
    greedy = _get(body, "talker_greedy", "bool")
    kw = dict(greedy=options.talker_greedy if greedy is None else greedy, seed=seed)
    if _get(body, "ignore_eos", "bool"):
        if codes is None:
            raise invalid("max_audio_codes", "'ignore_eos' with audio output needs 'max_audio_codes' (the fixed "
                                             "number of speech codes, 50 per second)")
        return omni.fixed_length_talker_params(codes, **kw)  # as omni-bench
    if codes is not None:
        kw["max_new_tokens"] = codes
    return omni.talker.sampling_params(**kw)

def _stop(body: dict, speak: bool) -> tuple:
    stop = body.get("stop")
    stops = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOPS or not all(
            isinstance(s, str) and s for s in stops):
        raise invalid("stop", f"'stop' must be a non-empty string or an array of at most {MAX_STOPS} of them")
    if stops and speak:
        raise invalid("stop", "'stop' is not supported with audio output: speech already decoded past a stop "
                              "string could not be taken back")
    return tuple(stops)
