"""Converters from a custom resource's JSON values to Python values, checked like the CRD checks them.

Each converter takes ``(value, path)`` and returns the value or raises `ValidationError`
naming ``path`` and saying what would be accepted. The API server applies the same rules
from the CRD's schema; these matter where it did not (the emulator, an old server, a CRD
installed without its validation), so a bad value is reported on the resource instead of
crashing a handler.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from shoal.errors import ValidationError

Convert = Callable[[Any, str], Any]


def _bounds(minimum: float | None, maximum: float | None, above: float | None = None) -> str:
    """The bounds as words to append, e.g. ' >= 1 and <= 1000'; empty when unbounded."""
    parts = [f"{op} {bound:g}" for op, bound in ((">", above), (">=", minimum), ("<=", maximum)) if bound is not None]
    return " " + " and ".join(parts) if parts else ""


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Convert:
    def convert(value: Any, path: str) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        if not ok or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValidationError(path, f"must be an integer{_bounds(minimum, maximum)}, got {value!r}")
        return int(value)

    return convert


def number(*, minimum: float | None = None, above: float | None = None, maximum: float | None = None) -> Convert:
    def convert(value: Any, path: str) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok and ((minimum is not None and value < minimum) or (above is not None and value <= above)
                   or (maximum is not None and value > maximum)):
            ok = False
        if not ok:
            raise ValidationError(path, f"must be a number{_bounds(minimum, maximum, above)}, got {value!r}")
        return float(value)

    return convert


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(path, f"must be true or false, got {value!r}")
    return value


def string(*, min_length: int = 0) -> Convert:
    def convert(value: Any, path: str) -> str:
        if not isinstance(value, str) or len(value) < min_length:
            raise ValidationError(path, f"must be a {'non-empty ' if min_length else ''}string, got {value!r}")
        return value

    return convert


def choice(*values: str) -> Convert:
    def convert(value: Any, path: str) -> str:
        if value not in values:
            raise ValidationError(path, f"must be one of {', '.join(values)}; got {value!r}")
        return str(value)

    return convert


def string_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValidationError(path, f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def string_map(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise ValidationError(path, f"must be an object of strings, got {value!r}")
    return {str(k): v for k, v in value.items()}


# Kubernetes label syntax (apimachinery validation.IsQualifiedName and IsValidLabelValue).
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if "/" in prefix or (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix))):
        return False
    return len(name) <= 63 and bool(LABEL_NAME.fullmatch(name))


def label_map(value: Any, path: str) -> dict[str, str]:
    """Kubernetes labels: qualified-name keys, values of at most 63 name characters (or empty)."""
    labels = string_map(value, path)
    for key, text in labels.items():
        if not _label_key_ok(key):
            raise ValidationError(f"{path}.{key}", "not a valid label key: [prefix/]name, the name at most 63 "
                                  "characters of [A-Za-z0-9-_.] starting and ending alphanumeric")
        if text and (len(text) > 63 or not LABEL_NAME.fullmatch(text)):
            raise ValidationError(f"{path}.{key}", f"not a valid label value {text!r}: at most 63 characters of "
                                  "[A-Za-z0-9-_.] starting and ending alphanumeric, or empty")
    return labels


def json_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(path, f"must be an object, got {value!r}")
    return copy.deepcopy(dict(value))


def object_list(*, required: str | None = None) -> Convert:
    """A list of objects (kept as given: Kubernetes types such as EnvVar, Toleration)."""

    def convert(value: Any, path: str) -> tuple[dict[str, Any], ...]:
        if not isinstance(value, list):
            raise ValidationError(path, f"must be a list of objects, got {value!r}")
        items = tuple(json_object(item, f"{path}[{i}]") for i, item in enumerate(value))
        for i, item in enumerate(items):
            if required is not None and not item.get(required):
                raise ValidationError(f"{path}[{i}].{required}", "required; set it")
        return items

    return convert
