"""Placeholder until the drivers part of the agent lands (see the issue)."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from storage_driver_api.kube import KubeClient

from storage_driver_agent.config import AgentConfig


@dataclass(frozen=True)
class Options:
    @staticmethod
    def add_arguments(parser: argparse._ArgumentGroup) -> None:
        pass

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        return cls()


async def run(config: AgentConfig, options: Options, kube: KubeClient, stop: asyncio.Event) -> None:
    # Not built yet: wait for shutdown so that the other part of the agent can run alone.
    await stop.wait()
