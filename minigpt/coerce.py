"""Loose values (YAML, the command line, Python callers) checked against a type annotation.

One rule set for the run config (config.py) and the schedule parameters (schedules.py), so that a
value is accepted or refused the same way wherever it is given:

    int     an int, a whole float (12.0) or a string of digits ("12"); never a bool
    float   any real number or a string float() reads ("1e-3"); never a bool
    bool    true or false only (not "true", not 1)
    str     a string, or a number written as one (Hydra reads `name=123` as an int)
    Literal one of its values
    list / tuple of X: a list of values of X (one string for a list of strings)
    dict    a mapping; null for a dict is an empty one
    Optional[X]: null, or X
    anything else (Any, a union of several types, a class): the value as given, for the owner's
    own validate() to judge

Bad input raises a one-line UserError that names the key.
"""

from __future__ import annotations

import difflib
import numbers
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

from minigpt.errors import UserError

_INT_STRING = re.compile(r"\s*[+-]?\d+\s*")


def coerce(value: Any, tp: Any, key: str, *, scalar: Callable[[Any, str], Any] | None = None) -> Any:
    """`value` as type `tp`, or UserError naming `key`. `scalar(value, key)`, when given, converts
    each non-null scalar instead of the type's rule (schedules.py: lengths such as "10%")."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) != 1:
            return value  # a real union: the owner's validate() decides
        tp = args[0]
        origin = typing.get_origin(tp)
    if value is None:
        if tp is dict:
            return {}
        raise UserError(f"{key}: must be set ({type_name(tp)}), got null")
    if origin in (list, tuple):
        items = typing.get_args(tp)
        item_tp = items[0] if items else Any
        if isinstance(value, str) and item_tp is str and origin is list:
            return [value]  # a single path where a list is expected
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return origin(coerce(v, item_tp, f"{key}[{i}]", scalar=scalar) for i, v in enumerate(value))
    if scalar is not None:
        return scalar(value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}{hint}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        if isinstance(value, str) and _INT_STRING.fullmatch(value):
            return int(value)
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}: expected a string, got {value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise UserError(f"{key}: expected a mapping, got {value!r}")
    return value  # Any, or a type of the owner's: its validate() decides


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))
