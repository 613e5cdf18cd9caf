"""runtime/config/ (the omni_runtime.config package) against transformers 5.24's Qwen2.5-Omni config classes."""
import copy
import json

import pytest

from omni_runtime import config as C

# (our section getter, transformers section getter, transformers class name)
SECTIONS = [
    (lambda c: c, lambda h: h, "Qwen2_5OmniConfig"),
    (lambda c: c.thinker_config, lambda h: h.thinker_config, "Qwen2_5OmniThinkerConfig"),
    (lambda c: c.thinker_config.text_config, lambda h: h.thinker_config.text_config, "Qwen2_5OmniTextConfig"),
    (lambda c: c.thinker_config.audio_config, lambda h: h.thinker_config.audio_config, "Qwen2_5OmniAudioEncoderConfig"),
    (lambda c: c.thinker_config.vision_config, lambda h: h.thinker_config.vision_config, "Qwen2_5OmniVisionEncoderConfig"),
    (lambda c: c.talker_config, lambda h: h.talker_config, "Qwen2_5OmniTalkerConfig"),
    (lambda c: c.token2wav_config, lambda h: h.token2wav_config, "Qwen2_5OmniToken2WavConfig"),
    (lambda c: c.token2wav_config.dit_config, lambda h: h.token2wav_config.dit_config, "Qwen2_5OmniDiTConfig"),
    (lambda c: c.token2wav_config.bigvgan_config, lambda h: h.token2wav_config.bigvgan_config, "Qwen2_5OmniBigVGANConfig"),
]
NESTED = {"thinker_config", "talker_config", "token2wav_config", "text_config", "audio_config", "vision_config",
          "dit_config", "bigvgan_config"}


def _norm(value):
    """JSON-normalise (tuples -> lists) for comparison."""
    return json.loads(json.dumps(value))


def _rope(value, cls_name):
    # transformers keeps the legacy "type" key inside rope_parameters; compare the semantics.
    out = {k: v for k, v in (value or {}).items() if k != "type"}
    if cls_name in ("Qwen2_5OmniTextConfig", "Qwen2_5OmniTalkerConfig"):
        out.setdefault("mrope_section", [16, 24, 24])  # the modeling code's default when absent
    return out


def assert_same_as_hf(ours: C.OmniConfig, theirs, hf_model_fields):
    """Every model-specific transformers field of every section has our value."""
    from transformers.models.qwen2_5_omni import configuration_qwen2_5_omni as HC

    for get_ours, get_theirs, cls_name in SECTIONS:
        o, t = get_ours(ours), get_theirs(theirs)
        od = o.to_dict()
        for name in hf_model_fields(getattr(HC, cls_name)):
            if name in NESTED:
                continue
            assert name in od, f"{cls_name}.{name} missing from our to_dict()"
            tv = getattr(t, name)
            if name == "rope_parameters":
                assert _rope(od[name], cls_name) == _rope(_norm(tv), cls_name), f"{cls_name}.{name}: {od[name]} != {tv}"
            else:
                assert od[name] == _norm(tv), f"{cls_name}.{name}: ours {od[name]!r} != transformers {tv!r}"


def test_defaults_equal_transformers_defaults(hf, hf_model_fields):
    assert_same_as_hf(C.OmniConfig(), hf.Qwen2_5OmniConfig(), hf_model_fields)
    # The parsed form of an empty dict is the same as the dataclass defaults.
    assert C.OmniConfig.from_dict({}).to_dict() == C.OmniConfig().to_dict()
    text = C.OmniConfig().thinker_config.text_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.dim_per_head) == (3584, 28, 4, 128)
    assert text.mrope_section == [16, 24, 24] and text.rope_theta == 1e6


@pytest.mark.parametrize("variant", ["small", "7b-ratios"])
def test_transformers_saved_config_round_trips(hf, tmp_path, variant, hf_model_fields, hf_tiny_config_kwargs):
    theirs = hf.Qwen2_5OmniConfig(**hf_tiny_config_kwargs(variant))
    theirs.save_pretrained(tmp_path)
    ours = C.load(tmp_path)
    assert_same_as_hf(ours, theirs, hf_model_fields)
    assert ours.extra["transformers_version"] == hf.__version__  # unknown keys kept
    # Our dict, in both styles, read back by transformers gives the same config again.
    for style in ("transformers", "2025"):
        again = hf.Qwen2_5OmniConfig(**ours.to_dict(style))
        assert_same_as_hf(ours, again, hf_model_fields)
        assert C.OmniConfig.from_dict(ours.to_dict(style)).to_dict() == ours.to_dict()
    # save() writes a loadable config.json
    ours.save(tmp_path / "again.json", style="2025")
    assert C.load(tmp_path / "again.json").to_dict() == ours.to_dict()


def test_2025_style_rope_parses_to_the_same_settings(hf):
    published_text = {
        "hidden_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1,
        "intermediate_size": 64, "vocab_size": 100,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        "rope_theta": 500000.0,
    }
    modern_text = {k: v for k, v in published_text.items() if k not in ("rope_scaling", "rope_theta")}
    modern_text["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [16, 24, 24]}
    a = C.TextConfig.from_dict(published_text)
    b = C.TextConfig.from_dict(modern_text)
    assert (a.rope_theta, a.mrope_section, a.rope_parameters.rope_type) == (500000.0, [16, 24, 24], "default")
    assert (a.rope_theta, a.mrope_section) == (b.rope_theta, b.mrope_section)
    # ... and transformers reads the published dict to the same values.
    t = hf.Qwen2_5OmniTextConfig(**copy.deepcopy(published_text))
    assert t.rope_parameters["rope_theta"] == 500000.0 and t.rope_parameters["mrope_section"] == [16, 24, 24]
    # Talker, same story; the Qwen2-VL era "mrope" type is the default math.
    talker = C.TalkerConfig.from_dict({"rope_scaling": {"mrope_section": [16, 24, 24], "type": "mrope"}, "rope_theta": 1e4})
    assert (talker.rope_theta, talker.mrope_section, talker.rope_parameters.rope_type) == (1e4, [16, 24, 24], "default")
    # 2025-style output has rope_scaling + rope_theta and no rope_parameters.
    d = a.to_dict("2025")
    assert "rope_parameters" not in d and d["rope_theta"] == 500000.0 and d["rope_scaling"]["mrope_section"] == [16, 24, 24]
    # rope_scaling wins over rope_parameters when both are present (transformers' precedence).
    both = dict(published_text, rope_parameters={"rope_type": "default", "rope_theta": 1.0, "mrope_section": [64, 0, 0]})
    assert C.TextConfig.from_dict(both).mrope_section == [16, 24, 24]


def test_aliases_and_unknown_keys():
    cfg = C.OmniConfig.from_dict({
        "enable_talker": True,
        "_note": "kept",
        "token2wav_config": {"dit_config": {"dim": 512, "depth": 3, "heads": 8, "head_dim": 64, "look_ahead_layers": [1],
                                            "look_backward_layers": [0]}},
        "thinker_config": {"vision_config": {"embed_dim": 1280, "depth": 4, "fullatt_block_indexes": [3]},
                           "image_token_id": 151655, "audio_config": {"num_hidden_layers": 3}},
    })
    dit = cfg.token2wav_config.dit_config
    assert (dit.hidden_size, dit.num_hidden_layers, dit.num_attention_heads) == (512, 3, 8)
    assert cfg.thinker_config.vision_config.hidden_size == 1280
    assert cfg.thinker_config.audio_config.encoder_layers == 3
    assert cfg.extra == {"enable_talker": True, "_note": "kept"}
    d = cfg.to_dict()
    assert d["enable_talker"] is True and d["_note"] == "kept"


def _with(path: str, value, base=None):
    d = base if base is not None else C.OmniConfig().to_dict()
    *parents, leaf = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[leaf] = value
    return d


@pytest.mark.parametrize(
    "path,value,match",
    [
        ("thinker_config.text_config.hidden_size", "3584", r"thinker_config\.text_config\.hidden_size: expected int"),
        ("thinker_config.text_config.num_hidden_layers", True, r"text_config\.num_hidden_layers: expected int"),
        ("thinker_config.text_config.hidden_size", 3583, r"text_config\.hidden_size \(3583\) must be divisible"),
        ("thinker_config.text_config.num_key_value_heads", 3, r"num_attention_heads \(28\) must be a multiple of .*num_key_value_heads \(3\)"),
        ("thinker_config.text_config.rope_parameters", {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 16]},
         r"text_config\.rope_parameters\.mrope_section \[16, 24, 16\] sums to 56, but head_dim/2 = 64"),
        ("thinker_config.text_config.rope_parameters", {"rope_type": "yarn", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
         r"rope_type 'yarn' is not supported"),
        ("talker_config.head_dim", 96, r"talker_config\.rope_parameters\.mrope_section .* head_dim/2 = 48"),
        ("talker_config.tts_codec_pad_token_id", 9000, r"talker_config\.tts_codec_pad_token_id = 9000 is outside"),
        ("thinker_config.audio_config.d_model", 1001, r"audio_config\.d_model \(1001\) must be divisible"),
        ("thinker_config.vision_config.fullatt_block_indexes", [7, 40], r"vision_config\.fullatt_block_indexes \[40\]"),
        ("thinker_config.audio_config.output_dim", 1000, r"audio_config\.output_dim \(1000\) must equal"),
        ("thinker_config.vision_config.out_hidden_size", 1000, r"vision_config\.out_hidden_size \(1000\) must equal"),
        ("token2wav_config.dit_config.enc_channels", [256, 256, 256, 256, 512], r"enc_channels\[-1\] \(512\) must equal sum"),
        ("token2wav_config.dit_config.enc_kernel_sizes", [5, 3, 3, 1], r"must have the same length"),
        ("token2wav_config.dit_config.look_ahead_layers", [22], r"dit_config\.look_ahead_layers \[22\]"),
        ("token2wav_config.bigvgan_config.upsample_initial_channel", 48, r"bigvgan_config\.upsample_initial_channel \(48\)"),
        ("token2wav_config.bigvgan_config.resblock_dilation_sizes", [[1, 3], [1, 3, 5], [1, 3, 5]], r"resblock_dilation_sizes\[0\]"),
        ("token2wav_config.bigvgan_config.upsample_rates", [5, 3], r"upsample_rates \(2\) and upsample_kernel_sizes \(6\)"),
        ("talker_config.embedding_size", 1024, r"talker_config\.embedding_size \(1024\) must equal"),
        ("model_type", "qwen3_omni_moe", r"model_type must be 'qwen2_5_omni'"),
        ("thinker_config.text_config", [1, 2], r"thinker_config\.text_config: expected an object"),
        ("enable_audio_output", "yes", r"enable_audio_output: expected bool"),
    ],
)
def test_bad_values_name_the_field(path, value, match):
    with pytest.raises(ValueError, match=match):
        C.OmniConfig.from_dict(_with(path, value))


def test_token_id_checks():
    # Parsing accepts 7B ids with a tiny vocab (text-only use); the explicit check rejects them.
    cfg = C.OmniConfig.from_dict(_with("thinker_config.text_config.vocab_size", 1000))
    with pytest.raises(ValueError, match=r"thinker_config\.audio_token_index = 151646 is outside the vocabulary"):
        cfg.check_token_ids()
    C.OmniConfig().check_token_ids()  # the 7B defaults are consistent
    with pytest.raises(ValueError, match="must be distinct"):
        C.OmniConfig.from_dict(_with("thinker_config.image_token_index", 151656))


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        C.load(tmp_path / "nope.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        C.load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected an object"):
        C.load(tmp_path)
    with pytest.raises(ValueError, match="style must be"):
        C.OmniConfig().to_dict("v4")
