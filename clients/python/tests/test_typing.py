"""The package's public types, as ``mypy --strict`` sees them from user code."""

from __future__ import annotations

from pathlib import Path

from mypy import api

HERE = Path(__file__).parent


def test_decorated_functions_are_coroutine_functions_for_mypy() -> None:
    # cached() and transactional were typed as returning Callable[P, Awaitable[R]]:
    # asyncio.create_task(cached_function(...)) then failed mypy --strict.
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--cache-dir",
            str(HERE.parent / ".mypy_cache"),
            str(HERE / "typing" / "coroutines.py"),
        ]
    )
    assert status == 0, stdout + stderr
