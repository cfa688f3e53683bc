"""A pytest plugin: a run stopped from outside (SIGTERM: a CI timeout, `kill`) unwinds as Ctrl-C
does, so that the fixtures' clean-up runs (the control plane resumed or stopped, loop devices
detached, agents and hosts stopped) instead of the process vanishing with them left behind.
Benchmarks use `unwind_on_sigterm` for the same reason."""

from __future__ import annotations

import signal

import pytest


def unwind_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    unwind_on_sigterm()
