"""The three PATCH flavours kube-apiserver accepts, applied to plain JSON objects.

- `application/json-patch+json` (RFC 6902): add, remove, replace, move, copy, test. A failed
  `test` or a path that does not exist is a `PatchError` (the server answers 422 Invalid).
- `application/merge-patch+json` (RFC 7386): maps merge, `null` deletes, lists replace.
- `application/strategic-merge-patch+json`: merge patch, except that lists Kubernetes declares
  with a `patchMergeKey` (containers by name, conditions by type, ...) merge element by element,
  and the `$patch: delete|replace` directive is honoured. `kubernetes.aio` sends this type for
  every dict body. `$setElementOrder`/`$retainKeys`/`$deleteFromPrimitiveList` are accepted and
  ignored (order and retained keys are not modelled).
"""

from __future__ import annotations

import copy
from typing import Any

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field name -> merge key, for the list fields of the types gpuscale touches.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "taints": "key",
    "addresses": "type",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}


class PatchError(ValueError):
    """A patch that cannot be applied (bad document, failed test, missing path)."""


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [_unescape(t) for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if i > limit:
        raise PatchError(f"array index {i} out of range")
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, dict):
            if token not in current:
                raise PatchError(f"path segment {token!r} does not exist")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, allow_end=False)]
        else:
            raise PatchError(f"cannot descend into a scalar at {token!r}")
    return current


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {'/'.join(tokens)!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, allow_end=False)]
    raise PatchError("cannot index a scalar")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {'/'.join(tokens)!r} does not exist")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, allow_end=False)]
    else:
        raise PatchError("cannot remove from a scalar")
    return doc


def apply_json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 on a deep copy of `doc`."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    result = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed JSON patch operation: {op!r}")
        kind, tokens = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {kind!r} needs a value")
        if kind == "add":
            result = _add(result, tokens, copy.deepcopy(op["value"]))
        elif kind == "remove":
            result = _remove(result, tokens)
        elif kind == "replace":
            _get(result, tokens)
            result = _remove(result, tokens) if tokens else result
            result = _add(result, tokens, copy.deepcopy(op["value"]))
        elif kind == "test":
            if _get(result, tokens) != op["value"]:
                raise PatchError(f"testing value {op['path']} failed")
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = copy.deepcopy(_get(result, source))
            if kind == "move":
                result = _remove(result, source)
            result = _add(result, tokens, value)
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return result


def apply_merge_patch(doc: Any, patch: Any) -> Any:
    """RFC 7386: returns a new document."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def apply_strategic_merge_patch(doc: Any, patch: Any) -> Any:
    """Strategic merge patch as far as the listed merge keys describe the schema."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _smp_map(doc if isinstance(doc, dict) else {}, patch)


def _smp_map(doc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    result = copy.deepcopy(doc)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                current = result.get(key)
                result[key] = _smp_map(current if isinstance(current, dict) else {}, value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _smp_list(result[key], value, MERGE_KEYS[key])
        else:
            result[key] = copy.deepcopy(value)
    return result


def _smp_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"list element {item!r} lacks merge key {merge_key!r}")
        pos = next(
            (
                i
                for i, e in enumerate(result)
                if isinstance(e, dict) and e.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if pos is not None:
                del result[pos]
        elif pos is None:
            result.append(copy.deepcopy(item))
        else:
            result[pos] = _smp_map(result[pos], item)
    return result


def apply_patch(doc: Any, patch: Any, content_type: str) -> Any:
    """Dispatch on the request's Content-Type (parameters such as charset ignored)."""
    media = content_type.split(";")[0].strip().lower()
    if media == JSON_PATCH:
        return apply_json_patch(doc, patch)
    if media in (MERGE_PATCH, APPLY_PATCH):
        return apply_merge_patch(doc, patch)
    if media == STRATEGIC_MERGE_PATCH:
        return apply_strategic_merge_patch(doc, patch)
    raise PatchError(f"unsupported patch content type {content_type!r}")


SUPPORTED_PATCH_TYPES = frozenset({JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH})
