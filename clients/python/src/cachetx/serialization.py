"""Encoding of cached values and event payloads.

Values are JSON by default. Dataclasses and pydantic models (when pydantic is installed)
are encoded as JSON objects, and rebuilt into their class when the caller says which one
(``cached`` reads the function's return annotation; the event bus uses the subscribed
class). ``datetime``/``date``/``time`` and ``UUID`` become strings, ``Decimal`` a string
with all its digits, ``Enum`` its value, sets and tuples arrays.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import types
import typing
import uuid
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


def dumps_json(value: Any, *, sort_keys: bool = False) -> str:
    """JSON text of ``value`` (compact, UTF-8, no NaN); raises :class:`SerializationError`."""
    try:
        return json.dumps(
            value,
            default=to_jsonable,
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
            sort_keys=sort_keys,
        )
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"cannot encode value as JSON: {exc}") from exc


def from_jsonable(data: Any, cls: Any) -> Any:
    """Rebuild ``cls`` (a dataclass or pydantic model class) from its JSON form; any other
    ``cls`` returns ``data`` unchanged. Dataclasses are rebuilt one level deep (nested
    dataclass fields stay dicts); pydantic models validate nested fields themselves.
    ``cls | None`` (``Optional[cls]``) rebuilds ``cls`` and keeps None."""
    if typing.get_origin(cls) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(cls) if m is not type(None)]
        if data is None or len(members) != 1:
            return data
        cls = members[0]
    if isinstance(cls, type) and is_pydantic_model(cls):
        return cls.model_validate(data)  # type: ignore[attr-defined]
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise SerializationError(
                f"{cls.__qualname__} needs a JSON object, got {type(data).__name__}"
            )
        init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            return cls(**{k: v for k, v in data.items() if k in init_fields})
        except TypeError as exc:
            raise SerializationError(f"cannot build {cls.__qualname__}: {exc}") from exc
    return data


class JsonSerializer:
    """The default serializer: compact UTF-8 JSON, see the module docstring for types."""

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as JSON bytes."""
        return dumps_json(value).encode("utf-8")

    def loads(self, data: bytes | str) -> Any:
        """Decode JSON bytes (or text, for clients with ``decode_responses=True``)."""
        try:
            return json.loads(data)
        except ValueError as exc:
            raise SerializationError(f"stored value is not JSON: {exc}") from exc
