"""One call makes transformers' Qwen2.5-Omni (and Qwen2-VL / Qwen2.5-VL) run our kernels.

    import omni_kernels.transformers as okt
    okt.apply_to_qwen2_5_omni()            # before loading: patches transformers' classes
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(...)
    okt.apply_to_qwen2_5_omni(model)       # or: rebind one loaded model's modules only
    okt.kernel_calls()                     # {"attention": n, "audio": n, ...}: calls our kernels served
    okt.unpatch()                          # the originals back, everywhere

What is replaced (each option names one part; all default to True):
  attention  Thinker and Talker (Qwen2-VL / Qwen2.5-VL: the LM) attention forward and rotary module
             -> tmrope_attention on prefill (`attention.py`)
  audio      the audio encoder's chunked attention -> block_sparse_attention (`encoders.py`)
  vision     the vision encoder's window and full attention -> block_sparse_attention (`encoders.py`)
  dit        the Token2Wav DiT layer's attention -> dit_window_attention (`dit.py`)
Every replaced forward hands a call it cannot serve exactly to the original forward (counted by
`fallback_calls()`), so the patched model computes what the unpatched one does for any input.
RMSNorm and SwiGLU are not replaced: there is no fused kernel for them here.

transformers is imported only when an apply function runs (`import omni_kernels` never imports it).
"""
from . import registry
from .versions import SUPPORTED

__all__ = ["apply_to_qwen2_5_omni", "apply_to_qwen2_vl", "apply_to_qwen2_5_vl", "unpatch", "kernel_calls",
           "fallback_calls", "reset_kernel_calls", "SUPPORTED"]

kernel_calls = registry.kernel_calls
fallback_calls = registry.fallback_calls
reset_kernel_calls = registry.reset_counters


def _targets_text_and_vision(modeling, prefix: str, vision_attention: str) -> dict:
    from . import attention, encoders, rotary

    return {
        "attention": [(getattr(modeling, f"{prefix}Attention"), attention.make_forward),
                      (getattr(modeling, f"{prefix}RotaryEmbedding"), rotary.make_forward)],
        "vision": [(getattr(modeling, vision_attention), encoders.make_vision_forward)],
    }


def _apply(model, targets: dict, options: dict) -> None:
    for name, value in options.items():
        if not isinstance(value, bool):
            raise ValueError(f"option {name} must be True or False, got {value!r}")
    chosen = [pair for name, pairs in targets.items() if options[name] for pair in pairs]
    if not chosen:
        raise ValueError(f"nothing to patch: every option ({', '.join(options)}) is False")
    if model is None:
        for cls, make_forward in chosen:
            registry.patch_class(cls, make_forward)
        return
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module (or None to patch the classes), got {type(model).__name__}")
    # Exact types: a subclass may have its own forward, which ours would silently replace.
    matches = [(module, make_forward) for module in model.modules()
               for cls, make_forward in chosen if type(module) is cls]
    if not matches:
        names = sorted({cls.__name__ for cls, _ in chosen})
        raise ValueError(f"{type(model).__name__} contains none of the modules to patch ({', '.join(names)})")
    registry.patch_instances(matches)


def apply_to_qwen2_5_omni(model=None, *, attention: bool = True, audio: bool = True, vision: bool = True,
                          dit: bool = True) -> None:
    """Patch transformers' Qwen2.5-Omni: its classes (model=None, before or after loading) or one
    model's modules. Idempotent. RuntimeError on an unsupported transformers (see SUPPORTED)."""
    from . import versions

    modeling = versions.require("qwen2_5_omni", {
        "Qwen2_5OmniAttention": versions.DECODER_ATTENTION, "Qwen2_5OmniRotaryEmbedding": versions.ROTARY,
        "Qwen2_5OmniAudioAttention": versions.AUDIO_ATTENTION,
        "Qwen2_5OmniVisionAttention": versions.VISION_ATTENTION,
        "DiTDecoderLayer": versions.DIT_LAYER, "Qwen2_5OmniDiTRotaryEmbedding": versions.ROTARY,
    }, functions=("apply_rotary_pos_emb_vision",))
    from . import dit as dit_patch, encoders, rotary

    targets = _targets_text_and_vision(modeling, "Qwen2_5Omni", "Qwen2_5OmniVisionAttention")
    targets["audio"] = [(modeling.Qwen2_5OmniAudioAttention, encoders.make_audio_forward)]
    targets["dit"] = [(modeling.DiTDecoderLayer, dit_patch.make_forward),
                      (modeling.Qwen2_5OmniDiTRotaryEmbedding, rotary.make_forward)]
    _apply(model, targets, {"attention": attention, "audio": audio, "vision": vision, "dit": dit})


def apply_to_qwen2_vl(model=None, *, attention: bool = True, vision: bool = True) -> None:
    """The same for Qwen2-VL: its LM attention (M-RoPE) and its vision encoder's attention."""
    from . import versions

    modeling = versions.require("qwen2_vl", {
        "Qwen2VLAttention": versions.DECODER_ATTENTION, "Qwen2VLRotaryEmbedding": versions.ROTARY,
        "VisionAttention": versions.VISION_ATTENTION}, functions=("apply_rotary_pos_emb_vision",))
    _apply(model, _targets_text_and_vision(modeling, "Qwen2VL", "VisionAttention"),
           {"attention": attention, "vision": vision})


def apply_to_qwen2_5_vl(model=None, *, attention: bool = True, vision: bool = True) -> None:
    """The same for Qwen2.5-VL: its LM attention (M-RoPE) and its vision window / full attention."""
    from . import versions

    modeling = versions.require("qwen2_5_vl", {
        "Qwen2_5_VLAttention": versions.DECODER_ATTENTION, "Qwen2_5_VLRotaryEmbedding": versions.ROTARY,
        "Qwen2_5_VLVisionAttention": versions.VISION_ATTENTION}, functions=("apply_rotary_pos_emb_vision",))
    _apply(model, _targets_text_and_vision(modeling, "Qwen2_5_VL", "Qwen2_5_VLVisionAttention"),
           {"attention": attention, "vision": vision})


def unpatch(model=None) -> None:
    """model=None: restore every class and every model patched here. With a model: remove the
    forwards bound on its modules (class patches stay until unpatch())."""
    if model is None:
        registry.unpatch_all()
        return
    for module in model.modules():
        registry.unpatch_instance(module)
