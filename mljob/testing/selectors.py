"""Label and field selectors, parsed once and matched cheaply.

The emulator filters every list and every watch event through these, so parsed selectors are
cached by their text: an operator re-sends the same few selectors thousands of times.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[Mapping[str, Any]], bool]


class SelectorError(ValueError):
    """An unparseable selector; the API answers it with 400 BadRequest."""


_SET_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_CMP_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|!=|=|>|<)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")


def _split_requirements(text: str) -> list[str]:
    """Split on commas that are not inside ``(...)`` value sets."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _label_requirement(text: str) -> Callable[[Mapping[str, str]], bool]:
    if m := _SET_RE.match(text):
        key, op, raw = m.group(1), m.group(2), m.group(3)
        values = frozenset(v.strip() for v in raw.split(",") if v.strip())
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _CMP_RE.match(text):
        key, op, value = m.group(1), m.group(2), m.group(3)
        if op in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        try:
            bound = int(value)
        except ValueError:
            raise SelectorError(f"label selector {text!r}: {op} needs an integer") from None
        if op == ">":
            return lambda labels: _as_int(labels.get(key)) > bound
        return lambda labels: _as_int(labels.get(key)) < bound
    if m := _EXISTS_RE.match(text):
        negated, key = m.group(1) == "!", m.group(2)
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"unable to parse requirement: {text!r}")


def _as_int(value: str | None) -> float:
    """Non-integer or absent labels never satisfy ``>``/``<``, as in Kubernetes."""
    if value is None:
        return float("nan")
    try:
        return int(value)
    except ValueError:
        return float("nan")


@functools.lru_cache(maxsize=1024)
def parse_label_selector(text: str) -> Matcher:
    """Compile ``a=b,c!=d,e in (x,y),f notin (z),g,!h`` into a predicate over a whole object."""
    requirements = [_label_requirement(part) for part in _split_requirements(text)]

    def match(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return match


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


@functools.lru_cache(maxsize=1024)
def parse_field_selector(text: str) -> Matcher:
    """Compile ``metadata.name=x,status.phase!=Running`` (any dotted path) into a predicate."""
    checks: list[tuple[str, bool, str]] = []
    for part in _split_requirements(text):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        checks.append((m.group(1), m.group(2) != "!=", m.group(3)))

    def match(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, path) == value) == equal for path, equal, value in checks)

    return match


def compile_selectors(label_selector: str | None, field_selector: str | None) -> Matcher | None:
    """Combine both selectors; None means "everything matches" so callers can skip the call."""
    matchers = []
    if label_selector:
        matchers.append(parse_label_selector(label_selector))
    if field_selector:
        matchers.append(parse_field_selector(field_selector))
    if not matchers:
        return None
    if len(matchers) == 1:
        return matchers[0]
    first, second = matchers
    return lambda obj: first(obj) and second(obj)
