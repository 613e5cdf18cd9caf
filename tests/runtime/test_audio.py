"""omni_runtime.media audio: loading (audio), resampling (resample), log-mel features offline (mel)
and streaming (streaming_mel) against transformers' WhisperFeatureExtractor as Qwen2.5-Omni's
processor calls it, with the extractor's default chunk_length (30 s) and the published one (300 s)."""
import functools
import warnings

import numpy as np
import pytest
import soundfile
import torch

from omni_runtime.io.placeholders import audio_token_count
from omni_runtime.media.audio import load_audio
from omni_runtime.media.mel import log_mel_features, mel_filter_bank, num_mel_frames
from omni_runtime.media.resample import Resampler, StreamingResampler, resample
from omni_runtime.media.streaming_mel import StreamingMel

MEL_ATOL = 1e-5  # stated tolerance vs transformers (fp32, CPU); measured <= 1.2e-7
N_SAMPLES = 30 * 16000  # the extractor's default chunk_length (30 s), this module's default too


@functools.lru_cache(maxsize=None)
def whisper_fe(chunk_length):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=chunk_length,
                                   n_fft=400)


@pytest.fixture(scope="module")
def whisper():
    return whisper_fe(30)


def reference(fe, wav):
    """What Qwen2_5OmniProcessor._process_audio feeds the model for one audio."""
    out = fe(np.asarray(wav, dtype=np.float32), sampling_rate=16000, padding="max_length", return_attention_mask=True,
             return_tensors="pt")
    n = int(out["attention_mask"][0].sum())
    return out["input_features"][0, :, :n]


def noise(n, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def sine(n, freq=440.0, sr=16000, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def speech_like(n, seed=0, sr=16000):
    if n > 4 * sr:  # long: repeat a 4 s stretch (synthesis costs ~1.5 s per 30 s)
        return np.tile(speech_like(4 * sr, seed, sr), -(-n // (4 * sr)))[:n]
    return _speech_like(n, seed, sr)


def _speech_like(n, seed=0, sr=16000):
    """Voiced syllables (harmonics of a wobbling f0 under three formant bumps, 4 Hz syllable
    envelope) separated by pauses holding a -70 dB noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t) + rng.standard_normal(n).cumsum() * 0.01
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = [(700 + 200 * np.sin(2 * np.pi * 3 * t), 90), (1200 + 400 * np.sin(2 * np.pi * 2.1 * t), 110),
                (2600, 160)]
    wav = np.zeros(n)
    for k in range(1, int(7500 / 140)):
        fk = k * f0
        amp = sum(np.exp(-0.5 * ((fk - fc) / bw) ** 2) for fc, bw in formants) + 0.01
        wav += np.where(fk < 7800, amp, 0) * np.sin(k * phase) / k ** 0.5
    envelope = np.clip(np.sin(2 * np.pi * 2.0 * t), 0, None) ** 0.7
    wav = 0.3 * wav / np.abs(wav).max() * envelope + 3e-4 * rng.standard_normal(n)
    return wav.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# features vs transformers

def test_mel_filter_bank_equals_transformers(whisper):
    ours = mel_filter_bank()
    assert ours.shape == (128, 201) and ours.dtype == torch.float32
    assert torch.equal(ours, torch.from_numpy(whisper.mel_filters).to(torch.float32).T)


@pytest.mark.parametrize("kind,n", [(kind, n) for kind in ("noise", "sine", "speech") for n in (1, 150, 201, 16037, 37920)]
                         + [("speech", 479999)])
def test_log_mel_equals_whisper_feature_extractor(whisper, kind, n):
    wav = {"noise": noise(n, seed=n), "sine": sine(n, freq=997.0), "speech": speech_like(n, seed=n)}[kind]
    ref = reference(whisper, wav)
    ours = log_mel_features(wav)
    assert ours.shape == ref.shape == (128, num_mel_frames(n)) == (128, -(-n // 160))
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= MEL_ATOL


def test_log_mel_batch_rows_and_input_types(whisper):
    a, b = speech_like(23456, seed=1), noise(8001, seed=2)
    out = whisper([a, b], sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt")
    for i, wav in enumerate((a, b)):
        n = int(out["attention_mask"][i].sum())
        for inp in (wav, torch.from_numpy(wav), wav.astype(np.float64), wav.tolist()):
            assert (log_mel_features(inp) - out["input_features"][i, :, :n]).abs().max().item() <= MEL_ATOL


def test_global_max_outside_returned_frames(whisper):
    """The loudest STFT frame can lie after the last returned frame (its window still overlaps the
    audio): it must set the floor, as in the 30 s padded reference. Also near 30 s, where the
    reference's right reflect padding mirrors real samples."""
    for n in (16000, 16100, N_SAMPLES - 90):
        wav = noise(n, seed=n, scale=1e-4)
        wav[-3:] = [0.9, -0.9, 0.9]
        ref = reference(whisper, wav)
        assert (log_mel_features(wav) - ref).abs().max().item() <= MEL_ATOL


# audio tokens for (chunk_length, seconds): cut at 30 s with the class default, kept with 300
LENGTH_CASES = {(30, 1.0): 25, (30, 29.99): 750, (30, 30.0): 750, (30, 31.0): 750, (30, 45.0): 750,
                (300, 1.0): 25, (300, 29.99): 750, (300, 30.0): 750, (300, 31.0): 775, (300, 45.0): 1125}


@pytest.mark.parametrize("chunk,seconds", list(LENGTH_CASES))
def test_chunk_length_equals_whisper_feature_extractor(chunk, seconds):
    """Frames, values and audio tokens equal WhisperFeatureExtractor(chunk_length=chunk), offline
    and streamed in 2 s pieces, for audio shorter than, exactly as long as and longer than 30 s."""
    n = round(seconds * 16000)
    wav = noise(n, seed=n)
    ref = reference(whisper_fe(chunk), wav)
    frames = min(-(-n // 160), chunk * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cut at chunk_length warns
        ours = log_mel_features(wav, chunk_length=chunk)
        streamed, stream = stream_all(wav, two_second_pieces(n), chunk_length=chunk)
    assert ours.shape == ref.shape == streamed.shape == (128, frames) == (128, num_mel_frames(n, chunk))
    assert (ours - ref).abs().max().item() <= MEL_ATOL
    assert (streamed - ref).abs().max().item() <= stream.max_deviation + MEL_ATOL
    assert (stream.features() - ref).abs().max().item() <= MEL_ATOL
    assert audio_token_count(frames) == LENGTH_CASES[chunk, seconds]


def test_exactly_30s_last_frame_depends_on_chunk_length():
    """At exactly 30.0 s the last frame's window reaches past the audio: reflect padding of real
    samples with chunk_length 30, zeros with 300. Only that frame differs."""
    wav = noise(N_SAMPLES, seed=1)
    at30, at300 = log_mel_features(wav, chunk_length=30), log_mel_features(wav, chunk_length=300.0)
    diff = (at30 - at300).abs().amax(dim=0)
    assert diff[-1] > 1e-3 and diff[:-1].max() == 0
    assert (at300 - reference(whisper_fe(300), wav)).abs().max().item() <= MEL_ATOL


def test_long_audio_cut_at_chunk_length_or_kept_with_none():
    wav = speech_like(N_SAMPLES + 12345, seed=3)
    with pytest.warns(UserWarning, match="truncated to chunk_length=30"):
        ours = log_mel_features(wav)
    assert ours.shape == (128, 3000)
    assert (ours - reference(whisper_fe(30), wav)).abs().max().item() <= MEL_ATOL
    # None keeps everything: any chunk_length that leaves >= 25 ms of padding after the audio
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = log_mel_features(wav, chunk_length=None)
        assert torch.equal(full, log_mel_features(wav, chunk_length=300))
        assert torch.equal(log_mel_features(wav[:16000], chunk_length=None), log_mel_features(wav[:16000]))
    ref = reference(whisper_fe(300), wav)
    assert full.shape == ref.shape == (128, -(-(N_SAMPLES + 12345) // 160))
    assert (full - ref).abs().max().item() <= MEL_ATOL


@pytest.mark.parametrize("chunk", [30, 300])
def test_processor_end_to_end(monkeypatch, chunk):
    """Qwen2_5OmniProcessor itself (tiny word-level tokenizer, no video processor: torchvision is
    not installed) -- proves the kwargs it passes: max_length padding, the cut at chunk_length,
    the mask, and the audio tokens it puts in the prompt."""
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast, Qwen2_5OmniProcessor, Qwen2VLImageProcessorPil

        names = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
                 "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                 "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
        tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "hi", *names.values()])}, "[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, extra_special_tokens=names)
        monkeypatch.setattr(Qwen2_5OmniProcessor, "check_argument_for_proper_class", lambda *a: None)
        proc = Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessorPil(), video_processor=None,
                                    feature_extractor=whisper_fe(chunk), tokenizer=tok)
    except Exception as e:  # pragma: no cover - depends on the installed transformers
        pytest.skip(f"cannot build Qwen2_5OmniProcessor here: {e}")
    audios = [speech_like(40037, seed=4), noise(31 * 16000, seed=5)]
    out = proc(text=["hi <|AUDIO|> <|AUDIO|>"], audio=audios, return_tensors="pt")
    # ceil(40037 / 160); 31 s cut at 30 s or kept
    assert out["feature_attention_mask"].sum(-1).tolist() == [251, 3000 if chunk == 30 else 3100]
    tokens = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, wav in enumerate(audios):
            ours = log_mel_features(wav, chunk_length=chunk)
            assert (ours - out["input_features"][i, :, :ours.shape[1]]).abs().max().item() <= MEL_ATOL
            tokens += audio_token_count(ours.shape[1])
    assert int((out["input_ids"] == tok.convert_tokens_to_ids("<|AUDIO|>")).sum()) == tokens == 63 + (750 if chunk == 30 else 775)


# ---------------------------------------------------------------------------------------------
# streaming features

def stream_all(wav, pieces, **kwargs):
    stream = StreamingMel(**kwargs)
    outs, i = [], 0
    for size in pieces:
        out = stream.push(wav[i:i + size])
        assert out.shape[0] == 128
        outs.append(out)
        i += size
    assert i >= len(wav)
    outs.append(stream.finish())
    return torch.cat(outs, dim=1), stream


def two_second_pieces(n):
    return [32000] * (-(-n // 32000))


@pytest.mark.parametrize("n", [150, 32000 * 3 + 77, 32000 * 7])
def test_streaming_2s_pieces_equal_offline(n):
    wav = speech_like(n, seed=n)
    wav[:120] = 0.8  # the loudest frames arrive first: running max == final max from the start
    offline = log_mel_features(wav)
    streamed, stream = stream_all(wav, two_second_pieces(n))
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-6
    assert stream.max_deviation == 0.0
    assert (stream.features() - offline).abs().max().item() <= 1e-6


def test_streaming_emits_each_frame_when_its_window_is_complete():
    wav = noise(32000 * 2, seed=7)
    stream = StreamingMel()
    assert stream.push(wav[:200]).shape[1] == 0  # frame 0 needs samples 1..200 for its reflect padding
    assert stream.push(wav[200:201]).shape[1] == 1
    assert stream.push(wav[201:32000]).shape[1] == 198  # frame t needs samples < 160 t + 200: t <= 198
    assert stream.push(wav[32000:]).shape[1] == 200
    assert stream.finish().shape[1] == 1
    assert stream.emitted == 400


def test_streaming_random_pieces_and_late_peak():
    """Later louder audio raises the global max: earlier frames were floored lower. The
    difference is confined to bins > 80 dB below the final max, reported exactly by
    max_deviation, and features() is the exact offline result."""
    rng = np.random.default_rng(0)
    wav = speech_like(32000 * 4 + 999, seed=8) * 1e-3
    wav[-20000:] *= 1e3  # the loud part comes last
    offline = log_mel_features(wav)
    pieces = list(rng.integers(1, 9000, size=200))
    streamed, stream = stream_all(wav, pieces)
    diff = (streamed - offline).abs()
    assert streamed.shape == offline.shape
    assert diff.max().item() > 0.01  # the case is real
    assert abs(diff.max().item() - stream.max_deviation) <= 1e-5
    raw_offline = offline * 4 - 4  # = max(raw, g - 8): where it differs, the offline value is the floor
    assert bool((raw_offline[diff > 1e-6] <= raw_offline.max() - 8 + 1e-5).all())
    assert (stream.features() - offline).abs().max().item() <= 1e-6


def test_streaming_stereo_pieces_are_channels_first():
    stereo = np.stack([noise(4000, seed=20), noise(4000, seed=21, scale=0.3)])
    stereo[:, :5] = 0.9
    offline = log_mel_features(load_audio(stereo))
    stream = StreamingMel()
    outs = [stream.push(stereo[:, i:i + 1]) for i in range(300)]  # (2, 1) pieces
    outs += [stream.push(stereo[:, 300:]), stream.finish()]
    assert (torch.cat(outs, dim=1) - offline).abs().max().item() <= 1e-6


def test_streaming_cuts_at_chunk_length():
    wav = noise(N_SAMPLES + 50000, seed=9)
    with pytest.warns(UserWarning, match="truncated"):
        offline = log_mel_features(wav)
        streamed, stream = stream_all(wav, two_second_pieces(len(wav)))
    assert streamed.shape == offline.shape == (128, 3000)
    assert (streamed - offline).abs().max().item() <= 1e-6
    assert stream.finished  # completed itself at 30 s: finish() returned nothing more
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamed, stream = stream_all(wav, two_second_pieces(len(wav)), chunk_length=None)
    assert stream.received == len(wav)
    assert (stream.features() - log_mel_features(wav, chunk_length=None)).abs().max().item() <= 1e-6
    assert streamed.shape == (128, -(-len(wav) // 160))


def test_streaming_with_resampling_equals_offline():
    sr = 44100
    wav = speech_like(int(sr * 3.3), seed=10, sr=sr)
    wav[:300] = 0.9  # loudest first (otherwise the running-max floor differs, see above)
    offline = log_mel_features(load_audio(wav, sr))
    streamed, _ = stream_all(wav, [2 * sr] * 2, sample_rate=sr)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-4  # resampler sums in another grouping (~2e-6 on samples)


# ---------------------------------------------------------------------------------------------
# resampling

@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_sine_frequency_and_amplitude(sr):
    n = int(sr * 0.8) + 3
    y = resample(sine(n, 1000.0, sr, amp=0.5), sr).numpy()
    assert len(y) == -(-n * 16000 // sr)
    edge = Resampler(sr).width * 16000 // sr + 10
    ideal = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(len(y)) / 16000)
    assert np.abs(y[edge:-edge] - ideal[edge:-edge]).max() < 1e-5
    spectrum = np.abs(np.fft.rfft(y[edge:-edge] * np.hanning(len(y) - 2 * edge)))
    peak_hz = np.argmax(spectrum) * 16000 / (len(y) - 2 * edge)
    assert abs(peak_hz - 1000.0) < 16000 / (len(y) - 2 * edge)


def test_resample_anti_aliasing_and_passband():
    sr = 48000
    y = resample(sine(sr, 12000.0, sr), sr).numpy()  # above the new Nyquist: removed, not folded to 4 kHz
    assert np.abs(y[1000:-1000]).max() < 1e-5
    y = resample(sine(sr, 6000.0, sr, amp=1.0), sr).numpy()
    assert abs(np.abs(y[1000:-1000]).max() - 1.0) < 1e-4


def band_limited(n, sr, seed, max_hz=3500.0):
    """A periodic noise of n samples with no energy above max_hz (FFT-masked), and its exact
    band-limited resampling to 16 kHz (Fourier-series evaluation; n * 16000 / sr must be whole)."""
    spec = np.fft.rfft(noise(n, seed=seed))
    spec[np.fft.rfftfreq(n, 1 / sr) > max_hz] = 0
    x = np.fft.irfft(spec, n)
    m = n * 16000 // sr
    out = np.zeros(m // 2 + 1, dtype=complex)
    k = min(len(spec), len(out))
    out[:k] = spec[:k] * (m / n)
    return x.astype(np.float32), np.fft.irfft(out, m)


@pytest.mark.parametrize("sr", [8000, 22050, 44100])
def test_resample_equals_ideal_band_limited(sr):
    x, ideal = band_limited(sr, sr, seed=sr)
    ours = resample(x, sr).numpy()
    assert len(ours) == len(ideal)
    inner = slice(Resampler(sr).width * 16000 // sr + 10, -(Resampler(sr).width * 16000 // sr + 10))  # no edge zeros
    assert np.abs(ours[inner] - ideal[inner]).max() / np.abs(ideal).max() < 2e-5
    signal = pytest.importorskip("scipy.signal")  # scipy's resample_poly (Kaiser beta 5): looser
    g = np.gcd(sr, 16000)
    ref = signal.resample_poly(x.astype(np.float64), 16000 // g, sr // g)
    assert len(ref) == len(ours)
    assert np.abs(ours[inner] - ref[inner]).max() / np.abs(ref).max() < 1e-2


def test_resample_direct_equals_polyphase_and_identity():
    x = torch.from_numpy(noise(11025 // 2 + 13, seed=11))
    a = Resampler(11025, polyphase=True)(x)
    b = Resampler(11025, polyphase=False)(x)
    assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
    assert not Resampler(16001).polyphase  # 16000 phases: taps evaluated per output
    y = resample(noise(16001, seed=12), 16001)
    assert y.shape == (16000,)
    w = noise(1000, seed=13)
    assert torch.equal(resample(w, 16000), torch.from_numpy(w))


@pytest.mark.parametrize("sr,polyphase", [(44100, True), (8000, True), (22050, False)])
def test_streaming_resampler_equals_offline(sr, polyphase):
    rng = np.random.default_rng(sr)
    x = noise(sr // 2 + 77, seed=sr)
    stream = StreamingResampler(sr, polyphase=polyphase)
    outs, i = [], 0
    while i < len(x):
        size = int(rng.integers(1, 4000))
        outs.append(stream.push(x[i:i + size]))
        i += size
    outs.append(stream.finish())
    ref = Resampler(sr, polyphase=polyphase)(torch.from_numpy(x))
    got = torch.cat(outs)
    assert got.shape == ref.shape and (got - ref).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------
# loading

def test_load_audio_file_stereo_resampled(tmp_path):
    sr = 44100
    left, right = speech_like(sr, seed=14, sr=sr), noise(sr, seed=15, scale=0.05)
    stereo = np.stack([left, right], axis=1)
    for name, subtype in (("a.wav", "PCM_16"), ("a.flac", "PCM_24"), ("a.wav", "FLOAT")):
        path = tmp_path / name
        soundfile.write(path, stereo, sr, subtype=subtype)
        data, _ = soundfile.read(path, dtype="float32")
        expected = resample(data.mean(axis=1), sr)
        got = load_audio(path)
        assert got.dtype == torch.float32 and got.dim() == 1 and got.shape == expected.shape
        assert torch.equal(got, expected)
        assert torch.equal(load_audio(str(path), sample_rate=sr), expected)
        with open(path, "rb") as f:
            assert torch.equal(load_audio(f), expected)
    mono = tmp_path / "m.wav"
    soundfile.write(mono, left[:16000], 16000, subtype="FLOAT")
    assert torch.equal(load_audio(mono), torch.from_numpy(left[:16000]))


def test_load_audio_arrays():
    x = noise(3000, seed=16)
    assert torch.equal(load_audio(x), torch.from_numpy(x))  # default 16 kHz: untouched
    two = np.stack([x, -x * 0.5])
    expected = torch.from_numpy(two).mean(0)
    assert torch.allclose(load_audio(two), expected)  # channels first
    assert torch.allclose(load_audio(two.T.copy()), expected)  # channels last
    pcm = (x * 32767).astype(np.int16)
    assert torch.allclose(load_audio(pcm), torch.from_numpy(pcm.astype(np.float32) / 32768))
    assert load_audio(x, sample_rate=8000).shape == (6000,)
    assert load_audio(torch.from_numpy(x), sample_rate=48000.0).shape == (1000,)


# ---------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("bad,match", [
    (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN/inf"),
    (np.array([0.1, np.inf], dtype=np.float32), "NaN/inf"),
    (np.zeros(0, dtype=np.float32), "empty"),
    (np.zeros((2, 0), dtype=np.float32), "empty"),
    (np.zeros((1, 2, 100), dtype=np.float32), "1-D"),
    (np.float32(0.5), "1-D"),
    (np.array([1 + 1j, 2]), "real"),
    ("not audio".encode(), "numpy array"),
])
def test_bad_waveforms_raise(bad, match):
    def stream(w):  # an empty piece is fine for a stream; a stream of nothing is not
        s = StreamingMel()
        s.push(w)
        s.finish()

    for fn in (load_audio, log_mel_features, stream, lambda w: resample(w, 44100)):
        with pytest.raises(ValueError, match=match):
            fn(bad)


@pytest.mark.parametrize("rate", [0, -16000, float("nan"), float("inf"), 44100.5, True, "16000"])
def test_bad_sample_rates_raise(rate):
    x = noise(100)
    with pytest.raises(ValueError, match="Hz"):
        load_audio(x, sample_rate=rate)
    with pytest.raises(ValueError, match="Hz"):
        StreamingMel(sample_rate=rate)
    with pytest.raises(ValueError, match="Hz"):
        Resampler(rate)


def test_other_errors(tmp_path):
    with pytest.raises(ValueError, match="float waveform"):
        log_mel_features(np.zeros(100, dtype=np.int16))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not a wav file at all")
    with pytest.raises(ValueError, match="cannot decode"):
        load_audio(bad)
    good = tmp_path / "g.wav"
    soundfile.write(good, noise(800), 8000)
    with pytest.raises(ValueError, match="8000 Hz"):
        load_audio(good, sample_rate=16000)
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")
    nan_file = tmp_path / "nan.wav"
    soundfile.write(nan_file, np.array([0.0, np.nan, 0.1], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN"):
        load_audio(nan_file)
    stream = StreamingMel()
    with pytest.raises(ValueError, match="empty"):
        stream.finish()
    stream = StreamingMel()
    stream.push(noise(500))
    stream.finish()
    with pytest.raises(ValueError, match="after finish"):
        stream.push(noise(10))
    with pytest.raises(ValueError, match="after finish"):
        StreamingMel().features()
    with pytest.raises(ValueError):
        num_mel_frames(0)
    for bad in (0, -30, float("nan"), float("inf"), True, "30", 0.001):
        with pytest.raises(ValueError, match="chunk_length"):
            log_mel_features(noise(100), chunk_length=bad)
        with pytest.raises(ValueError, match="chunk_length"):
            StreamingMel(chunk_length=bad)
        with pytest.raises(ValueError, match="chunk_length"):
            num_mel_frames(100, chunk_length=bad)


def test_num_mel_frames_matches_processor_lengths():
    assert [num_mel_frames(n) for n in (1, 160, 161, 16000, N_SAMPLES, N_SAMPLES + 1)] == [1, 1, 2, 100, 3000, 3000]
    assert num_mel_frames(N_SAMPLES + 321, chunk_length=300) == num_mel_frames(N_SAMPLES + 321, None) == 3003
    assert num_mel_frames(10 ** 8, chunk_length=300) == 30000
    assert num_mel_frames(16000, chunk_length=0.5055) == 50  # P = 8088 samples: P // 160 frames
