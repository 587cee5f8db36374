"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) over plain JSON values.

Stored objects are never mutated in place (watch events and history share them), so the merge
patch builds new containers along the patched paths only, and the JSON patch works on a copy.
"""

from __future__ import annotations

from typing import Any


class PatchError(ValueError):
    """A malformed patch or a failed ``test`` op; the API answers 422, which kopf relies on."""


def deep_copy(value: Any) -> Any:
    """Copy JSON-like data; several times faster than ``copy.deepcopy`` for this narrow case."""
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """Return ``target`` with ``patch`` merged in; ``None`` values delete keys."""
    if not isinstance(patch, dict):
        return deep_copy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:
            result[key] = deep_copy(value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer: {pointer!r}")
    return [_unescape(token) for token in pointer[1:].split("/")]


def _resolve(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path not found: /{'/'.join(tokens)}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        else:
            raise PatchError(f"path not found: /{'/'.join(tokens)}")
    return node


def _index(node: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(node)
    if not token.isdigit():
        raise PatchError(f"invalid list index: {token!r}")
    index = int(token)
    if index > len(node) or (index == len(node) and not allow_end):
        raise PatchError(f"list index out of range: {index}")
    return index


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError(f"cannot add to a scalar at /{'/'.join(tokens)}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path not found: /{'/'.join(tokens)}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, allow_end=False))
    raise PatchError(f"path not found: /{'/'.join(tokens)}")


def json_patch(target: Any, ops: Any) -> Any:
    """Apply RFC 6902 operations to a copy of ``target``, all or nothing."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = deep_copy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid operation: {op!r}")
        kind = op["op"]
        tokens = _split_pointer(op["path"])
        if kind == "add":
            doc = _add(doc, tokens, deep_copy(op.get("value")))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            _resolve(doc, tokens)  # must exist
            if tokens:
                _remove(doc, tokens)
            doc = _add(doc, tokens, deep_copy(op.get("value")))
        elif kind in ("move", "copy"):
            source = _split_pointer(op.get("from", ""))
            value = deep_copy(_resolve(doc, source))
            if kind == "move":
                _remove(doc, source)
            doc = _add(doc, tokens, value)
        elif kind == "test":
            try:
                actual = _resolve(doc, tokens)
            except PatchError:
                actual = None
            if actual != op.get("value"):
                raise PatchError(f"test failed at {op['path']}: {actual!r} != {op.get('value')!r}")
        else:
            raise PatchError(f"unsupported operation: {kind!r}")
    return doc
