"""Pieces shared by every decoder and encoder: norms, MLP, rotary tables, the Qwen2 decoder,
weight adoption."""
from .decoder import CHUNKED_PREFILL, DECODE, MODES, PREFILL, Attention, DecoderLayer, DecoderModel
from .mlp import MLP
from .norm import RMSNorm
from .rotary import mrope_cos_sin
from .weights import Embedding, adopt, build_and_adopt

__all__ = ["PREFILL", "CHUNKED_PREFILL", "DECODE", "MODES", "Attention", "DecoderLayer", "DecoderModel", "MLP",
           "RMSNorm", "mrope_cos_sin", "adopt", "build_and_adopt", "Embedding"]
