"""runtime/media/options.py: MediaOptions -- defaults, validation (errors name the field), reading
preprocessor_config.json as transformers' processors do, replace()."""
import dataclasses
import json
import math
import warnings

import numpy as np
import pytest

from omni_runtime.media import vision
from omni_runtime.media.mel import log_mel_features
from omni_runtime.media.options import DEFAULT_AUDIO_MAX_SECONDS, MediaOptions


def test_defaults_are_the_processor_defaults():
    opts = MediaOptions()
    assert opts.audio_max_seconds == DEFAULT_AUDIO_MAX_SECONDS == 30.0  # WhisperFeatureExtractor's class default
    assert (opts.image_min_pixels, opts.image_max_pixels) == (56 * 56, 28 * 28 * 1280) == (
        vision.IMAGE_MIN_PIXELS, vision.IMAGE_MAX_PIXELS)
    assert (opts.video_min_pixels, opts.video_max_pixels) == (128 * 28 * 28, 768 * 28 * 28)
    assert (opts.video_fps, opts.video_max_frames) == (2.0, 768)
    assert opts.image_kwargs() == {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}
    assert opts.video_kwargs() == {"min_pixels": 128 * 28 * 28, "max_pixels": 768 * 28 * 28}


def test_numbers_are_normalised():
    opts = MediaOptions(audio_max_seconds=300, video_fps=1)
    assert opts.audio_max_seconds == 300.0 and isinstance(opts.audio_max_seconds, float)
    assert opts.video_fps == 1.0 and isinstance(opts.video_fps, float)
    assert MediaOptions(audio_max_seconds=None).audio_max_seconds is None  # keep all audio
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.video_fps = 4.0


@pytest.mark.parametrize("field,bad", [
    *[("audio_max_seconds", v) for v in (0, -1.0, math.inf, math.nan, True, "30")],
    *[(f, v) for f in ("image_min_pixels", "image_max_pixels", "video_min_pixels", "video_max_pixels",
                       "video_max_frames") for v in (0, -4, 1.5, True, "1024")],
    *[("video_fps", v) for v in (0, -2.0, math.inf, math.nan, False, "2")],
])
def test_bad_values_raise_naming_the_field(field, bad):
    with pytest.raises(ValueError, match=field):
        MediaOptions(**{field: bad})


@pytest.mark.parametrize("kind", ["image", "video"])
def test_min_above_max_names_both(kind):
    with pytest.raises(ValueError, match=f"{kind}_min_pixels .*{kind}_max_pixels"):
        MediaOptions(**{f"{kind}_min_pixels": 2000, f"{kind}_max_pixels": 1000})


def test_from_the_published_preprocessor_config(tiny_ckpt):
    """The tiny checkpoint carries the published values: chunk_length 300, max_pixels 12845056."""
    config = json.loads((tiny_ckpt / "preprocessor_config.json").read_text())
    opts = MediaOptions.from_preprocessor_config(config)
    assert opts.audio_max_seconds == 300.0
    assert (opts.image_min_pixels, opts.image_max_pixels) == (3136, 12845056)
    assert opts.video_kwargs() == MediaOptions().video_kwargs()  # not in this file: the processor's defaults
    # what the Thinker passes on: a 31 s clip keeps all its 3100 frames (30 s would cut it to 3000)
    wav = (np.random.default_rng(0).standard_normal(31 * 16000) * 0.1).astype(np.float32)
    assert log_mel_features(wav, chunk_length=opts.audio_max_seconds).shape == (128, 3100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert log_mel_features(wav, chunk_length=MediaOptions().audio_max_seconds).shape == (128, 3000)


def test_from_preprocessor_config_keys():
    read = MediaOptions.from_preprocessor_config
    assert read(None) == read({}) == MediaOptions()
    assert read({"chunk_length": 45}).audio_max_seconds == 45.0
    assert read({"chunk_length": None}).audio_max_seconds == 30.0  # absent / null: the default
    sized = read({"size": {"shortest_edge": 100, "longest_edge": 20000}})
    assert (sized.image_min_pixels, sized.image_max_pixels) == (100, 20000)
    # min_pixels / max_pixels win over size.*, as in Qwen2VLImageProcessor
    both = read({"min_pixels": 200, "max_pixels": 30000, "size": {"shortest_edge": 100, "longest_edge": 20000}})
    assert (both.image_min_pixels, both.image_max_pixels) == (200, 30000)
    partial = read({"size": {"longest_edge": 5000}})
    assert (partial.image_min_pixels, partial.image_max_pixels) == (56 * 56, 5000)
    assert read({"size": "not a dict"}) == MediaOptions()


@pytest.mark.parametrize("config,field", [
    ({"chunk_length": 0}, "audio_max_seconds"),
    ({"chunk_length": "300"}, "audio_max_seconds"),
    ({"max_pixels": -1}, "image_max_pixels"),
    ({"size": {"shortest_edge": 2.5}}, "image_min_pixels"),
    ({"min_pixels": 10_000, "max_pixels": 5_000}, "image_min_pixels"),
])
def test_bad_preprocessor_config_names_the_file_and_field(config, field):
    with pytest.raises(ValueError, match=f"preprocessor_config.json: .*{field}"):
        MediaOptions.from_preprocessor_config(config)
    with pytest.raises(ValueError, match="must be a dict"):
        MediaOptions.from_preprocessor_config(["chunk_length", 300])


def test_replace():
    base = MediaOptions.from_preprocessor_config({"chunk_length": 300})
    opts = base.replace(image_max_pixels=512 * 28 * 28, video_fps=1)
    assert (opts.image_max_pixels, opts.video_fps, opts.audio_max_seconds) == (512 * 28 * 28, 1.0, 300.0)
    assert base.image_max_pixels == 28 * 28 * 1280 and base.video_fps == 2.0  # a copy
    # None means "not given" (API/CLI options left unset), so it never clears a field ...
    assert base.replace(video_fps=None, audio_max_seconds=None) == base
    # ... except audio, whose "no limit" is asked for explicitly
    assert base.replace(keep_all_audio=True).audio_max_seconds is None
    assert base.replace(keep_all_audio=False) == base
    with pytest.raises(ValueError, match="video_fps"):
        base.replace(video_fps=0)
    with pytest.raises(ValueError, match="video_max_pixels"):
        base.replace(video_min_pixels=10 ** 7)
    with pytest.raises(ValueError, match=r"unknown media option\(s\) \['fps'\].*video_fps"):
        base.replace(fps=1.0)
