"""YAML from outside: plain data only, bounded in time and memory.

Prompt files and price files are written by users and read by the runner, so
reading one must end quickly with plain data (mappings, lists, strings,
numbers, booleans, null, and YAML's dates, sets and binary) or with one
``YamlError`` whatever the text holds.  ``load`` is ``yaml.SafeLoader`` (no
Python objects, ever) with these rules on top:

- Anchors and aliases (``&a`` / ``*a``) are refused, not counted: an alias shares
  one value in many places, so 1 KB of YAML can stand for 10**9 values that
  every later step walks in full, and a recursive alias makes a value that
  contains itself.  The simple rule is the one users can follow: write the
  value out.
- At most ``max_depth`` levels of nesting (PyYAML's composer recurses), and at
  most ``max_nodes`` values.
- Numbers of at most ``max_number_chars`` characters: YAML 1.1's base-60
  numbers (``1:2:3``) take quadratic time to build.
- A value PyYAML's safe constructors cannot build (``2001-13-01``,
  ``!!bool zz``) is a ``YamlError`` too, not the ValueError, KeyError,
  IndexError or AttributeError PyYAML lets out.

The checks sit in the composer, which pulls events from PyYAML's iterative
parser one at a time, so a file is refused as soon as it passes a limit,
without being scanned to its end.  Each caller turns a ``YamlError`` into its
own one-line error, naming its file and its fix.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from chains.errors import clip, one_line

__all__ = ["ALIASES", "YamlError", "load"]

Kind = Literal["syntax", "value", "alias", "depth", "nodes", "number"]

ALIASES = "anchors and aliases (&, *) are not allowed; write the value out"

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
# What PyYAML's safe constructors raise, besides YAMLError, for a value they cannot
# build: ValueError (2001-13-01, !!int zz), KeyError (!!bool zz), IndexError (an
# empty !!int), AttributeError (!!timestamp zz); the rest for safety.
_BUILD_ERRORS = (ValueError, LookupError, AttributeError, TypeError, ArithmeticError)


class YamlError(Exception):
    """Why a text is not loaded, and where: ``kind``, a one-line ``problem``, 1-based ``line`` and ``column``.

    ``line`` and ``column`` are None only when PyYAML gives no position (it then
    says where in ``problem``).  ``problem`` is the loader's generic wording: a
    caller words the limits its own way from ``kind`` and ``size``.
    """

    def __init__(self, kind: Kind, problem: str, line: int | None, column: int | None, size: int = 0) -> None:
        super().__init__(f"line {line}, column {column}: {problem}" if line is not None else problem)
        self.kind: Kind = kind
        self.problem = problem
        self.line = line
        self.column = column
        self.size = size
        """For ``number``: the number's length in characters."""


def _refuse(kind: Kind, problem: str, mark: Any, size: int = 0) -> YamlError:
    return YamlError(kind, problem, mark.line + 1, mark.column + 1, size)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases and bounds depth, values and numbers."""

    def __init__(self, text: str, max_depth: int, max_nodes: int, max_number_chars: int) -> None:
        super().__init__(text)  # the reader checks the characters here
        self._max_depth = max_depth
        self._max_nodes = max_nodes
        self._max_number_chars = max_number_chars
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _refuse("alias", ALIASES, event.start_mark)
        self._nodes += 1
        if self._nodes > self._max_nodes:
            raise _refuse("nodes", f"more than {self._max_nodes:,} values", event.start_mark)
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= self._max_depth:
            raise _refuse("depth", f"nested more than {self._max_depth} levels deep", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag in _NUMBER_TAGS and len(node.value) > self._max_number_chars:
            size = len(node.value)
            problem = (
                f"a number {size:,} characters long; numbers are at most {self._max_number_chars} "
                "characters (quote it if it is text)"
            )
            raise _refuse("number", problem, node.start_mark, size)
        try:
            return super().construct_object(node, deep)
        except _BUILD_ERRORS as exc:
            problem = one_line(f"cannot read this value ({clip(str(exc))})")
            raise _refuse("value", problem, node.start_mark) from None


def load(text: str, *, max_depth: int, max_nodes: int, max_number_chars: int) -> Any:
    """The one YAML document in ``text`` as plain data (None when empty), within the limits.

    Raises only ``YamlError``.
    """
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text, max_depth, max_nodes, max_number_chars)
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = one_line(getattr(exc, "problem", None) or str(exc))
        kind: Kind = "value" if isinstance(exc, yaml.constructor.ConstructorError) else "syntax"
        if mark is None:
            raise YamlError(kind, problem, None, None) from None
        raise _refuse(kind, problem, mark) from None
    finally:
        if loader is not None:
            loader.dispose()
