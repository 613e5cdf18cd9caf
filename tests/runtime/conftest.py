"""Shared fixtures for the loading tests: one tiny checkpoint per session (several test files
read it) and tiny transformers-side configs for the reference comparisons."""
import dataclasses
import logging

import pytest

from omni_runtime.io.tiny_checkpoint import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0, preset="tiny")


@pytest.fixture(scope="session")
def tiny_7b_ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny7b") / "ckpt", seed=0, preset="7b-ratios")


@pytest.fixture(scope="session")
def sharp(tiny_ckpt, tmp_path_factory):
    """(path, stop ids): the tiny checkpoint with Thinker and Talker re-drawn at unit scale and
    stop ids unreachable (`helpers.sharpen_checkpoint`), for whole-turn comparisons."""
    from helpers import sharpen_checkpoint

    return sharpen_checkpoint(tiny_ckpt, tmp_path_factory.mktemp("omni") / "sharp", prefixes=("thinker.", "talker."))


@pytest.fixture(scope="session")
def omni(sharp):
    """One speaking `Omni` (fp32) on `sharp`, shared by the turn tests (it is made for sharing)."""
    from helpers import OMNI_ENGINE
    from omni_runtime.omni import Omni

    return Omni.from_checkpoint(sharp[0], dtype="fp32", engine_kwargs=OMNI_ENGINE, talker_engine_kwargs=OMNI_ENGINE)


@pytest.fixture(scope="session")
def hf():
    """transformers, imported once (the runtime itself never imports it)."""
    transformers = pytest.importorskip("transformers")
    # Tiny configs keep the 7B's token ids; transformers warns about them on every build.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    return transformers


def _hf_model_fields(cls):
    """The model-specific fields of a transformers config class (not PreTrainedConfig's)."""
    from transformers import PreTrainedConfig

    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    return [f.name for f in dataclasses.fields(cls) if f.name not in base]


def _hf_tiny_config_kwargs(variant: str = "small") -> dict:
    """Keyword arguments for transformers' Qwen2_5OmniConfig: tiny widths, 5.x rope style."""
    rope = lambda theta, m: {"rope_type": "default", "rope_theta": theta, "mrope_section": m}  # noqa: E731
    if variant == "small":
        text = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, rope_parameters=rope(1e6, [2, 3, 3]))
        talker = dict(vocab_size=64, embedding_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=8, rope_parameters=rope(1e6, [1, 1, 2]),
                      tts_codec_start_token_id=61, tts_codec_end_token_id=62, tts_codec_pad_token_id=60,
                      tts_codec_mask_token_id=63, tts_text_start_token_id=290, tts_text_end_token_id=291,
                      tts_text_pad_token_id=289)
        audio = dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, output_dim=32)
        vision = dict(depth=2, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32,
                      fullatt_block_indexes=[1])
        dit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16, emb_dim=16, num_embeds=60,
                   enc_emb_dim=8, enc_dim=8, enc_channels=[16, 16, 16, 16, 48], enc_attention_channels=8,
                   enc_se_channels=8, look_ahead_layers=[1], look_backward_layers=[0], ff_mult=3)
        bigvgan = dict(upsample_initial_channel=64)
        ids = dict(audio_token_index=280, image_token_index=281, video_token_index=282, audio_start_token_id=283,
                   audio_end_token_id=284, vision_start_token_id=285, vision_end_token_id=286, user_token_id=10)
    elif variant == "7b-ratios":
        # GQA 7:1, head_dim 128, mrope [16, 24, 24] at small width; a 3-block resnet BigVGAN.
        text = dict(vocab_size=400, hidden_size=896, intermediate_size=256, num_hidden_layers=1, num_attention_heads=7,
                    num_key_value_heads=1, rope_parameters=rope(1e6, [16, 24, 24]))
        talker = dict(vocab_size=96, embedding_size=896, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=3, num_key_value_heads=1, head_dim=128,
                      rope_parameters=rope(1e6, [16, 24, 24]), tts_codec_start_token_id=91,
                      tts_codec_end_token_id=92, tts_codec_pad_token_id=90, tts_codec_mask_token_id=94,
                      tts_text_start_token_id=390, tts_text_end_token_id=391, tts_text_pad_token_id=389)
        audio = dict(d_model=64, encoder_layers=1, encoder_attention_heads=1, encoder_ffn_dim=128, output_dim=896)
        vision = dict(depth=2, hidden_size=80, intermediate_size=96, num_heads=1, out_hidden_size=896,
                      fullatt_block_indexes=[0, 1], patch_size=16, temporal_patch_size=1, in_channels=3)
        dit = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=1, head_dim=64, emb_dim=32, num_embeds=80,
                   enc_emb_dim=24, enc_dim=16, enc_channels=[32, 32, 32, 64], enc_kernel_sizes=[5, 3, 3, 1],
                   enc_dilations=[1, 2, 3, 1], enc_attention_channels=8, enc_se_channels=8, enc_res2net_scale=4,
                   look_ahead_layers=[2], look_backward_layers=[0, 1])
        bigvgan = dict(upsample_initial_channel=128, upsample_rates=[4, 4, 2], upsample_kernel_sizes=[8, 8, 4],
                       resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3, 5], [1, 2, 4]])
        ids = dict(audio_token_index=380, image_token_index=381, video_token_index=382, audio_start_token_id=383,
                   audio_end_token_id=384, vision_start_token_id=385, vision_end_token_id=386, user_token_id=11)
    else:
        raise ValueError(variant)
    return dict(
        thinker_config=dict(text_config=text, audio_config=audio, vision_config=vision, **ids),
        talker_config=talker,
        token2wav_config=dict(dit_config=dit, bigvgan_config=bigvgan),
    )


@pytest.fixture(scope="session")
def hf_model_fields():
    """fields(cls): the model-specific field names of a transformers config class."""
    return _hf_model_fields


@pytest.fixture(scope="session")
def hf_tiny_config_kwargs():
    """kwargs(variant): Qwen2_5OmniConfig keyword arguments for "small" or "7b-ratios"."""
    return _hf_tiny_config_kwargs


@pytest.fixture
def one_thread():
    """Run a test's torch compute on one thread. On a loaded 2-core machine torch's two OpenMP
    threads spin against other processes and small CPU ops get ~50x slower (measured: tiny
    token2wav 0.05 s with 1 thread vs 4 s with 2 while another pytest ran)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Media files for the CLI and server tests: speech.wav, nan.wav, empty.wav, image.png,
    zero.png, not_an_image.png, clip.mp4 (with a soundtrack), silent.mp4."""
    import av
    import numpy as np
    import soundfile as sf
    from PIL import Image

    d = tmp_path_factory.mktemp("cli_inputs")
    t = np.arange(16000 * 5) / 16000
    # loudest at the start: streamed log-mel == offline log-mel (see omni_thinker's docstring)
    sf.write(d / "speech.wav", (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)).astype(np.float32), 16000)
    sf.write(d / "nan.wav", np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(d / "image.png")
    (d / "zero.png").write_bytes(b"")
    (d / "not_an_image.png").write_bytes(b"hello")
    rng = np.random.default_rng(1)
    for name, with_audio in (("clip.mp4", True), ("silent.mp4", False)):
        with av.open(str(d / name), "w") as c:
            v = c.add_stream("mpeg4", rate=4)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
            if with_audio:  # every stream before the first packet
                a = c.add_stream("aac", rate=16000)
                a.layout = "mono"
            for _ in range(8):  # 2 s at 4 fps
                frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
                for pk in v.encode(frame):
                    c.mux(pk)
            for pk in v.encode():
                c.mux(pk)
            if with_audio:
                sig = (0.3 * np.sin(np.arange(32000) * 2 * np.pi * 330 / 16000)).astype(np.float32)
                for i in range(0, 32000, 1024):
                    frame = av.AudioFrame.from_ndarray(sig[None, i:i + 1024], format="fltp", layout="mono")
                    frame.rate, frame.pts = 16000, i
                    for pk in a.encode(frame):
                        c.mux(pk)
                for pk in a.encode():
                    c.mux(pk)
    return d
