"""omni_runtime.media.audio: loading, resampling, log-mel features (offline and streaming) against
transformers' WhisperFeatureExtractor as Qwen2.5-Omni's processor calls it."""
import warnings

import numpy as np
import pytest
import soundfile
import torch

from omni_runtime.media import audio as A
from omni_runtime.media.audio import (N_SAMPLES, Resampler, StreamingMel, StreamingResampler, load_audio, log_mel_features,
                                mel_filter_bank, num_mel_frames, resample)

MEL_ATOL = 1e-5  # stated tolerance vs transformers (fp32, CPU); measured <= 1.2e-7


@pytest.fixture(scope="module")
def whisper():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400)


def reference(fe, wav, truncation=True):
    """What Qwen2_5OmniProcessor._process_audio feeds the model for one audio."""
    out = fe(np.asarray(wav, dtype=np.float32), sampling_rate=16000, padding="max_length", return_attention_mask=True,
             return_tensors="pt", truncation=truncation)
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


def test_long_audio_truncated_at_30s_like_processor(whisper):
    wav = speech_like(N_SAMPLES + 12345, seed=3)
    with pytest.warns(UserWarning, match="truncated"):
        ours = log_mel_features(wav)
    ref = reference(whisper, wav)
    assert ours.shape == ref.shape == (128, 3000)
    assert (ours - ref).abs().max().item() <= MEL_ATOL
    # truncate=False == the extractor with truncation=False: one STFT, one max, N // 160 frames
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = log_mel_features(wav, truncate=False)
    ref_full = reference(whisper, wav, truncation=False)
    assert full.shape == ref_full.shape == (128, (N_SAMPLES + 12345) // 160)
    assert (full - ref_full).abs().max().item() <= MEL_ATOL


def test_processor_end_to_end(monkeypatch, whisper):
    """Qwen2_5OmniProcessor itself (tiny word-level tokenizer, no video processor: torchvision is
    not installed) -- proves the kwargs it passes: max_length padding, 30 s truncation, the mask."""
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
                                    feature_extractor=whisper, tokenizer=tok)
    except Exception as e:  # pragma: no cover - depends on the installed transformers
        pytest.skip(f"cannot build Qwen2_5OmniProcessor here: {e}")
    audios = [speech_like(40037, seed=4), noise(N_SAMPLES + 1601, seed=5)]
    out = proc(text=["hi <|AUDIO|> <|AUDIO|>"], audio=audios, return_tensors="pt")
    assert out["feature_attention_mask"].sum(-1).tolist() == [251, 3000]  # ceil(40037 / 160); cut at 30 s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, wav in enumerate(audios):
            ours = log_mel_features(wav)
            assert (ours - out["input_features"][i, :, :ours.shape[1]]).abs().max().item() <= MEL_ATOL


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


def test_streaming_truncates_at_30s():
    wav = noise(N_SAMPLES + 50000, seed=9)
    with pytest.warns(UserWarning, match="truncated"):
        offline = log_mel_features(wav)
        streamed, stream = stream_all(wav, two_second_pieces(len(wav)))
    assert streamed.shape == offline.shape == (128, 3000)
    assert (streamed - offline).abs().max().item() <= 1e-6
    assert stream.finished


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


def test_num_mel_frames_matches_processor_lengths():
    assert [num_mel_frames(n) for n in (1, 160, 161, 16000, N_SAMPLES, N_SAMPLES + 1)] == [1, 1, 2, 100, 3000, 3000]
    assert num_mel_frames(N_SAMPLES + 321, truncate=False) == (N_SAMPLES + 321) // 160
    assert A.MAX_FRAMES == 3000
