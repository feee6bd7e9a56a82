"""Bounded YAML loading for untrusted spec text, and bounded reprs for error messages about what it held.

A spec comes from a proposer (an LLM), so its YAML is hostile input: thousands of nested brackets overflow the
composer's recursion, a few hundred bytes of nested aliases describe a tree of billions of nodes (cheap to load,
since aliases share objects, but exponential for anything that walks it as a tree: repr, deepcopy, a dump), an
alias can even contain itself, and a key written twice silently keeps the last value. `load_yaml` refuses all of
these with a YamlInputError naming the line, before a Python object is built (error messages about what it held
use `short_repr`, which is bounded too).
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from automem_jax.short_repr import short_repr

MAX_DEPTH = 64  # nesting levels of sequences/mappings (a spec needs about 5)
MAX_ALIASES = 256  # alias uses (`*name`) in one document
MAX_NODES = 200_000  # nodes of the document with every alias expanded (a 64 KB spec has ~10k without aliases)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SURROGATE = re.compile("[\ud800-\udfff]")


class YamlInputError(yaml.YAMLError):
    """The text is YAML beyond what a spec may use (too deep, too many aliases, too large expanded, a duplicate
    key, a value that cannot be built). The message says what, where, and the fix."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlInputError(f"more than {MAX_ALIASES} aliases (line {_line(event)}); write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlInputError(f"nesting deeper than {MAX_DEPTH} levels (line {_line(event)}); a spec needs "
                                     "a handful")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_scalar(self, node: Any) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and _SURROGATE.search(value):
            raise YamlInputError(f"an escape at line {_line(node)} makes a lone surrogate (e.g. \\ud800), which no "
                                 "file or prompt can hold; write the character itself")
        return value

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue  # a merge (`<<: *base`) may override its base's keys; complex keys fail later
                key = self.construct_object(key_node)
                if key in seen:
                    raise YamlInputError(f"duplicate key {short_repr(key)} at line {_line(key_node)} (first at line "
                                         f"{_line(seen[key])}); write each key once")
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """yaml.safe_load with bounds: depth, alias count, expanded size, no recursive aliases, no duplicate keys.
    Raises yaml.YAMLError (YamlInputError for what safe_load would accept or crash on) for any bad text."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as e:  # a scalar that resolves to a type it cannot be: 2024-13-45, 10**5000
            raise YamlInputError(f"a value cannot be built: {' '.join(str(e).split())[:200]}") from None
    finally:
        loader.dispose()


def _check_expansion(root: Any) -> None:
    """Count the nodes of the document with aliases expanded (shared nodes memoised: linear in the text)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise YamlInputError(f"an alias at line {_line(node)} contains itself; a spec is a tree")
        if isinstance(node, yaml.ScalarNode):
            return 1
        open_.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise YamlInputError(f"the document expands to more than {MAX_NODES} nodes through its aliases "
                                     f"(line {_line(node)}); write the values out without nested aliases")
        open_.discard(key)
        sizes[key] = total
        return total

    size(root)  # recursion depth is bounded by MAX_DEPTH (the composer refused deeper documents)


def _line(obj: Any) -> int:
    mark = getattr(obj, "start_mark", None)
    return mark.line + 1 if mark is not None else 0
