"""A bounded repr for error messages about untrusted values (a spec field, a request field, an op argument).

repr() of a hostile value can be the slow part of reporting it: a YAML alias bomb is a few hundred bytes of shared
lists that repr expands to billions of elements, and str() of a huge integer is quadratic (refused past 4300
digits). `short_repr` bounds the depth, the items per container and the characters, whatever the value.
"""
from __future__ import annotations

import reprlib
from typing import Any


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<{x.bit_length()}-bit int>"
        return super().repr_int(x, level)


_REPR = _Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 5


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value) in at most `limit` characters, in bounded time (nested, shared or huge values included)."""
    try:
        s = _REPR.repr(value)
    except Exception as e:  # a hostile __repr__
        s = f"<{type(value).__name__}: repr failed: {type(e).__name__}>"
    return s if len(s) <= limit else s[:limit - 3] + "..."
