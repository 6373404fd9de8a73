"""The package builds a wheel that carries the typed package and its dependencies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_the_package_builds_a_typed_wheel(tmp_path: Path) -> None:
    # --no-build-isolation: the pinned setuptools of the test environment builds it,
    # so the test needs no network.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(PROJECT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    [wheel] = tmp_path.glob("cachetx-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    for module in ["__init__", "__main__", "cache", "keys", "serialization", "events",
                   "uow", "bus", "worker", "errors"]:  # fmt: skip
        assert f"cachetx/{module}.py" in names
    assert "cachetx/py.typed" in names
    assert not any(name.startswith("tests/") for name in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any(r.startswith("Requires-Dist: redis") for r in requires)
    assert any(r.startswith("Requires-Dist: SQLAlchemy[asyncio]") for r in requires)
    assert any(r.startswith("Requires-Dist: psycopg[binary]") for r in requires)
    assert any("pydantic" in r and "extra ==" in r for r in requires)  # optional only
