"""One engine for every decoder LM: sequences, scheduler, model runner (eager or CUDA graphs),
paged KV cache, sampling, per-request streams. See omni_runtime.engine.engine."""
from .engine import Engine, KVCacheFullError, StepResult
from .memory import plan_kv_caches
from .protocol import check_decoder_lm
from .sampling import SamplingParams
from .sequence import Sequence, StepRows, TokenEvent
from .step_state import StepState

ThinkerEngine = Engine  # the name before the engine ran other decoders

__all__ = ["Engine", "ThinkerEngine", "KVCacheFullError", "StepResult", "plan_kv_caches", "check_decoder_lm",
           "SamplingParams", "Sequence", "StepRows", "TokenEvent", "StepState"]
