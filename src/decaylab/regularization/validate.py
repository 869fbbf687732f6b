"""Boundary checks: every error names the field, the bad value and what is allowed."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any


def check_choice(field: str, value: Any, allowed: Iterable[str]) -> str:
    """Return `value` lower-cased if it is one of `allowed`, else raise ValueError naming the field."""
    allowed = tuple(allowed)
    if isinstance(value, str) and value.strip().lower() in allowed:
        return value.strip().lower()
    raise ValueError(f"{field}={value!r} is not valid; allowed values are {', '.join(allowed)}")


def check_nonneg(field: str, value: Any) -> float:
    """Return `value` as a float if it is a finite number >= 0, else raise ValueError naming the field."""
    if not _is_finite_real(value) or value < 0:
        raise ValueError(f"{field}={value!r} is not valid; allowed values are finite numbers >= 0")
    return float(value)


def check_positive(field: str, value: Any) -> float:
    """Return `value` as a float if it is a finite number > 0, else raise ValueError naming the field."""
    if not _is_finite_real(value) or value <= 0:
        raise ValueError(f"{field}={value!r} is not valid; allowed values are finite numbers > 0")
    return float(value)


def check_count(field: str, value: Any, minimum: int = 0) -> int:
    """Return `value` if it is an integer >= `minimum` (not a bool), else raise ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{field}={value!r} is not valid; allowed values are integers >= {minimum}")
    return int(value)


def check_patterns(field: str, value: Any) -> tuple[str, ...]:
    """Return the regexes in `value` (None, one string or a list of strings) after compiling each."""
    if value is None:
        return ()
    if isinstance(value, str):  # a bare string would otherwise be iterated character by character
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise ValueError(f"{field}={value!r} is not valid; allowed values are a list of regex strings")
    out = []
    for pattern in value:
        _compile(field, pattern)
        out.append(pattern)
    return tuple(out)


def check_multipliers(field: str, value: Any) -> dict[str, float]:
    """Return `value` as {regex: factor} with every regex compiled and every factor finite and >= 0."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{field}={value!r} is not valid; allowed values are a mapping regex -> factor >= 0")
    out = {}
    for pattern, factor in value.items():
        _compile(field, pattern)
        out[pattern] = check_nonneg(f"{field}[{pattern!r}]", factor)
    return out


def check_bool(field: str, value: Any) -> bool:
    """Return `value` if it is a bool, else raise ValueError naming the field."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}={value!r} is not valid; allowed values are True, False")
    return value


def _is_finite_real(value: Any) -> bool:
    # bool is an int subclass; True as a decay strength is almost certainly a config mistake
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _compile(field: str, pattern: Any) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ValueError(f"{field} entry {pattern!r} is not valid; allowed values are regex strings")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{field} entry {pattern!r} is not a valid regex ({err})") from None
