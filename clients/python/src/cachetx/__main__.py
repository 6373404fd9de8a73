"""``python -m cachetx worker module:attribute``: run an EventBus until SIGTERM/SIGINT.

The module is imported with the current directory on ``sys.path`` (as uvicorn and arq
do); the attribute must be an :class:`~cachetx.EventBus`. SIGTERM and SIGINT finish the
batch in hand and exit with status 0; a second one gives the unfinished events back at
once and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys

from .bus import EventBus
from .errors import WorkerConfigError


def load_bus(path: str) -> EventBus:
    """Import ``module:attribute`` (the attribute may be dotted) and check it is an EventBus."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise WorkerConfigError(f"expected module:attribute, got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # an import inside the module failed: show it all
            raise
        raise WorkerConfigError(f"no module named {module_name!r} (from {os.getcwd()})") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise WorkerConfigError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, EventBus):
        raise WorkerConfigError(f"{path} is a {type(obj).__qualname__}, not a cachetx.EventBus")
    if not obj.event_types:
        raise WorkerConfigError(f"{path} has no subscriber: nothing to consume")
    return obj


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m cachetx")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="consume an EventBus's consumer group")
    worker.add_argument("bus", help="module:attribute of the EventBus, e.g. app:event_bus")
    worker.add_argument(
        "--log-level",
        default="INFO",
        type=_log_level,
        help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        bus = load_bus(args.bus)
    except WorkerConfigError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(bus.run(handle_signals=True))
    except asyncio.CancelledError:  # a second SIGTERM/SIGINT: the batch was given back
        logging.getLogger("cachetx.worker").warning("worker cancelled")
        return 1
    return 0


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(f"unknown logging level {value!r}")
    return level


if __name__ == "__main__":
    sys.exit(main())
