"""YAML and JSON as DCloud reads them: plain data, typed the way it looks, bounded.

Both the user's uploaded files and the admin's catalog go through here. PyYAML's own
SafeLoader follows YAML 1.1, where ``yes`` is a boolean, ``1:30`` is 90 and a later
duplicate key silently wins; here scalars resolve as in YAML 1.2's core schema, explicit
tags and duplicate keys are refused, and depth, size and digits are bounded so that no
input costs more than its size or ends in anything but :class:`LoadProblem`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.resolver import BaseResolver

from .errors import clip

MAX_DIGITS = 100  # a number with more digits is junk (and int() refuses past 4,300)
_SURROGATE = re.compile("[\ud800-\udfff]")


class LoadProblem(ValueError):
    """Why a document was refused, as a clause: "the key 'cpu' appears twice (line 3)"."""


class SyntaxProblem(LoadProblem):
    """Text that does not parse; ``line`` (1-based) where the parser gave up, if known."""

    def __init__(self, language: str, line: int | None, reason: str):
        self.line = line
        where = f" (line {line})" if line else ""
        super().__init__(f"it is not valid {language}{where}: {reason}")


@dataclass(frozen=True)
class Limits:
    max_depth: int
    max_nodes: int  # counted as the document expands, aliases included
    max_scalar_chars: int | None = None
    aliases: bool = False


def _line(mark: Any) -> str:
    return f" (line {mark.line + 1})" if mark is not None else ""


class _Yaml12Resolver(BaseResolver):
    """YAML 1.2 core schema: true/false, null, decimal/0o/0x integers, floats; all else is text."""


for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", "~nN"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
):
    _Yaml12Resolver.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))
_Yaml12Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])


def _number_text(text: str) -> str:
    if len(text) > MAX_DIGITS:
        raise LoadProblem(f"a number has more than {MAX_DIGITS} digits")
    return text


def _unicode(text: str) -> str:
    """A lone surrogate (``"\\ud800"``) is no character: nothing downstream can encode it."""
    if not text.isascii() and _SURROGATE.search(text):
        raise LoadProblem("a value is not valid Unicode text (it has a lone surrogate escape)")
    return text



class _Constructor(yaml.constructor.SafeConstructor):
    def construct_scalar(self, node: Any) -> Any:
        value = super().construct_scalar(node)
        return _unicode(value) if isinstance(value, str) else value

    def construct_yaml_int(self, node: Any) -> int:
        text = _number_text(self.construct_scalar(node))
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)

    def construct_yaml_float(self, node: Any) -> float:
        text = self.construct_scalar(node)
        if text.lstrip("+-").lower() in (".inf", ".nan"):
            return super().construct_yaml_float(node)
        return float(_number_text(text))

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class refuses it in its own words
            if duplicate:
                raise LoadProblem(f"the key '{clip(str(key))}' appears twice{_line(key_node.start_mark)}")
        return super().construct_mapping(node, deep=deep)


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)
_Constructor.add_constructor("tag:yaml.org,2002:float", _Constructor.construct_yaml_float)


class _Loader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
    _Constructor, _Yaml12Resolver,
):
    """Composes under ``limits``: depth and expanded size are counted before anything is built."""

    def __init__(self, stream: str, limits: Limits):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Constructor.__init__(self)
        _Yaml12Resolver.__init__(self)
        self.limits = limits
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        limits = self.limits
        event = self.peek_event()
        if not limits.aliases and (isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None)):
            raise LoadProblem("anchors and aliases (& and *) are not allowed")
        if getattr(event, "tag", None) not in (None, "!"):
            raise LoadProblem(f"tags such as '{clip(str(event.tag))}' are not allowed{_line(event.start_mark)}")
        if limits.max_scalar_chars is not None and isinstance(event, yaml.ScalarEvent) \
                and len(event.value) > limits.max_scalar_chars:
            raise LoadProblem(f"a value is longer than {limits.max_scalar_chars} characters")
        self._depth += 1
        try:
            if self._depth > limits.max_depth:
                raise LoadProblem(f"it is nested deeper than {limits.max_depth} levels")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(node)
        return node

    def _count(self, node: Any) -> None:
        if id(node) in self._sizes:  # an alias: its nodes count again wherever it is used
            size = self._sizes[id(node)]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
            size = 1 + sum(self._sizes.get(id(child), 1) for child in children)
            self._sizes[id(node)] = size
        if size > self.limits.max_nodes:
            raise LoadProblem(f"it has more than {self.limits.max_nodes} values")


def load_yaml(text: str, limits: Limits) -> Any:
    """The single document in ``text``; LoadProblem saying what is wrong and where."""
    loader = None
    try:
        loader = _Loader(text, limits)  # the reader refuses some characters right away
        return loader.get_single_data()
    except LoadProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SyntaxProblem("YAML", mark.line + 1 if mark else None, _reason(exc)) from None
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise SyntaxProblem("YAML", None, _reason(exc)) from None
    finally:
        if loader is not None:
            loader.dispose()


def _reason(exc: BaseException) -> str:
    """A parser's explanation on one line (PyYAML's spans several, with a caret drawing)."""
    reason = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).split("\n")[0]
    return clip(" ".join(str(reason).split()), 120)


def load_json(text: str, limits: Limits) -> Any:
    """JSON with the same guarantees as :func:`load_yaml` (no NaN, no duplicate keys)."""
    try:
        loaded = json.loads(text, parse_int=_json_int, parse_constant=_json_constant,
                            object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise SyntaxProblem("JSON", exc.lineno, clip(exc.msg, 120)) from None
    except RecursionError:
        raise LoadProblem(f"it is nested deeper than {limits.max_depth} levels") from None
    _check_json(loaded, limits)
    return loaded


def _json_int(text: str) -> int:
    return int(_number_text(text))


def _json_constant(name: str) -> Any:
    raise LoadProblem(f"'{name}' is not a JSON number")


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        _unicode(key)
        if key in result:
            raise LoadProblem(f"the key '{clip(key)}' appears twice")
        result[key] = value
    return result


def _check_json(value: Any, limits: Limits) -> None:
    """Depth, size and value length, walked without recursion."""
    stack = [(value, 1)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > limits.max_nodes:
            raise LoadProblem(f"it has more than {limits.max_nodes} values")
        if depth > limits.max_depth:
            raise LoadProblem(f"it is nested deeper than {limits.max_depth} levels")
        if isinstance(item, str):
            if limits.max_scalar_chars is not None and len(item) > limits.max_scalar_chars:
                raise LoadProblem(f"a value is longer than {limits.max_scalar_chars} characters")
            _unicode(item)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
