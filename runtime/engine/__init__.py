"""One engine for every decoder LM: sequences, scheduling, paged KV cache, sampling."""
from .engine import KVCacheFullError, Sequence, StepState, ThinkerEngine, TokenEvent
from .sampling import SamplingParams

Engine = ThinkerEngine

__all__ = ["Engine", "SamplingParams", "Sequence", "StepState", "TokenEvent", "KVCacheFullError"]
