"""The spec's condition/value language: a small expression grammar parsed and evaluated here (never Python eval).

    expr    := or ;  or := and ('or' and)* ;  and := not ('and' not)* ;  not := 'not' not | cmp
    cmp     := sum [('==' | '!=' | '<' | '<=' | '>' | '>=' | 'in' | 'not' 'in') sum]
    sum     := prod (('+' | '-') prod)* ;  prod := unary (('*' | '/' | '%') unary)* ;  unary := '-' unary | post
    post    := atom ('.' NAME | '[' expr ']')*
    atom    := NUMBER | 'text' | "text" | true | false | null | NAME | NAME '(' [expr (',' expr)*] ')'
             | '(' expr ')' | '[' [expr (',' expr)*] ']'

Values are null, bool, int, float, str, list and str-keyed dicts. Evaluation never raises: a missing key or list
index gives null, arithmetic on null or mixed types gives null, ordering between unlike types is false, and `x / 0`
is null. Every name must be a known field and every call a known function, checked when the spec loads; text and
size bounds keep a hostile expression's cost small. Templates write expressions in braces: ``"HP {hp}/{hp_max}"``
(``{{`` and ``}}`` are literal braces).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

MAX_EXPR_CHARS = 2000
MAX_NODES = 300
MAX_DEPTH = 40
MAX_TEMPLATE_CHARS = 8000
MAX_STRING_RESULT = 20000  # concatenation results are cut here, so no expression builds a huge string

COMPASS = ("north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east", "northeast": "southwest",
            "southwest": "northeast", "northwest": "southeast", "southeast": "northwest"}


class ExprError(ValueError):
    """A bad expression; `str(e)` says what and where (character offset)."""


class DefaultMap(dict):
    """A map whose missing keys read as `missing` (inventory counts: an item not held is 0, not null)."""

    def __init__(self, data: Mapping[str, Any] = (), missing: Any = None):
        super().__init__(data)
        self.missing = missing


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>\d+\.\d+|\d+)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|[<>+\-*/%().,\[\]])
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            hint = " (compare with ==)" if text[pos] == "=" else ""
            raise ExprError(f"unexpected character {text[pos]!r} at {pos}{hint}")
        kind = m.lastgroup
        val = m.group()
        if kind == "num":
            out.append(("num", float(val) if "." in val else int(val), pos))
        elif kind == "str":
            out.append(("str", re.sub(r"\\(.)", r"\1", val[1:-1]), pos))
        elif kind == "name":
            out.append(("kw" if val in _KEYWORDS else "name", val, pos))
        elif kind == "op":
            out.append(("op", val, pos))
        pos = m.end()
    out.append(("end", None, len(text)))
    return out


# ----- functions (name -> (min args, max args, implementation)) -----
def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) or isinstance(x, bool)


def _fmt(v: Any) -> str:
    """How a value prints in a template."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def _direction_of(a: Any) -> str | None:
    """The compass word an action names ('Move West' -> 'west', 'far north' -> 'north'), else None."""
    if not isinstance(a, str):
        return None
    words = a.lower().replace("-", "").split()
    return words[-1] if words and words[-1] in OPPOSITE else None


def _reversals(xs: Any) -> int | None:
    if not isinstance(xs, list):
        return None
    dirs = [_direction_of(x) for x in xs]
    return sum(1 for a, b in zip(dirs, dirs[1:]) if a is not None and OPPOSITE[a] == b)


def _run(xs: Any) -> int | None:
    if not isinstance(xs, list):
        return None
    n = 0
    for x in reversed(xs):
        if x != xs[-1]:
            break
        n += 1
    return n


def _last(xs: Any, n: Any) -> Any:
    if not isinstance(xs, list) or not isinstance(n, int) or isinstance(n, bool):
        return None
    return xs[-n:] if n > 0 else []


def _count(xs: Any, v: Any) -> int | None:
    if isinstance(xs, list):
        return sum(1 for x in xs if x == v)
    if isinstance(xs, str) and isinstance(v, str) and v:
        return xs.count(v)
    return None


def _distinct(xs: Any) -> int | None:
    if not isinstance(xs, list):
        return None
    seen: list = []
    for x in xs:
        if x not in seen:
            seen.append(x)
    return len(seen)


def _above(d: Any, n: Any) -> list | None:
    if not isinstance(d, dict) or not _num(n):
        return None
    return [k for k, v in d.items() if _num(v) and v > n]


def _without(xs: Any, *drop: Any) -> list | None:
    return [x for x in xs if x not in drop] if isinstance(xs, list) else None


def _minmax(fn: Callable) -> Callable:
    def f(*args: Any) -> Any:
        vals = args[0] if len(args) == 1 and isinstance(args[0], list) else list(args)
        vals = [v for v in vals if _num(v)]
        return fn(vals) if vals else None
    return f


def _get(d: Any, k: Any, default: Any = None) -> Any:
    if isinstance(d, dict) and isinstance(k, str):
        if k not in d and default is None and isinstance(d, DefaultMap):
            return d.missing
        return d.get(k, default)
    if isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
        return d[k]
    return default


def _join(xs: Any, sep: Any = ", ") -> str | None:
    return sep.join(_fmt(x) for x in xs) if isinstance(xs, list) and isinstance(sep, str) else None


def _opposite(a: Any) -> str | None:
    d = _direction_of(a)
    return OPPOSITE[d] if d else None


def _to_int(x: Any) -> int | None:
    try:
        return int(x) if x is not None and not isinstance(x, (list, dict)) else None
    except (TypeError, ValueError):
        return None


FUNCTIONS: dict[str, tuple[int, int, Callable[..., Any], str]] = {
    "len": (1, 1, lambda x: len(x) if isinstance(x, (str, list, dict)) else None, "length of a text, list or map"),
    "lower": (1, 1, lambda s: s.lower() if isinstance(s, str) else None, "lower-cased text"),
    "upper": (1, 1, lambda s: s.upper() if isinstance(s, str) else None, "upper-cased text"),
    "int": (1, 1, _to_int, "integer value of a number or numeric text, else null"),
    "abs": (1, 1, lambda x: abs(x) if _num(x) else None, "absolute value"),
    "min": (1, 8, _minmax(min), "smallest number among the arguments (or of one list)"),
    "max": (1, 8, _minmax(max), "largest number among the arguments (or of one list)"),
    "get": (2, 3, _get, "get(map, key[, default]) / get(list, index[, default])"),
    "keys": (1, 1, lambda d: list(d) if isinstance(d, dict) else None, "the keys of a map, as a list"),
    "last": (2, 2, _last, "last(list, n): the last n elements"),
    "count": (2, 2, _count, "count(list, value): how many elements equal value (or occurrences in a text)"),
    "distinct": (1, 1, _distinct, "number of distinct elements of a list"),
    "run": (1, 1, _run, "length of the run of equal elements at the end of a list"),
    "reversals": (1, 1, _reversals, "adjacent pairs of opposite compass moves in a list of actions"),
    "moves": (1, 1, lambda xs: sum(_direction_of(x) is not None for x in xs) if isinstance(xs, list) else None,
              "how many elements of a list are compass moves"),
    "direction": (1, 1, _direction_of, "the compass word an action names ('Move West' -> 'west'), else null"),
    "opposite": (1, 1, _opposite, "the opposite compass word of an action or direction"),
    "above": (2, 2, _above, "above(map, n): keys whose numeric value is > n"),
    "without": (2, 9, _without, "without(list, a, b, ...): the list minus those values"),
    "join": (1, 2, _join, "join(list[, sep]): elements as text"),
    "if": (3, 3, lambda c, a, b: a if _truthy(c) else b, "if(condition, a, b): a when the condition holds, else b"),
    "is_action": (1, 1, None, "whether a text is exactly one of the env's action names"),
}


@dataclasses.dataclass(frozen=True)
class Expr:
    """A parsed expression: `refs` = field names it reads; `eval(values)` never raises."""

    text: str
    node: tuple
    refs: frozenset[str]

    def eval(self, values: Mapping[str, Any], actions: Iterable[str] = ()) -> Any:
        return _eval(self.node, values, frozenset(actions))

    def truth(self, values: Mapping[str, Any], actions: Iterable[str] = ()) -> bool:
        return _truthy(self.eval(values, actions))


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0
        self.nodes = 0
        self.refs: set[str] = set()

    def peek(self) -> tuple[str, Any, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, Any, int]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def accept(self, kind: str, val: Any) -> bool:
        k, v, _ = self.peek()
        if k == kind and v == val:
            self.i += 1
            return True
        return False

    def expect(self, kind: str, val: Any) -> None:
        k, v, pos = self.peek()
        if not (k == kind and v == val):
            raise ExprError(f"expected {val!r} at {pos}, found {v if v is not None else 'the end'!r}")
        self.i += 1

    def node(self, *parts: Any, depth: int) -> tuple:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ExprError(f"expression has more than {MAX_NODES} parts; split it into derived fields")
        return parts

    @staticmethod
    def deeper(d: int) -> int:
        """One more level of nesting (parentheses, call arguments, lists, indexing, not, unary minus), checked on the
        way down so a hostile expression cannot exhaust the parser's recursion."""
        if d + 1 > MAX_DEPTH:
            raise ExprError(f"expression nests deeper than {MAX_DEPTH}")
        return d + 1

    def parse(self) -> tuple:
        n = self.or_(0)
        k, v, pos = self.peek()
        if k != "end":
            raise ExprError(f"unexpected {v!r} at {pos}")
        return n

    def or_(self, d: int) -> tuple:
        n = self.and_(d)
        while self.accept("kw", "or"):
            n = self.node("or", n, self.and_(d), depth=d)
        return n

    def and_(self, d: int) -> tuple:
        n = self.not_(d)
        while self.accept("kw", "and"):
            n = self.node("and", n, self.not_(d), depth=d)
        return n

    def not_(self, d: int) -> tuple:
        if self.accept("kw", "not"):
            return self.node("not", self.not_(self.deeper(d)), depth=d)
        return self.cmp(d)

    def cmp(self, d: int) -> tuple:
        n = self.sum(d)
        k, v, _ = self.peek()
        if k == "op" and v in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return self.node("cmp", v, n, self.sum(d), depth=d)
        if k == "kw" and v == "in":
            self.take()
            return self.node("in", n, self.sum(d), depth=d)
        if k == "kw" and v == "not" and self.toks[self.i + 1][:2] == ("kw", "in"):
            self.i += 2
            return self.node("not", self.node("in", n, self.sum(d), depth=d), depth=d)
        return n

    def sum(self, d: int) -> tuple:
        n = self.prod(d)
        while self.peek()[0] == "op" and self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            n = self.node("arith", op, n, self.prod(d), depth=d)
        return n

    def prod(self, d: int) -> tuple:
        n = self.unary(d)
        while self.peek()[0] == "op" and self.peek()[1] in ("*", "/", "%"):
            op = self.take()[1]
            n = self.node("arith", op, n, self.unary(d), depth=d)
        return n

    def unary(self, d: int) -> tuple:
        if self.accept("op", "-"):
            return self.node("neg", self.unary(self.deeper(d)), depth=d)
        return self.post(d)

    def post(self, d: int) -> tuple:
        n = self.atom(d)
        while True:
            if self.accept("op", "."):
                k, v, pos = self.take()
                if k not in ("name", "kw"):
                    raise ExprError(f"expected a key name after '.' at {pos}")
                n = self.node("index", n, ("const", v), depth=d)
            elif self.accept("op", "["):
                n = self.node("index", n, self.or_(self.deeper(d)), depth=d)
                self.expect("op", "]")
            else:
                return n

    def args(self, close: str, d: int) -> list[tuple]:
        out = []
        if self.accept("op", close):
            return out
        while True:
            out.append(self.or_(self.deeper(d)))
            if self.accept("op", close):
                return out
            self.expect("op", ",")

    def atom(self, d: int) -> tuple:
        k, v, pos = self.take()
        if k in ("num", "str"):
            return self.node("const", v, depth=d)
        if k == "kw" and v in ("true", "false", "null"):
            return self.node("const", {"true": True, "false": False, "null": None}[v], depth=d)
        if k == "name":
            if self.accept("op", "("):
                if v not in FUNCTIONS:
                    raise ExprError(f"unknown function {v!r} at {pos}; functions: {', '.join(sorted(FUNCTIONS))}")
                args = self.args(")", d)
                lo, hi = FUNCTIONS[v][:2]
                if not lo <= len(args) <= hi:
                    raise ExprError(f"{v}() takes {lo}{'' if lo == hi else f'-{hi}'} argument(s), got {len(args)}")
                return self.node("call", v, tuple(args), depth=d)
            self.refs.add(v)
            return self.node("ref", v, depth=d)
        if k == "op" and v == "(":
            n = self.or_(self.deeper(d))
            self.expect("op", ")")
            return n
        if k == "op" and v == "[":
            return self.node("list", tuple(self.args("]", d)), depth=d)
        raise ExprError(f"unexpected {v if v is not None else 'end of expression'!r} at {pos}")


def parse_expr(text: str, known: Iterable[str] | None = None) -> Expr:
    """Parse `text`; with `known`, every field name it reads must be in it. Raises ExprError."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("empty expression")
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression is {len(text)} characters > {MAX_EXPR_CHARS}")
    p = _Parser(text)
    node = p.parse()
    if known is not None:
        unknown = sorted(p.refs - set(known))
        if unknown:
            raise ExprError(f"unknown field {unknown[0]!r}; known fields: {', '.join(sorted(known))}")
    return Expr(text, node, frozenset(p.refs))


def _truthy(v: Any) -> bool:
    return bool(v) if v is not None else False


def _eval(n: tuple, env: Mapping[str, Any], actions: frozenset[str]) -> Any:
    kind = n[0]
    if kind == "const":
        return n[1]
    if kind == "ref":
        return env.get(n[1])
    if kind == "and":
        return _truthy(_eval(n[1], env, actions)) and _truthy(_eval(n[2], env, actions))
    if kind == "or":
        return _truthy(_eval(n[1], env, actions)) or _truthy(_eval(n[2], env, actions))
    if kind == "not":
        return not _truthy(_eval(n[1], env, actions))
    if kind == "cmp":
        return _compare(n[1], _eval(n[2], env, actions), _eval(n[3], env, actions))
    if kind == "in":
        a, b = _eval(n[1], env, actions), _eval(n[2], env, actions)
        if isinstance(b, str):
            return isinstance(a, str) and a in b
        if isinstance(b, (list, dict)):
            return a in b if not isinstance(a, (list, dict)) else False
        return False
    if kind == "arith":
        return _arith(n[1], _eval(n[2], env, actions), _eval(n[3], env, actions))
    if kind == "neg":
        v = _eval(n[1], env, actions)
        return -v if _num(v) else None
    if kind == "index":
        return _get(_eval(n[1], env, actions), _eval(n[2], env, actions))
    if kind == "list":
        return [_eval(x, env, actions) for x in n[1]]
    if kind == "call":
        args = [_eval(x, env, actions) for x in n[2]]
        if n[1] == "is_action":
            return isinstance(args[0], str) and args[0] in actions
        try:
            return FUNCTIONS[n[1]][2](*args)
        except (TypeError, ValueError):
            return None
    raise AssertionError(f"bad node {kind}")  # the parser only builds the kinds above


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if not (_num(a) and _num(b) or isinstance(a, str) and isinstance(b, str)):
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return (a + b)[:MAX_STRING_RESULT]
    if not (_num(a) and _num(b)):
        return None
    if op in ("/", "%") and b == 0:
        return None
    if op == "/":
        q = a / b
        return int(q) if isinstance(a, int) and isinstance(b, int) and a % b == 0 else q
    if op == "%":
        return a % b
    return a + b if op == "+" else a - b if op == "-" else a * b


# ----- templates: literal text with {expression} holes -----
@dataclasses.dataclass(frozen=True)
class Template:
    text: str
    parts: tuple  # str | Expr
    refs: frozenset[str]

    def render(self, values: Mapping[str, Any], actions: Iterable[str] = ()) -> str:
        acts = frozenset(actions)
        return "".join(p if isinstance(p, str) else _fmt(p.eval(values, acts)) for p in self.parts)


def parse_template(text: str, known: Iterable[str] | None = None) -> Template:
    """`"HP {hp}/{hp_max}"` -> Template; `{{`/`}}` are literal braces. Raises ExprError."""
    if not isinstance(text, str):
        raise ExprError("a template is text")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ExprError(f"template is {len(text)} characters > {MAX_TEMPLATE_CHARS}")
    parts: list = []
    refs: set[str] = set()
    buf, i = [], 0
    while i < len(text):
        c = text[i]
        if c in "{}" and text[i + 1:i + 2] == c:
            buf.append(c)
            i += 2
            continue
        if c == "}":
            raise ExprError(f"single '}}' at {i}; write literal braces as {{{{ and }}}}")
        if c == "{":
            j = _closing_brace(text, i + 1)
            if buf:
                parts.append("".join(buf))
                buf = []
            try:
                e = parse_expr(text[i + 1:j], known)
            except ExprError as err:
                raise ExprError(f"in {{{text[i + 1:j][:60]}}}: {err}") from None
            parts.append(e)
            refs |= e.refs
            i = j + 1
            continue
        buf.append(c)
        i += 1
    if buf:
        parts.append("".join(buf))
    return Template(text, tuple(parts), frozenset(refs))


def _closing_brace(text: str, start: int) -> int:
    quote = None
    for j in range(start, len(text)):
        c = text[j]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "}":
            return j
        elif c == "{":
            break
    raise ExprError(f"unclosed '{{' at {start - 1}; write a literal brace as {{{{")


format_value = _fmt
