"""How ``CacheService.cached`` names the entry of a call.

The default key is ``<module>.<qualname>:<arguments>``, where ``<arguments>`` is the
compact JSON array of the call's bound arguments in signature order, defaults applied
(so ``f(1)``, ``f(x=1)`` and ``f()`` with ``x=1`` as default share one entry): ``*args``
become an array, ``**kwargs`` an object with sorted keys, and a first parameter named
``self`` or ``cls`` is left out (methods share entries across instances; pass ``key=``
when the instance matters). Arguments are encoded as cached values are (dataclasses,
pydantic models, UUIDs, dates, enums...; sets as arrays in a fixed order). When that JSON
is longer than 200 characters or contains ``{`` or ``}`` (which nscache reads as a Redis
Cluster hash tag), it is replaced by ``sha256:<hex digest of the JSON>``.

Example: ``app.get_candidate_profile:["42"]``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

from .errors import CacheKeyError, SerializationError
from .serialization import dumps_json, to_jsonable

MAX_READABLE_ARGS = 200


def _key_jsonable(value: Any) -> Any:
    """The ``default`` hook of key JSON: as for values, except that sets and frozensets
    (wherever they are, dataclass fields included) become arrays sorted by the JSON of
    their items. A set's iteration order depends on the process's hash seed
    (``PYTHONHASHSEED``): equal arguments got different keys in different workers."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=_sort_key)
    return to_jsonable(value)


def _sort_key(item: Any) -> str:
    return dumps_json(item, sort_keys=True, default=_key_jsonable)


def function_name(func: Callable[..., Any]) -> str:
    """``<module>.<qualname>`` of ``func``, the first part of its default keys."""
    return f"{func.__module__}.{func.__qualname__}"


def default_key(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The default cache key of the call ``func(*args, **kwargs)`` (see the module doc)."""
    signature = inspect.signature(func)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    values: list[Any] = []
    for index, (name, param) in enumerate(signature.parameters.items()):
        if index == 0 and name in ("self", "cls"):
            continue
        value = bound.arguments.get(name)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            value = list(value or ())
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            value = dict(value or {})
        values.append(value)
    try:
        encoded = dumps_json(values, sort_keys=True, default=_key_jsonable)
    except SerializationError as exc:
        raise CacheKeyError(
            f"cannot derive a cache key for {function_name(func)}: {exc}; pass key=callable"
        ) from exc
    if len(encoded) > MAX_READABLE_ARGS or "{" in encoded or "}" in encoded:
        encoded = "sha256:" + hashlib.sha256(encoded.encode("utf-8")).hexdigest()
    return f"{function_name(func)}:{encoded}"
