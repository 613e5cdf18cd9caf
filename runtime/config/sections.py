"""The machinery every config section shares: `_Section` (from_dict / to_dict / validate),
type checking of JSON values against the dataclass annotations (`_coerce`), `_positive`."""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, ClassVar, Union


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"list[{_type_name(arg)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, path: str):
    """Check `value` against the annotation `tp`; return it normalised (tuples -> lists,
    ints -> floats for float fields). Raises ValueError naming `path`."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ValueError as e:
                errors.append(e)
        raise ValueError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r:.80}")
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r:.80}")
        return [_coerce(v, arg, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__} {value!r:.80}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, _Section):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {type(value).__name__} {value!r:.80}")
        return tp.from_dict(value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        # JSON has no int/float split for e.g. 2.0; bool is an int subclass but never a count.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ValueError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r:.80}")


class _Section:
    """Shared from_dict/to_dict for the config dataclasses."""

    # config.json key -> field name, used only when the field's own key is absent.
    _aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def _preprocess(cls, d: dict, path: str) -> dict:
        return d

    @classmethod
    def from_dict(cls, d: dict, path: str = "config"):
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected an object, got {type(d).__name__}")
        d = cls._preprocess(dict(d), path)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = _coerce(value, hints[key], f"{path}.{key}")
        for key, value in d.items():
            if key in names:
                continue
            target = cls._aliases.get(key)
            if target is not None and target not in kwargs:
                kwargs[target] = _coerce(value, hints[target], f"{path}.{key}")
            else:
                extra[key] = value
        obj = cls(**kwargs, extra=extra)  # __post_init__ derives defaults as transformers does
        obj.validate(path)
        return obj

    def __post_init__(self) -> None:
        pass

    def validate(self, path: str = "config") -> None:
        pass

    def to_dict(self, style: str = "transformers") -> dict:
        """Plain dict for config.json. style="transformers" writes `rope_parameters` (5.x);
        style="2025" writes `rope_scaling` + `rope_theta` as the published checkpoint does."""
        if style not in ("transformers", "2025"):
            raise ValueError(f"style must be 'transformers' or '2025', got {style!r}")
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value = value.to_dict(style)
            out[f.name] = value
        out = self._postprocess_dict(out, style)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return json.loads(json.dumps(out))  # deep copy, JSON-clean

    def _postprocess_dict(self, out: dict, style: str) -> dict:
        return out


def _positive(obj, path: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None or value <= 0:
            raise ValueError(f"{path}.{name} must be a positive integer, got {value!r}")
