"""What every replacement forward checks before our kernel serves a call, and a per-tensor memo
for the checks and masks a model hands every layer unchanged (one mask tensor, one cu_seqlens)."""
import weakref

import torch

from ..checks import FLOAT_DTYPES

# Keyword arguments a replacement forward may receive without changing what the call computes;
# any other one with a value (cu_seq_lens_q, is_causal, past_key_values, ...) means the call is
# handed back to the original forward.
PASSIVE_KWARGS = frozenset({"use_cache", "output_attentions", "output_hidden_states", "return_dict"})


def plain_call(module, hidden_states: torch.Tensor, kwargs: dict) -> bool:
    """True when nothing about the call asks for more than the forward value our kernels compute:
    no autograd (our ops have no backward), no torch.compile tracing (the host-side checks would
    break the graph), a float input, no extra keyword arguments."""
    if torch.compiler.is_compiling() or hidden_states.dtype not in FLOAT_DTYPES:
        return False
    if any(value is not None and name not in PASSIVE_KWARGS for name, value in kwargs.items()):
        return False
    if torch.is_grad_enabled() and (hidden_states.requires_grad
                                    or any(p.requires_grad for p in module.parameters())):
        return False
    return True


def no_dropout(module, attention_dropout: float) -> bool:
    return not (module.training and attention_dropout > 0)


def collecting_attentions() -> bool:
    """transformers records attention weights (`output_attentions=True`): our kernels return none."""
    from transformers.utils.output_capturing import _active_collector

    collected = _active_collector.get()
    return collected is not None and "attentions" in collected


def _version(tensor: torch.Tensor):
    try:
        return tensor._version
    except RuntimeError:  # inference-mode tensors keep no version counter: never memoized
        return None


class TensorMemo:
    """One value per live tensor and key, recomputed when the tensor was modified in place
    (its version counter moved) or is another tensor at the same address."""

    def __init__(self):
        self._entries: dict[int, tuple] = {}

    def get(self, tensor: torch.Tensor, key, compute):
        version = _version(tensor)
        if version is None:
            return compute()
        entry = self._entries.get(id(tensor))
        if entry is not None and entry[0]() is tensor and entry[1] == version and entry[2] == key:
            return entry[3]
        value = compute()
        ident = id(tensor)
        ref = weakref.ref(tensor, lambda _, entries=self._entries, ident=ident: entries.pop(ident, None))
        self._entries[ident] = (ref, version, key, value)
        return value


memo = TensorMemo()
