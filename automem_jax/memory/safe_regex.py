"""Regular expressions from untrusted specs, compiled with RE2 (linear-time matching, no backtracking).

A spec regex is proposer output: Python's `re` can take exponential time on `(a+)+$`, so every spec pattern goes
through Google RE2 (PyPI `google-re2`), whose matching time is linear in the input. Patterns RE2 cannot run in
linear time (backreferences, lookaround) are refused at load with the field named, and so are overlong patterns and
ones whose compiled program would exceed a memory budget.
"""
from __future__ import annotations

import functools
from typing import Any

MAX_PATTERN_CHARS = 500
MAX_PROGRAM_BYTES = 1 << 20  # RE2's compiled-program budget per pattern


class RegexError(ValueError):
    pass


def _re2():
    try:
        import re2
    except ImportError as e:  # requirements.txt pins google-re2; name the fix rather than fall back to `re`
        raise RegexError("spec regexes need the google-re2 package (pip install 'google-re2>=1.1,<2')") from e
    return re2


@functools.lru_cache(maxsize=512)
def compile_regex(pattern: str) -> Any:
    """An RE2 pattern object (`.search(text)`, `.fullmatch(text)`); raises RegexError saying why it was refused."""
    if not isinstance(pattern, str) or not pattern:
        raise RegexError("empty pattern")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"pattern is {len(pattern)} characters > {MAX_PATTERN_CHARS}")
    re2 = _re2()
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print every refused pattern to stderr
    opts.max_mem = MAX_PROGRAM_BYTES
    try:
        return re2.compile(pattern, options=opts)
    except re2.error as e:
        msg = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        hint = " (RE2 has no backreferences or lookaround)" if "escape" in msg or "perl operator" in msg else ""
        raise RegexError(f"RE2 refuses it: {msg}{hint}") from None
