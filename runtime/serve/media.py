"""OpenAI content parts -> the runtime's media items (`thinker/items.py`), refused as early as they can be.

Parts: `image_url` {url}, `input_audio` {data (base64), format}, `audio_url` {url} and `video_url`
{url} (vLLM's names), `video` (the Qwen convention: {"type": "video", "video": URL or path}). A URL is
a base64 data URL (`data:<mime>;base64,<data>`), or a local file (`file:///abs/path` or `/abs/path`)
read only from under the server's allowed media directory (none by default); remote URLs are never
fetched. `parse_content_part` checks all of that and the size -- the base64 text's length against
the limit, a local file's size from the file system -- without decoding anything; `decode_media`
(blocking: run it off the event loop) then decodes: audio with soundfile (wav, mp3, flac, ogg) to
16 kHz, images with PIL (its pixel count read from the header first), videos with PyAV at the
Thinker's video fps (with `use_audio_in_video`, their soundtrack too). Every failure is an
`APIError` naming the part's field, e.g. `messages[0].content[1].input_audio.data`.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import APIError, invalid

__all__ = ["MediaPart", "parse_content_part", "decode_media", "AUDIO_FORMATS", "MAX_IMAGE_PIXELS"]

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
# an image's decoded size (from its header, before decoding): a few KB of PNG can claim gigapixels
MAX_IMAGE_PIXELS = 8192 * 8192
_PART_TYPES = ("text", "image_url", "input_audio", "audio_url", "video_url", "video")


@dataclass
class MediaPart:
    """One media item of a request: its kind (audio / image / video), the field errors name, and its
    source -- base64 text or a checked local path -- until `decode_media` sets `value` (what the
    runtime's media item takes: a 16 kHz waveform, a PIL image, (frames, fps[, 16 kHz soundtrack]))."""

    kind: str
    param: str
    b64: Optional[str] = None
    path: Optional[Path] = None
    value: Any = None


def parse_content_part(part, where: str, role: str, options) -> dict:
    """One entry of a message's `content` array -> {"type": "text", "text"} or {"type": KIND, KIND: MediaPart}."""
    if not isinstance(part, dict):
        raise invalid(where, f"'{where}' must be a content part object")
    kind = part.get("type")
    if kind not in _PART_TYPES:
        raise invalid(f"{where}.type", f"unsupported content part type {kind!r}; this server takes "
                                       f"{', '.join(_PART_TYPES)}")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise invalid(f"{where}.text", f"'{where}.text' must be a string")
        return {"type": "text", "text": part["text"]}
    if role != "user":
        raise invalid(f"{where}.type", f"{role} messages take text parts only, got a {kind!r} part")
    if kind == "input_audio":
        spec = _object(part, "input_audio", where)
        fmt = spec.get("format")
        if fmt not in AUDIO_FORMATS:
            raise invalid(f"{where}.input_audio.format", f"'{where}.input_audio.format' must be one of "
                                                         f"{', '.join(AUDIO_FORMATS)}, got {fmt!r}")
        media = _inline("audio", spec.get("data"), f"{where}.input_audio.data", options)
    elif kind == "video":
        media = _from_url("video", part.get("video"), f"{where}.video", options)
    else:
        key = kind  # image_url / audio_url / video_url: {"url": ...}
        media = _from_url(kind[:-len("_url")], _object(part, key, where).get("url"), f"{where}.{key}.url", options)
    return {"type": media.kind, media.kind: media}


def _object(part: dict, key: str, where: str) -> dict:
    value = part.get(key)
    if not isinstance(value, dict):
        raise invalid(f"{where}.{key}", f"'{where}.{key}' must be an object")
    return value


def _too_large(param: str, kind: str, size_bytes: float, options) -> APIError:
    return APIError(413, f"'{param}': the {kind} is {size_bytes / 2**20:.1f} MB, more than this server's limit "
                         f"of {options.max_media_mb:g} MB per media item", param, "media_too_large")


def _inline(kind: str, data, param: str, options) -> MediaPart:
    if not isinstance(data, str) or not data:
        raise invalid(param, f"'{param}' must be non-empty base64 text")
    if len(data) > 4 * math.ceil(options.max_media_bytes / 3):  # the base64 of the largest allowed item
        raise _too_large(param, kind, len(data) * 3 / 4, options)
    return MediaPart(kind, param, b64=data)


def _from_url(kind: str, url, param: str, options) -> MediaPart:
    if not isinstance(url, str) or not url:
        raise invalid(param, f"'{param}' must be a URL string")
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise invalid(param, f"'{param}': a data URL must be base64 encoded (data:<mime type>;base64,<data>)")
        return _inline(kind, payload, param, options)
    if url.startswith(("http://", "https://")):
        raise invalid(param, f"'{param}': remote URLs are not fetched; send the {kind} inline (a base64 data "
                             "URL) or as a local file under the server's allowed media directory",
                      "remote_media_unsupported")
    path = url[len("file://"):] if url.startswith("file://") else url
    if not os.path.isabs(path) or "\0" in path:
        raise invalid(param, f"'{param}' must be a data URL, a file:// URL or an absolute path, got {url[:80]!r}")
    if options.allowed_media_dir is None:
        raise APIError(403, f"'{param}': local media files are disabled on this server (start omni-serve with "
                            "--allowed-media-dir DIR to serve files from DIR)", param, "local_media_disabled")
    real = Path(os.path.realpath(path))
    if os.path.commonpath([real, options.allowed_media_dir]) != str(options.allowed_media_dir):
        raise APIError(403, f"'{param}': {path} is outside the allowed media directory", param,
                       "media_path_not_allowed")
    if not real.is_file():
        raise invalid(param, f"'{param}': no such file: {path}", "media_not_found")
    size = real.stat().st_size
    if size > options.max_media_bytes:
        raise _too_large(param, kind, size, options)
    return MediaPart(kind, param, path=real)


def decode_media(parts: list, media_options, use_audio_in_video: bool) -> None:
    """Decode every part into its `value` (blocking). media_options: the Thinker's `MediaOptions`
    (the video fps and frame limit)."""
    for part in parts:
        part.value = _decode(part, media_options, use_audio_in_video)


def _bytes(part: MediaPart) -> bytes:
    try:
        return base64.b64decode(part.b64, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(part.param, f"'{part.param}' is not valid base64", "invalid_base64") from None


def _decode(part: MediaPart, media_options, use_audio_in_video: bool):
    source = part.path if part.path is not None else io.BytesIO(_bytes(part))
    try:
        if part.kind == "audio":
            return _audio(source)
        if part.kind == "image":
            return _image(source, part.param)
        if part.path is not None:
            return _video(part.path, media_options, use_audio_in_video)
        with tempfile.TemporaryDirectory(prefix="omni-serve-") as tmp:  # PyAV reads files: a private copy
            path = Path(tmp) / "video"
            path.write_bytes(source.getvalue())
            return _video(path, media_options, use_audio_in_video)
    except APIError:
        raise
    except _decode_errors(part.kind) as e:
        raise invalid(part.param, f"'{part.param}': cannot decode the {part.kind}: {e}", "invalid_media") from None


def _decode_errors(kind: str) -> tuple:
    """What each decoder raises for bad data (soundfile: RuntimeError; PIL: OSError and its bomb
    check; PyAV: FFmpegError; the runtime's checks: ValueError)."""
    errors = (ValueError, OSError, RuntimeError, EOFError)
    if kind == "image":
        from PIL import Image

        return errors + (Image.DecompressionBombError,)
    if kind == "video":
        import av

        return errors + (av.error.FFmpegError,)
    return errors


def _audio(source):
    import soundfile

    from ..media.audio import load_audio

    samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    return load_audio(samples.T, sample_rate=rate)  # mono, 16 kHz; empty or NaN audio refused here


def _image(source, param: str):
    from PIL import Image

    with Image.open(source) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise APIError(413, f"'{param}': the image is {image.width}x{image.height} pixels, more than this "
                                f"server's limit of {MAX_IMAGE_PIXELS:,}", param, "media_too_large")
        image.load()
        return image.copy()


def _video(path, media_options, use_audio_in_video: bool) -> tuple:
    from ..media.audio import load_audio_track
    from ..media.video import load_video

    frames, fps = load_video(path, fps=media_options.video_fps, max_frames=media_options.video_max_frames)
    return (frames, fps, load_audio_track(path)) if use_audio_in_video else (frames, fps)
