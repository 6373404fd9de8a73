"""cachetx for asyncio services: the seed's ``CacheService``, unit of work and event bus
on the nscache Redis module and the txevents Postgres extension (SPEC 8)."""

from .bus import EventBus, current_delivery
from .cache import CacheService, CacheStats, LatencySummary
from .errors import (
    CacheKeyError,
    CachetxError,
    DomainError,
    EventError,
    InvalidExpireError,
    InvalidPrefixError,
    MetricsUnavailableError,
    SerializationError,
    WorkerConfigError,
)
from .events import Delivery, event_type_of
from .serialization import JsonSerializer, Serializer
from .uow import SqlAlchemyUnitOfWork, TransactionManager, TransactionMetrics, transaction_context

__version__ = "0.1.0"

__all__ = [
    "CacheKeyError",
    "CacheService",
    "CacheStats",
    "CachetxError",
    "Delivery",
    "DomainError",
    "EventBus",
    "EventError",
    "InvalidExpireError",
    "InvalidPrefixError",
    "JsonSerializer",
    "LatencySummary",
    "MetricsUnavailableError",
    "SerializationError",
    "Serializer",
    "SqlAlchemyUnitOfWork",
    "TransactionManager",
    "TransactionMetrics",
    "WorkerConfigError",
    "current_delivery",
    "event_type_of",
    "transaction_context",
]
