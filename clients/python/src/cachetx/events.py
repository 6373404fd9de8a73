"""Domain events: how an event object becomes a txevents row and back.

An event is a dataclass instance or a pydantic model (when pydantic is installed).

- ``event_type``: the class attribute ``event_type`` when the class defines one (a
  ``ClassVar[str]``), else the class's ``__name__`` (``CandidateCreated``).
- ``payload``: the event's fields as a JSON object (dataclass fields, or pydantic's
  ``model_dump(mode="json")``).
- ``aggregate_type`` / ``aggregate_id``: the attributes of those names, on the instance
  or the class, when present and not None (``aggregate_id`` is converted with ``str``);
  else NULL. They may be dataclass fields, properties or class attributes.
- ``headers``: a JSON object given to ``add_event(event, headers=...)``, default ``{}``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import EventError, SerializationError
from .serialization import dumps_json, encode_utf8, from_jsonable, is_pydantic_model

# The JSON escape of NUL (not preceded by an escaped backslash).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _check_event_class(cls: Any) -> type:
    if not isinstance(cls, type) or not (dataclasses.is_dataclass(cls) or is_pydantic_model(cls)):
        raise EventError(f"{cls!r} is not an event class: use a dataclass or a pydantic model")
    return cls


def event_type_of(cls_or_event: Any) -> str:
    """The event type name of an event class or instance (see the module doc)."""
    cls = cls_or_event if isinstance(cls_or_event, type) else type(cls_or_event)
    _check_event_class(cls)
    name = getattr(cls, "event_type", None)
    if name is None:
        return cls.__name__
    if not isinstance(name, str) or not name:
        raise EventError(f"{cls.__qualname__}.event_type must be a non-empty string")
    return name


@dataclass(frozen=True)
class EncodedEvent:
    """The arguments of ``txevents.emit`` for one event."""

    event_type: str
    payload: str
    aggregate_type: str | None
    aggregate_id: str | None
    headers: str = "{}"


def encode_event(event: Any, headers: dict[str, Any] | None = None) -> EncodedEvent:
    """``txevents.emit`` arguments for ``event``; :class:`EventError` if it is not one."""
    if isinstance(event, type):
        raise EventError(f"add_event needs an event instance, got the class {event.__qualname__}")
    event_type = event_type_of(event)
    try:
        payload = dumps_json(event)
        header_text = dumps_json(headers or {})
        for text in (payload, header_text):
            encode_utf8(text)
            if _JSON_NUL.search(text):
                # jsonb refuses it, at emit time: the whole transaction would fail at commit.
                raise SerializationError("a string holds a NUL character, which jsonb refuses")
    except SerializationError as exc:
        raise EventError(f"cannot encode {event_type}: {exc}") from exc
    if headers is not None and not isinstance(headers, dict):
        raise EventError("headers must be a dict")
    aggregate_type = getattr(event, "aggregate_type", None)
    aggregate_id = getattr(event, "aggregate_id", None)
    return EncodedEvent(
        event_type=event_type,
        payload=payload,
        aggregate_type=None if aggregate_type is None else str(aggregate_type),
        aggregate_id=None if aggregate_id is None else str(aggregate_id),
        headers=header_text,
    )


def decode_event(cls: type, payload: Any) -> Any:
    """Rebuild an event of class ``cls`` from its payload (a dict, or JSON text)."""
    try:
        if isinstance(payload, str | bytes):
            payload = json.loads(payload)
        return from_jsonable(payload, _check_event_class(cls))
    except (SerializationError, ValueError, TypeError, RecursionError) as exc:
        # pydantic's ValidationError is a ValueError.
        raise EventError(f"cannot decode {cls.__qualname__} from its payload: {exc}") from exc


@dataclass(frozen=True)
class Delivery:
    """The txevents row a handler is running for (see :func:`cachetx.current_delivery`)."""

    id: int
    event_type: str
    aggregate_type: str | None
    aggregate_id: str | None
    payload: Any
    headers: dict[str, Any] = field(default_factory=dict)
    occurred_at: Any = None
    attempt: int = 1
    #: Why the row's JSON could not be decoded (``payload`` is then its text); the
    #: worker nacks such an event without running handlers.
    decode_error: str | None = None
