"""`storage-operator`: reconciles StorageDrivers against NodeDevices into per-node
NodeDriverConfigs. With no arguments it runs against the current kubeconfig.

kopf serves the StorageDrivers: the finalizer, the deletion handler (which waits until every
live node unloaded the driver), retries with backoff, the liveness endpoint, authentication.
The per-node and per-device objects are followed by the lean cache in `controller`, which
kopf's indexes and per-object handlers could not do at 16,000 NodeDevices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import kopf
from storage_driver_api.constants import ANNOTATION_PREFIX, FINALIZER, GROUP, STORAGE_DRIVERS, VERSION
from storage_driver_api.kube import Credentials, KubeClient, KubeConfigError, load_credentials
from storage_driver_api.logs import fields, setup_logging

from storage_driver_operator import metrics
from storage_driver_operator.controller import Controller
from storage_driver_operator.options import Options
from storage_driver_operator.sweep import Sweeper

log = logging.getLogger("storage_driver_operator")


def operator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("storage-driver-operator")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def connection_info(credentials: Credentials, event_namespace: str) -> kopf.ConnectionInfo:
    token = credentials.bearer_token()
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_data=credentials.ca_data,
        insecure=credentials.insecure,
        scheme="Bearer" if token else None,
        token=token,
        certificate_data=credentials.client_cert_data,
        private_key_data=credentials.client_key_data,
        default_namespace=event_namespace,
    )


def build_registry(
    controller: Controller,
    credentials: Credentials,
    options: Options,
    stop_controller: Callable[[], object],
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        """Every kopf setting in one place."""
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.peering.standalone = True  # one replica (Deployment strategy Recreate)
        # Scanning stays on: kopf notices the StorageDriver CRD when it is installed after the operator.
        settings.watching.server_timeout = int(options.watch_timeout)  # an integer in the URL
        settings.watching.client_timeout = int(options.watch_timeout) + 30
        settings.watching.connect_timeout = 10
        settings.watching.inactivity_timeout = options.inactivity_timeout
        settings.networking.request_timeout = 30
        settings.networking.connect_timeout = 10
        settings.networking.error_backoffs = [1, 2, 4, 8, 16, 30]
        settings.execution.default_backoff = 10
        settings.posting.level = logging.WARNING  # kopf's own Events only for problems
        settings.posting.reporting_component = "storage-operator"

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(credentials, options.event_namespace)

    @kopf.on.cleanup(registry=registry)
    def stop_watching(**_: Any) -> None:
        """On SIGTERM, end the controller's watches with kopf's own: kopf waits 5 s for every task
        it did not start (the cache's watches never end by themselves) before it cancels them."""
        stop_controller()

    @kopf.on.probe(id="controller", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        return controller.health()

    @kopf.on.delete(GROUP, VERSION, STORAGE_DRIVERS.plural, registry=registry, backoff=1)
    async def unload_everywhere(name: str, **_: Any) -> None:
        """Hold the finalizer until every live node has unloaded the driver."""
        remaining = await controller.wait_unloaded(name, options.deletion_wait)
        if remaining:
            shown = ", ".join(remaining[:5]) + (" ..." if len(remaining) > 5 else "")
            raise kopf.TemporaryError(f"waiting for {len(remaining)} node(s) to unload: {shown}", delay=1)
        log.info("unloaded from every node; releasing the finalizer", extra=fields(storage_driver=name))

    return registry


async def run(options: Options) -> int:
    try:
        credentials = load_credentials(options.kubeconfig, options.context)
    except KubeConfigError as exc:
        log.error("cannot reach the cluster", extra=fields(error=str(exc)))
        return 2
    if options.metrics:
        try:
            metrics.listen_address(options.metrics)
        except ValueError as exc:
            log.error("invalid option", extra=fields(error=str(exc)))
            return 2
    log.info(
        "operator starting",
        extra=fields(
            server=credentials.server,
            credentials=credentials.source,
            version=operator_version(),
            lease_namespace=options.lease_namespace,
        ),
    )
    async with contextlib.AsyncExitStack() as stack:
        kube = await stack.enter_async_context(
            KubeClient(credentials, user_agent=f"storage-operator/{operator_version()}")
        )
        controller = Controller(kube, options)
        if options.metrics:
            try:
                await stack.enter_async_context(metrics.serve(options.metrics, controller.metrics))
            except OSError as exc:
                log.error(
                    "cannot serve metrics; choose another --metrics address or '' to turn them off",
                    extra=fields(metrics=options.metrics, error=str(exc)),
                )
                return 2
        async with asyncio.TaskGroup() as group:
            loop = group.create_task(controller.run(), name="controller")
            sweeper = Sweeper(kube, options.lease_namespace, options.gc_interval)
            sweep = group.create_task(sweeper.run(), name="sweep") if options.gc_interval > 0 else None
            registry = build_registry(controller, credentials, options, stop_controller=loop.cancel)
            # kopf installs the SIGTERM/SIGINT handlers and returns when one arrives.
            await kopf.operator(
                registry=registry,
                clusterwide=True,
                standalone=True,
                liveness_endpoint=options.liveness or None,
            )
            loop.cancel()
            if sweep is not None:
                sweep.cancel()
    log.info("operator stopped", extra=fields(**controller.counters))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storage-operator", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {operator_version()}")
    Options.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = Options.from_args(build_parser().parse_args(argv))
    setup_logging("storage-operator", options.log_level, options.log_format)
    return asyncio.run(run(options))


if __name__ == "__main__":
    sys.exit(main())
