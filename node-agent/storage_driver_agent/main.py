"""`storage-agent`: the per-node agent. Publishes the node's devices as NodeDevices and runs
the drivers its NodeDriverConfig asks for, each in its own driver host process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from storage_driver_api.kube import KubeClient, KubeConfigError, load_credentials
from storage_driver_api.logs import fields, setup_logging

from storage_driver_agent import health, metrics, metricsserver
from storage_driver_agent.config import AgentConfig
from storage_driver_agent.devices import service as devices
from storage_driver_agent.drivers import service as drivers

log = logging.getLogger("storage_driver_agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storage-agent",
        description=__doc__,
        epilog="'storage-agent supervise --help' describes the driver host supervisor.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {agent_version()}")
    AgentConfig.add_arguments(parser)
    devices.Options.add_arguments(parser.add_argument_group("device discovery"))
    drivers.Options.add_arguments(parser.add_argument_group("driver runtime"))
    return parser


def agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("storage-driver-operator")
    except PackageNotFoundError:
        return "0.0.0+unknown"


async def run(config: AgentConfig, device_options: devices.Options, driver_options: drivers.Options) -> int:
    try:
        credentials = load_credentials(config.kubeconfig, config.context)
    except KubeConfigError as exc:
        log.error("cannot reach the cluster", extra=fields(error=str(exc)))
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "agent starting",
        extra=fields(
            node=config.node_name,
            server=credentials.server,
            credentials=credentials.source,
            version=agent_version(),
        ),
    )
    kube = KubeClient(credentials, user_agent=f"storage-agent/{config.node_name}")
    ready = {"devices": asyncio.Event(), "drivers": asyncio.Event()}
    metrics.STATE.api_responses = lambda: kube.responses
    metrics.STATE.ready = lambda: all(event.is_set() for event in ready.values())
    async with kube, asyncio.TaskGroup() as group:
        group.create_task(devices.run(config, device_options, kube, stop, ready["devices"]))
        group.create_task(drivers.run(config, driver_options, kube, stop, ready["drivers"]))
        if config.health_address:
            group.create_task(health.serve(config.health_address, ready, stop))
        if config.metrics_address:
            group.create_task(metricsserver.serve(config.metrics_address, metrics.REGISTRY, stop))
    # Driver hosts keep running: an agent restart must not unload anything (drivers.service).
    log.info("agent stopped", extra=fields(node=config.node_name))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = AgentConfig.from_args(args)
    setup_logging("storage-agent", config.log_level, config.log_format)
    return asyncio.run(run(config, devices.Options.from_args(args), drivers.Options.from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
