"""Typed payloads: a task declared with ``payload=SomeDataclass`` (or a TypedDict) gets its JSON
payload checked and converted before the handler runs, so a handler never sees a malformed payload
and a producer that sent one learns which field is wrong and what was expected.

The check is the boundary between JSON and Python types: str, int, float, bool, None, list[X],
dict[str, X], X | None, Literal[...], Any, nested dataclasses and TypedDicts. A mismatch raises
PayloadError, a PermanentError: the job fails at once (no retries: the same payload would fail
again), with an error like ``payload.items[2].sku: expected str, got int``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from shoal.errors import PermanentError

Decoder = Callable[[Any, str], Any]


class PayloadError(PermanentError):
    """A payload that does not match its task's declared type."""


def decoder(tp: Any) -> Callable[[Any], Any]:
    """A function turning a decoded JSON payload into `tp` (raising PayloadError), built once per task."""
    decode = _decoder(tp)
    name = getattr(tp, "__name__", repr(tp))

    def run(value: Any) -> Any:
        try:
            return decode(value, "payload")
        except PayloadError as exc:
            raise PayloadError(f"{exc}; the task expects a {name} payload: enqueue one that matches it") from None

    return run


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "str", bool: "bool", int: "int", float: "float",
            type(None): "null"}.get(type(value), type(value).__name__)


def _fail(path: str, expected: str, value: Any) -> typing.NoReturn:
    raise PayloadError(f"{path}: expected {expected}, got {_json_type(value)}")


def _decoder(tp: Any) -> Decoder:
    if tp is Any:
        return lambda value, path: value
    if tp is type(None) or tp is None:
        return _exact(type(None), "null")
    if tp is bool:
        return _exact(bool, "bool")
    if tp is int:
        return _exact(int, "int")
    if tp is float:
        return _number
    if tp is str:
        return _exact(str, "str")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp)
    if is_typeddict(tp):
        return _typeddict(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return _literal(args)
    if origin is Union or origin is types.UnionType:
        return _union([_decoder(a) for a in args], " or ".join(getattr(a, "__name__", repr(a)) for a in args))
    if origin is list:
        return _list(_decoder(args[0]) if args else _decoder(Any))
    if origin is dict:
        return _dict(_decoder(args[1]) if len(args) == 2 else _decoder(Any))
    if tp in (list, dict):
        return _exact(tp, "array" if tp is list else "object")
    raise TypeError(f"payload type {tp!r} is not supported: use str, int, float, bool, None, list, dict, "
                    "Literal, unions, dataclasses or TypedDicts")


def _exact(kind: type, label: str) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        if type(value) is not kind:  # not isinstance: True is not an int here, as in JSON
            _fail(path, label, value)
        return value

    return decode


def _number(value: Any, path: str) -> Any:
    if type(value) not in (int, float):
        _fail(path, "float", value)
    return float(value)


def _literal(allowed: tuple[Any, ...]) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        if value not in allowed or type(value) not in {type(a) for a in allowed}:
            raise PayloadError(f"{path}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return decode


def _union(options: list[Decoder], label: str) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        for option in options:
            try:
                return option(value, path)
            except PayloadError:
                continue
        _fail(path, label, value)

    return decode


def _list(item: Decoder) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        if type(value) is not list:
            _fail(path, "array", value)
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return decode


def _dict(item: Decoder) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        if type(value) is not dict:
            _fail(path, "object", value)
        return {k: item(v, f"{path}.{k}") for k, v in value.items()}

    return decode


def _fields(value: Any, path: str, hints: dict[str, Any], required: set[str]) -> dict[str, Any]:
    if type(value) is not dict:
        _fail(path, "object", value)
    missing = sorted(required - value.keys())
    if missing:
        raise PayloadError(f"{path}.{missing[0]}: required field missing")
    unknown = sorted(value.keys() - hints.keys())
    if unknown:
        raise PayloadError(f"{path}.{unknown[0]}: unknown field (known: {', '.join(sorted(hints))})")
    return {k: hints[k](v, f"{path}.{k}") for k, v in value.items()}


def _dataclass(tp: type) -> Decoder:
    hints = get_type_hints(tp)
    fields = [f for f in dataclasses.fields(tp) if f.init]
    decoders = {f.name: _decoder(hints[f.name]) for f in fields}
    required = {f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return lambda value, path: tp(**_fields(value, path, decoders, required))


def _typeddict(tp: Any) -> Decoder:
    """Required keys from the hints themselves: under `from __future__ import annotations` Python
    3.11 cannot see NotRequired[...] when it builds `__required_keys__`, so that is not trusted."""
    decoders, required = {}, set()
    for name, hint in get_type_hints(tp, include_extras=True).items():
        marker = getattr(get_origin(hint), "_name", None)
        if marker in ("NotRequired", "Required"):
            (hint,) = get_args(hint)
        if marker == "Required" or (marker != "NotRequired" and tp.__total__):
            required.add(name)
        if get_origin(hint) is Annotated:
            hint = get_args(hint)[0]
        decoders[name] = _decoder(hint)
    return lambda value, path: _fields(value, path, decoders, required)
