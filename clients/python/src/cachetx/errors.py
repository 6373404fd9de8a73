"""The exceptions cachetx raises. Every one derives from :class:`CachetxError`."""

from __future__ import annotations


class CachetxError(Exception):
    """Base class of every error raised by cachetx itself."""


class InvalidPrefixError(CachetxError, ValueError):
    """A namespace prefix that nscache would refuse (1-64 chars of ``[A-Za-z0-9_.-]``)."""


class InvalidExpireError(CachetxError, ValueError):
    """An expiry that is not a positive duration (nscache entries always expire)."""


class SerializationError(CachetxError, ValueError):
    """A value that the serializer cannot encode, or stored bytes it cannot decode."""


class CacheKeyError(CachetxError, ValueError):
    """``cached`` could not derive a key from the call's arguments (pass ``key=``)."""


class EventError(CachetxError, ValueError):
    """An object that cannot be used as an event (not a dataclass or pydantic model),
    or a payload that cannot be decoded into its event class."""


class MetricsUnavailableError(CachetxError):
    """``txevents.metrics`` exists but cannot be read, typically because the server
    does not load txevents through ``shared_preload_libraries``. The server's message,
    which names the setting to change, is the exception's text; its SQLSTATE is
    :attr:`sqlstate`."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DomainError(CachetxError):
    """A convenience base class for business-rule failures raised inside
    ``transaction_context``/``transactional``; like any exception, it rolls the
    transaction back and is re-raised."""


class WorkerConfigError(CachetxError, ValueError):
    """An :class:`~cachetx.EventBus` that cannot run as configured (no subscriber,
    a bad group name, or a ``module:attribute`` path that names no EventBus)."""
