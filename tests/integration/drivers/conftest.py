"""What the driver-runtime integration tests share: a short temporary root per test (unix socket
paths have a length limit), whose driver hosts are killed at the end."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.drivers import kill_hosts, short_tmpdir


@pytest.fixture
def root() -> Iterator[Path]:
    path = short_tmpdir()
    yield path
    kill_hosts(path / "state")
    shutil.rmtree(path, ignore_errors=True)
