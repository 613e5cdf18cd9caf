"""omni_kernels.transformers: transformers' Qwen2.5-Omni / Qwen2-VL / Qwen2.5-VL patched with our kernels
compute what the unpatched models do.

Tiny random models (the "7b-ratios" config: head_dim 128 Thinker and Talker, audio head_dim 64,
vision 80, DiT 64 -- the kernels' head dims; vision block 0 windowed, block 1 full; the DiT's codec
table as large as the Talker's vocabulary, so any code decodes), every nn.Linear re-drawn at
1 / sqrt(fan_in) so attention scores are O(1) and a wrong rotation or mask would show. The Triton
path is forced (`use_backend("triton")`, run by the interpreter on CPU). The call counters must
equal the number of layer calls each part makes, so a patch that serves nothing (or only some
layers) fails; decode steps must be exactly the handed-back calls.
"""
import copy
import importlib
import subprocess
import sys

import pytest
import torch

from helpers import keep_talker_attention_mask, rel_err

import omni_kernels
import omni_kernels.transformers as okt

THINKER_TOKENS, CODES, DIT_STEPS = 3, 26, 2  # 26 codes = 52 mel frames = 3 DiT blocks (one partial); one RK4 step
DIT_EVALS = (DIT_STEPS - 1) * 4
PROMPTS = ("text", "audio", "image", "video")


@pytest.fixture(autouse=True)
def _clean(one_thread):
    okt.unpatch()
    okt.reset_kernel_calls()
    yield
    okt.unpatch()


@pytest.fixture(scope="module")
def modeling(hf):
    return importlib.import_module("transformers.models.qwen2_5_omni.modeling_qwen2_5_omni")


def _sharpen(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * module.in_features ** -0.5)
    return model.eval()


@pytest.fixture(scope="module")
def omni(hf, hf_tiny_config_kwargs):
    kw = hf_tiny_config_kwargs("7b-ratios")
    kw["thinker_config"]["vision_config"]["fullatt_block_indexes"] = [1]
    kw["token2wav_config"]["dit_config"]["num_embeds"] = kw["talker_config"]["vocab_size"]
    torch.manual_seed(0)
    model = _sharpen(hf.Qwen2_5OmniForConditionalGeneration(hf.Qwen2_5OmniConfig(**kw)))
    dit = model.config.token2wav_config.dit_config
    model.speaker_map["Chelsie"] = {"bos_token": 7, "cond": torch.randn(dit.enc_emb_dim),
                                    "ref_mel": torch.randn(1, 40, dit.mel_dim)}
    return keep_talker_attention_mask(model)


def _prompt(model, kind: str) -> dict:
    """generate / forward inputs: 6 text ids around one audio (450 mel frames: 2-s chunks of 100,
    100 and 25 tokens), image (12 x 16 patches: windows of 3 x 3 merged units, some partial) or
    video (2 frames of 6 x 16 patches); 192 encoder tokens, two mask blocks of 128."""
    tc = model.config.thinker_config
    gen = torch.Generator().manual_seed(1)
    ids, inputs = [1, 2, 3], {}
    if kind == "audio":
        frames = 450
        n = int(model.thinker.model.audio_tower._get_feat_extract_output_lengths(torch.tensor(frames))[1])
        ids += [tc.audio_start_token_id] + [tc.audio_token_index] * n + [tc.audio_end_token_id]
        inputs = dict(input_features=torch.randn(1, 128, frames, generator=gen),
                      feature_attention_mask=torch.ones(1, frames, dtype=torch.long))
    elif kind in ("image", "video"):
        vc = tc.vision_config
        grid = torch.tensor([[1, 12, 16]] if kind == "image" else [[2, 6, 16]])
        pixels = torch.randn(int(grid.prod()), vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2,
                             generator=gen)
        token = tc.image_token_index if kind == "image" else tc.video_token_index
        ids += [tc.vision_start_token_id] + [token] * (int(grid.prod()) // vc.spatial_merge_size ** 2) \
            + [tc.vision_end_token_id]
        inputs = (dict(pixel_values=pixels, image_grid_thw=grid) if kind == "image" else
                  dict(pixel_values_videos=pixels, video_grid_thw=grid, video_second_per_grid=torch.tensor([1.0])))
    ids = torch.tensor([ids + [4, 5, 6]])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs)


def _run(model, kind: str) -> dict:
    """Thinker logits of the prompt, then a whole spoken generate: text ids, Talker codes, waveform."""
    inputs = _prompt(model, kind)
    codes = []
    t2w_forward = model.token2wav.forward

    def keep_codes(code, **kwargs):
        codes.append(code.clone())
        return t2w_forward(code, **kwargs)

    generate_inputs = {("thinker_" + k if k.startswith("pixel_values") else k): v for k, v in inputs.items()}
    model.token2wav.forward = keep_codes
    try:
        with torch.no_grad():
            logits = model.thinker(**inputs).logits
            torch.manual_seed(0)  # the DiT's initial noise
            ids, wav = model.generate(
                **generate_inputs, thinker_max_new_tokens=THINKER_TOKENS, thinker_do_sample=False,
                talker_max_new_tokens=CODES, talker_min_new_tokens=CODES, talker_do_sample=False,
                token2wav_num_steps=DIT_STEPS)
    finally:
        del model.token2wav.forward
    return dict(logits=logits, ids=ids, codes=codes[0], wav=wav)


def _layers(model) -> dict:
    tc = model.config.thinker_config
    return dict(thinker=tc.text_config.num_hidden_layers, talker=model.config.talker_config.num_hidden_layers,
                audio=tc.audio_config.encoder_layers, vision=tc.vision_config.depth,
                dit=model.config.token2wav_config.dit_config.num_hidden_layers)


@pytest.mark.parametrize("kind", PROMPTS)
def test_patched_omni_equals_unpatched(omni, kind):
    ref = _run(omni, kind)
    okt.apply_to_qwen2_5_omni()
    with omni_kernels.use_backend("triton"):
        out = _run(omni, kind)
    assert rel_err(out["logits"], ref["logits"]) < 1e-5
    assert torch.equal(out["ids"], ref["ids"]) and torch.equal(out["codes"], ref["codes"])
    assert ref["codes"].shape[-1] == CODES and rel_err(out["wav"], ref["wav"]) < 1e-4
    n = _layers(omni)
    encoder_calls = 2  # the logits forward and generate's prefill
    assert okt.kernel_calls() == {
        "attention": encoder_calls * n["thinker"] + n["talker"],  # every prefill
        **({"audio": encoder_calls * n["audio"]} if kind == "audio" else {}),
        **({"vision": encoder_calls * n["vision"]} if kind in ("image", "video") else {}),
        "dit": DIT_EVALS * n["dit"],
    }
    # Only decode steps (a filled DynamicCache) went back to transformers' attention.
    assert okt.fallback_calls() == {"attention": (THINKER_TOKENS - 1) * n["thinker"] + (CODES - 1) * n["talker"]}


def test_unpatch_restores_bit_identical_behaviour(omni, modeling):
    classes = (modeling.Qwen2_5OmniAttention, modeling.Qwen2_5OmniRotaryEmbedding, modeling.Qwen2_5OmniAudioAttention,
               modeling.Qwen2_5OmniVisionAttention, modeling.DiTDecoderLayer, modeling.Qwen2_5OmniDiTRotaryEmbedding)
    originals = [cls.__dict__["forward"] for cls in classes]
    ref = _run(omni, "audio")
    okt.apply_to_qwen2_5_omni()
    okt.apply_to_qwen2_5_omni()  # idempotent: one layer of patching, counted once per call
    assert all(getattr(cls.forward, "__omni_kernels_original__") is f for cls, f in zip(classes, originals))
    _run(omni, "audio")
    once = okt.kernel_calls()
    assert once["attention"] == 2 * _layers(omni)["thinker"] + _layers(omni)["talker"]
    okt.unpatch()
    assert all(cls.__dict__["forward"] is f for cls, f in zip(classes, originals))
    out = _run(omni, "audio")
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    assert okt.kernel_calls() == once  # nothing ran through our kernels after unpatch


def _ours(module) -> bool:
    return hasattr(getattr(module.__dict__.get("forward"), "__func__", None), "__omni_kernels_original__")


def test_instance_patch_and_options(omni):
    hooked = omni.talker.model.layers[0].self_attn
    hooked.forward = hooked.forward  # another instance forward, as accelerate's hooks leave one
    with pytest.raises(ValueError, match="already has a forward bound"):
        okt.apply_to_qwen2_5_omni(omni)
    del hooked.forward
    assert not any(_ours(m) for m in omni.modules())  # nothing half-applied
    ref = _run(omni, "image")
    okt.apply_to_qwen2_5_omni(omni, dit=False, audio=False)
    okt.apply_to_qwen2_5_omni(omni, dit=False, audio=False)  # idempotent
    vision_attention = omni.thinker.model.visual.blocks[0].attn
    assert _ours(vision_attention) and not _ours(omni.token2wav.code2wav_dit_model.transformer_blocks[0])
    assert not hasattr(type(vision_attention).forward, "__omni_kernels_original__")  # the classes untouched
    out = _run(omni, "image")
    assert rel_err(out["logits"], ref["logits"]) < 1e-5 and torch.equal(out["codes"], ref["codes"])
    assert set(okt.kernel_calls()) == {"attention", "vision"}
    okt.unpatch(omni)
    assert not any("forward" in m.__dict__ for m in omni.modules())
    out = _run(omni, "image")
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_calls_the_kernels_cannot_serve_run_the_original(omni):
    """A padded batch, recorded attention weights (eager), autograd: handed back, results identical.
    Unpadded batches under sdpa (no mask) and eager (a 4-D float causal mask) are served, also with
    (4, B, L) position ids (text positions first, which 5.24 uses for no mask here)."""
    thinker = omni.thinker
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    padded = torch.ones_like(ids)
    padded[1, :4] = 0
    text_positions = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, -1)
    positions = torch.cat([text_positions[None], (text_positions + 3).expand(3, -1, -1)])
    for implementation in ("sdpa", "eager"):
        thinker.set_attn_implementation(implementation)
        cases = [(dict(input_ids=ids), True, torch.no_grad),
                 (dict(input_ids=ids, position_ids=positions), True, torch.no_grad),
                 (dict(input_ids=ids, attention_mask=padded), False, torch.no_grad),
                 (dict(input_ids=ids, output_attentions=True), False, torch.no_grad),
                 (dict(input_ids=ids), False, torch.enable_grad)]
        for inputs, served, grad_mode in cases:
            okt.unpatch()
            with grad_mode():
                ref = thinker(**inputs)
            okt.apply_to_qwen2_5_omni()
            okt.reset_kernel_calls()
            with grad_mode(), omni_kernels.use_backend("triton"):
                out = thinker(**inputs)
            counted = okt.kernel_calls() if served else okt.fallback_calls()
            assert counted == {"attention": 1}, (implementation, inputs)
            if served:
                assert rel_err(out.logits, ref.logits) < 1e-5
            else:
                assert torch.equal(out.logits, ref.logits)
            assert len(out.attentions or ()) == len(ref.attentions or ())
            if ref.attentions:  # eager records the weights of its one layer
                assert torch.equal(out.attentions[0], ref.attentions[0])
    thinker.set_attn_implementation("sdpa")


def test_bf16_within_bound(omni):
    """bf16 (loaded as from_pretrained(dtype=bf16) does: rotary frequencies stay fp32), the ops'
    torch path: logits within bf16 rounding of transformers' bf16 (which rotates in bf16)."""
    thinker = copy.deepcopy(omni.thinker).to(torch.bfloat16)
    thinker.model.language_model.rotary_emb.inv_freq = omni.thinker.model.language_model.rotary_emb.inv_freq.clone()
    inputs = _prompt(omni, "text")
    with torch.no_grad():
        ref = thinker(**inputs).logits
        okt.apply_to_qwen2_5_omni()
        out = thinker(**inputs).logits
    assert okt.kernel_calls() == {"attention": 1}
    assert rel_err(out, ref) < 2e-2


def _vl(hf, name):
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}
    text = dict(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, rope_parameters=rope)
    ids = dict(image_token_id=190, video_token_id=191, vision_start_token_id=192, vision_end_token_id=193)
    if name == "qwen2_vl":  # vision head_dim 64, full attention per image
        cfg = hf.Qwen2VLConfig(text_config=text, vision_config=dict(depth=2, embed_dim=64, num_heads=1, hidden_size=64,
                                                                   mlp_ratio=2), **ids)
        return hf.Qwen2VLForConditionalGeneration(cfg), okt.apply_to_qwen2_vl
    vision = dict(depth=2, hidden_size=64, num_heads=1, intermediate_size=96, out_hidden_size=64, fullatt_block_indexes=[1])
    cfg = hf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    return hf.Qwen2_5_VLForConditionalGeneration(cfg), okt.apply_to_qwen2_5_vl


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen2_vl_models(hf, name):
    torch.manual_seed(0)
    model, apply = _vl(hf, name)
    model = _sharpen(model)
    # 12 x 16 patches: Qwen2.5-VL's 112-px windows (8 x 8 patches) cut them into 4, two of them partial
    ids = torch.tensor([[1, 2, 192] + [190] * 48 + [193, 3, 4]])
    pixels = torch.randn(192, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    inputs = dict(input_ids=ids, pixel_values=pixels, image_grid_thw=torch.tensor([[1, 12, 16]]),
                  mm_token_type_ids=(ids == 190).int())

    def run():
        with torch.no_grad():
            logits = model(**inputs).logits
            return logits, model.generate(**inputs, max_new_tokens=3, do_sample=False)

    ref_logits, ref_ids = run()
    apply(model)
    with omni_kernels.use_backend("triton"):
        logits, out_ids = run()
    assert rel_err(logits, ref_logits) < 1e-5 and torch.equal(out_ids, ref_ids)
    assert okt.kernel_calls() == {"attention": 2 * 2, "vision": 2 * 2}


def test_bad_options_and_unsupported_versions(modeling, monkeypatch):
    with pytest.raises(ValueError, match="attention must be True or False"):
        okt.apply_to_qwen2_5_omni(attention="yes")
    with pytest.raises(ValueError, match="nothing to patch"):
        okt.apply_to_qwen2_5_omni(attention=False, audio=False, vision=False, dit=False)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        okt.apply_to_qwen2_5_omni(object())
    with pytest.raises(ValueError, match="contains none"):
        okt.apply_to_qwen2_5_omni(torch.nn.Linear(2, 2))
    # transformers' lazy module may replace itself in sys.modules on a submodule import: patch the live one
    transformers = sys.modules["transformers"]
    for version in ("4.57.3", "6.0.0", "5.23.1", "not-a-version"):
        monkeypatch.setattr(transformers, "__version__", version)
        with pytest.raises(RuntimeError, match=f"found transformers {version}"):
            okt.apply_to_qwen2_5_omni()
    monkeypatch.setattr(transformers, "__version__", "5.24.0")
    monkeypatch.delattr(modeling.DiTDecoderLayer, "forward")
    with pytest.raises(RuntimeError, match="5.24.0.*DiTDecoderLayer.forward"):
        okt.apply_to_qwen2_5_omni()
    assert not any(hasattr(cls.__dict__.get("forward"), "__omni_kernels_original__")  # nothing half-applied
                   for cls in vars(modeling).values() if isinstance(cls, type))


def test_import_does_not_import_transformers():
    code = "import sys, omni_kernels, omni_kernels.transformers; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
