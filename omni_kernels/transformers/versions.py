"""Which transformers this package can patch, checked before anything is replaced: the version line,
and that every class and forward signature the replacements rely on is there as verified."""
import importlib
import inspect

# Verified: 5.24.0 (the version the tests pin). Earlier 5.x releases differ in the DiT's rotary
# (transformers issue 47328) and in the attention signatures; 4.x applies M-RoPE outside the
# attention forward (apply_multimodal_rotary_pos_emb) and is not supported.
MIN_VERSION = (5, 24)
SUPPORTED = "transformers >= 5.24, < 6"

DECODER_ATTENTION = ("self", "hidden_states", "attention_mask", "position_ids", "cache", "position_embeddings",
                     "kwargs")
ROTARY = ("self", "x", "position_ids")
AUDIO_ATTENTION = ("self", "hidden_states", "cu_seqlens", "max_seqlen", "kwargs")
VISION_ATTENTION = ("self", "hidden_states", "cu_seqlens", "position_embeddings", "max_seqlen", "kwargs")
DIT_LAYER = ("self", "hidden_states", "timestep", "position_embeddings", "block_diff")


def _version_tuple(version: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release[:2]
    except InvalidVersion:
        return None


def require(model_module: str, forwards: dict[str, tuple[str, ...]], functions: tuple[str, ...] = ()):
    """Import transformers.models.<model_module>.modeling_<model_module> and return it, or raise
    RuntimeError naming the version and what is missing. `forwards`: class name -> the parameter
    names its forward must have, in order; `functions`: module-level names the patch reuses."""
    import transformers

    version = transformers.__version__
    parsed = _version_tuple(version)
    if parsed is None or not (MIN_VERSION <= parsed and parsed[0] == MIN_VERSION[0]):
        raise RuntimeError(f"omni_kernels.transformers supports {SUPPORTED}; found transformers {version}")
    name = f"transformers.models.{model_module}.modeling_{model_module}"
    try:
        modeling = importlib.import_module(name)
    except ImportError as e:
        raise RuntimeError(f"transformers {version} has no {name} ({e})") from None
    missing = [f"{name}.{fn}" for fn in functions if not callable(getattr(modeling, fn, None))]
    for cls_name, params in forwards.items():
        cls = getattr(modeling, cls_name, None)
        if not isinstance(cls, type) or "forward" not in cls.__dict__:
            missing.append(f"{name}.{cls_name}.forward")
            continue
        found = tuple(inspect.signature(cls.__dict__["forward"]).parameters)
        if found != params:
            missing.append(f"{cls_name}.forward{params} (found {found})")
    try:
        capturing = importlib.import_module("transformers.utils.output_capturing")
    except ImportError:
        capturing = None
    if not hasattr(capturing, "_active_collector"):  # how serving.collecting_attentions sees output_attentions
        missing.append("transformers.utils.output_capturing._active_collector")
    if missing:
        raise RuntimeError(f"omni_kernels.transformers cannot patch transformers {version}: missing "
                           + "; ".join(missing))
    return modeling
