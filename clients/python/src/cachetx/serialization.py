"""Encoding of cached values and event payloads.

Values are JSON by default. Dataclasses and pydantic models (when pydantic is installed)
are encoded as JSON objects. ``datetime``/``date``/``time`` and ``UUID`` become strings,
``Decimal`` a string with all its digits, ``Enum`` its value, sets and tuples arrays.
When the caller says which type it expects (``cached`` reads the function's return
annotation; the event bus uses the subscribed class and its field annotations), the
JSON is rebuilt into that type, see :func:`from_jsonable`: a handler of an event with a
``datetime`` field gets a ``datetime``, not its ISO string.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as _dt
import decimal
import enum
import json
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .errors import SerializationError

try:  # pydantic is optional: used when installed, never required.
    import pydantic as _pydantic
except ImportError:  # pragma: no cover - exercised only without pydantic
    _pydantic = None  # type: ignore[assignment]


@runtime_checkable
class Serializer(Protocol):
    """What ``CacheService`` needs from a serializer: bytes out, a value back."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`SerializationError` when it cannot."""
        ...

    def loads(self, data: bytes | str) -> Any:
        """Decode what :meth:`dumps` produced."""
        ...


def is_pydantic_model(obj: Any) -> bool:
    """True when ``obj`` is a pydantic model instance or class (False without pydantic)."""
    if _pydantic is None:
        return False
    if isinstance(obj, type):
        return issubclass(obj, _pydantic.BaseModel)
    return isinstance(obj, _pydantic.BaseModel)


def to_jsonable(value: Any) -> Any:
    """The ``default`` hook of :func:`json.dumps`: the JSON form of the types above."""
    if is_pydantic_model(value):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        # A string keeps every digit; a JSON number would go through float.
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__qualname__} is not JSON serializable")


def dumps_json(
    value: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] = to_jsonable
) -> str:
    """JSON text of ``value`` (compact, UTF-8, no NaN); raises :class:`SerializationError`."""
    try:
        return json.dumps(
            value,
            default=default,
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
            sort_keys=sort_keys,
        )
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"cannot encode value as JSON: {exc}") from exc


def encode_utf8(text: str) -> bytes:
    """``text`` as UTF-8; :class:`SerializationError` for lone surrogates (e.g. from
    ``os.fsdecode`` of a bad file name), which UTF-8 cannot hold."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SerializationError(f"cannot encode value as UTF-8 JSON: {exc}") from exc


def from_jsonable(data: Any, cls: Any) -> Any:
    """Rebuild a value of type ``cls`` from its JSON form (what :func:`dumps_json` wrote).

    Guided by ``cls`` (a return annotation, an event class) and its parts, recursively:
    dataclasses (each field by its annotation, nested ones included) and pydantic models
    (``model_validate``); ``datetime``/``date``/``time``, ``UUID``, ``Decimal`` and
    ``Enum`` from their strings or values; ``list[X]``, ``tuple[X, ...]``, ``set[X]``,
    ``frozenset[X]``, ``dict[K, V]`` and their abstract forms; ``X | None``. Anything
    else (``Any``, unions of several types, unknown classes, no annotation) is returned
    as plain JSON. Raises :class:`SerializationError` when ``data`` does not fit."""
    try:
        return _convert(data, cls)
    except SerializationError:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:
        # pydantic's ValidationError is a ValueError; Decimal raises InvalidOperation.
        raise SerializationError(f"cannot rebuild {_type_name(cls)}: {exc}") from exc


def _type_name(tp: Any) -> str:
    return str(getattr(tp, "__qualname__", tp))


_SEQUENCES = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_SETS = (set, frozenset, collections.abc.Set, collections.abc.MutableSet)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _convert(data: Any, tp: Any) -> Any:
    if tp is None or tp is Any or tp is object or isinstance(tp, str | typing.TypeVar):
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _convert(data, args[0])
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        members = [m for m in args if m is not type(None)]
        return _convert(data, members[0]) if len(members) == 1 else data
    if data is None:
        return None
    if origin is not None:
        return _convert_generic(data, origin, args)
    if not isinstance(tp, type):
        return data
    if is_pydantic_model(tp):
        return tp.model_validate(data)  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(data, tp)
    if issubclass(tp, enum.Enum):
        return tp(data)
    if issubclass(tp, _dt.datetime):
        return tp.fromisoformat(data) if isinstance(data, str) else data
    if issubclass(tp, _dt.date | _dt.time):
        return tp.fromisoformat(data) if isinstance(data, str) else data
    if issubclass(tp, uuid.UUID):
        return tp(data) if isinstance(data, str) else data
    if issubclass(tp, decimal.Decimal):
        return tp(str(data)) if isinstance(data, str | int | float) else data
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if tp in (tuple, set, frozenset) and isinstance(data, list):
        return tp(data)
    return data


def _convert_generic(data: Any, origin: Any, args: tuple[Any, ...]) -> Any:
    if origin is typing.Literal or origin is type:
        return data
    if origin is tuple and isinstance(data, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0]) for item in data)
        if args and len(args) == len(data):
            return tuple(_convert(item, arg) for item, arg in zip(data, args, strict=True))
        return tuple(data)
    item_type = args[0] if args else Any
    if origin in _SEQUENCES and isinstance(data, list):
        return [_convert(item, item_type) for item in data]
    if origin in _SETS and isinstance(data, list):
        build = frozenset if origin is frozenset else set
        return build(_convert(item, item_type) for item in data)
    if origin in _MAPPINGS and isinstance(data, dict):
        key_type, value_type = args if len(args) == 2 else (Any, Any)
        return {_convert_key(k, key_type): _convert(v, value_type) for k, v in data.items()}
    return data


def _convert_key(key: str, tp: Any) -> Any:
    """JSON object keys are strings: ``dict[int, X]`` and ``dict[UUID, X]`` keys come back."""
    if tp is int:
        return int(key)
    if tp is float:
        return float(key)
    return _convert(key, tp)


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable (e.g. local classes under postponed annotations)
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _convert_dataclass(data: Any, cls: type) -> Any:
    if not isinstance(data, dict):
        raise SerializationError(
            f"{cls.__qualname__} needs a JSON object, got {type(data).__name__}"
        )
    hints = _field_types(cls)
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: _convert(v, hints.get(k)) for k, v in data.items() if k in init_fields}
    try:
        return cls(**values)
    except TypeError as exc:
        raise SerializationError(f"cannot build {cls.__qualname__}: {exc}") from exc


class JsonSerializer:
    """The default serializer: compact UTF-8 JSON, see the module docstring for types."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as JSON bytes."""
        return encode_utf8(dumps_json(value))

    def loads(self, data: bytes | str) -> Any:
        """Decode JSON bytes (or text, for clients with ``decode_responses=True``)."""
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise SerializationError(f"stored value is not JSON: {exc}") from exc
