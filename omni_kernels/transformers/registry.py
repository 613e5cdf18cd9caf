"""What omni_kernels.transformers replaced, so `unpatch` restores exactly the originals, and the
call counters that prove our kernels ran (and how often a patched forward handed a call back).

A class patch replaces `cls.forward` (it then serves every instance, also those built later); an
instance patch binds a forward on one module (`module.forward`, which nn.Module.__call__ prefers
to the class's). A replacement forward gets the original function and calls it for every call our
kernels cannot serve (a *fallback*).
"""
import collections
import threading
import types
import weakref

_lock = threading.Lock()
_class_originals: dict[type, object] = {}  # cls -> the forward function it had in its own __dict__
_patched_instances = weakref.WeakSet()     # modules with a forward of ours bound on the instance
_kernel_calls = collections.Counter()
_fallback_calls = collections.Counter()

# Set on every forward we install: the function it replaced.
ORIGINAL_ATTR = "__omni_kernels_original__"


def _mark(forward, original):
    setattr(forward, ORIGINAL_ATTR, original)
    return forward


def patch_class(cls: type, make_forward) -> None:
    """cls.forward = make_forward(original); a second call keeps the first patch."""
    with _lock:
        if cls in _class_originals:
            return
        original = cls.__dict__["forward"]
        _class_originals[cls] = original
        cls.forward = _mark(make_forward(original), original)


def _ours(bound) -> bool:
    return hasattr(getattr(bound, "__func__", None), ORIGINAL_ATTR)


def patch_instances(pairs) -> None:
    """For each (module, make_forward): bind make_forward(the class's forward) on the module, unless
    its class is patched (that patch already serves it) or it has our forward already. A module
    with another instance forward (accelerate's hooks, say) raises ValueError before anything is
    bound."""
    with _lock:
        for module, _ in pairs:
            bound = module.__dict__.get("forward")
            if bound is not None and not _ours(bound) and type(module) not in _class_originals:
                raise ValueError(
                    f"{type(module).__name__} already has a forward bound on the instance (e.g. accelerate's "
                    f"hooks); call the apply function with no model before loading it instead")
        for module, make_forward in pairs:
            if type(module) in _class_originals or "forward" in module.__dict__:
                continue
            original = type(module).forward
            module.forward = types.MethodType(_mark(make_forward(original), original), module)
            _patched_instances.add(module)


def unpatch_instance(module) -> None:
    with _lock:
        if _ours(module.__dict__.get("forward")):
            del module.__dict__["forward"]
        _patched_instances.discard(module)


def unpatch_all() -> None:
    for module in list(_patched_instances):
        unpatch_instance(module)
    with _lock:
        for cls, original in _class_originals.items():
            cls.forward = original
        _class_originals.clear()


def count(kind: str, served: bool = True) -> None:
    with _lock:
        (_kernel_calls if served else _fallback_calls)[kind] += 1


def kernel_calls() -> dict[str, int]:
    with _lock:
        return dict(_kernel_calls)


def fallback_calls() -> dict[str, int]:
    with _lock:
        return dict(_fallback_calls)


def reset_counters() -> None:
    with _lock:
        _kernel_calls.clear()
        _fallback_calls.clear()
